"""The parameter group "changed": the denoiser tensors a fine-tune changed most, where it put what it learned.

Given the model the fine-tune started from, each tensor's squared change ‖θ − θ₀‖² is measured. Tensors are taken in
order of change per weight (the densest first) until they hold `share` of the total squared change: a fine-tune that
moved a few layers a lot gets those layers, not the many it nudged. The group is a regex naming those tensors exactly,
so a work directory binds the tensors themselves (its Fisher group), whatever base model file they were read against.
"""
from __future__ import annotations

import re

import torch

from ..errors import SettingsError

CHANGED_SHARE = 0.8  # of the total squared change the group holds


def weight_changes(model, base) -> list[dict]:
    """Per denoiser tensor, densest change first: name, size, squared change (float64) and change per weight."""
    if getattr(model, "lora", None):
        raise SettingsError("--base-model with a LoRA: the adapter is what the fine-tune changed; use --group lora")
    ours, theirs = dict(model.unet.named_parameters()), dict(base.unet.named_parameters())
    missing = [name for name in ours if name not in theirs or theirs[name].shape != ours[name].shape]
    if missing:
        name = missing[0]
        other = tuple(theirs[name].shape) if name in theirs else "absent"
        raise SettingsError(f"--base-model: its denoiser is not the model's architecture ({len(missing)} tensors "
                            f"differ, e.g. {name}: {tuple(ours[name].shape)} here, {other} in the base model)")
    rows = []
    with torch.no_grad():
        for name, p in ours.items():
            change = float((p.double() - theirs[name].to(p.device).double()).square().sum())
            rows.append({"name": name, "size": p.numel(), "squared_change": change, "density": change / p.numel()})
    return sorted(rows, key=lambda row: (-row["density"], row["name"]))


def changed_tensors(model, base, share: float = CHANGED_SHARE) -> list[str]:
    """The names of the densest-changed tensors holding `share` of the total squared change (at least one)."""
    if not 0 < share <= 1:
        raise SettingsError(f"the changed group's share must be in (0, 1], got {share!r}")
    rows = weight_changes(model, base)
    total = sum(row["squared_change"] for row in rows)
    if total == 0:
        raise SettingsError("--base-model: the model's denoiser equals the base model's, so no weight changed (is it "
                            "the fine-tuned model you meant to give as --model?)")
    chosen, held = [], 0.0
    for row in rows:
        if held >= share * total:
            break
        chosen.append(row["name"])
        held += row["squared_change"]
    return chosen


def changed_group(model, base, share: float = CHANGED_SHARE) -> str:
    """A regex that matches exactly the changed_tensors (a DiffusionModel.parameter_group pattern)."""
    return "^(?:" + "|".join(re.escape(name) for name in changed_tensors(model, base, share)) + ")$"
