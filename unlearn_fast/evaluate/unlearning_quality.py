"""Unlearning quality (METHOD.md "How attribution is judged" §4): does a step unlearn the query, or damage the model?

For each query (a training caption the model generates from, seed s) and each step size α: unlearn the query, then
regenerate it and `unrelated` other prompts from the same seeds with the unlearned weights, and measure
    - the target: pixel MSE between its image before and after, and ΔL = L(ẑ; θ_u) − L(ẑ; θ0) of the query image;
    - the unrelated prompts: the same two numbers for each of their original images.
A good step changes the target a lot and the unrelated prompts little: the ratio of the two MSEs is reported beside
them. It feeds the choice of α (evaluate.validation picks α by ranking quality; this says what the step does).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import SettingsError
from ..engine.loss_grid import LossGrid
from ..engine.scoring import per_example_losses
from .method_setup import Workspaces
from .metrics import mean_and_se, pixel_mse
from .output_files import write_json
from .validation import validation_prompts

logger = logging.getLogger(__name__)

QUALITY_SEED = 4242  # its own seed: these prompts are neither validation nor evaluation queries


@dataclass
class UnlearningQualitySetup:
    model: str = "default"
    data: str = "default"
    queries: int = 5
    unrelated: int = 10
    alphas: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3)
    variants: tuple[str, ...] = ()  # AbU variants (methods.abu.VARIANTS) measured too, each at its α in method_options
    method_options: dict = field(default_factory=dict)
    draws: int = 500
    group: str = "kv"
    fisher_examples: int | None = 1024
    sample_steps: int = 50
    guidance: float = 3.0
    loss_timesteps: int = 20
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.queries < 1 or self.unrelated < 1 or not (self.alphas or self.variants):
            raise SettingsError("unlearning quality needs at least one query, one unrelated prompt and one alpha or "
                                "variant")


def _losses(model, images: np.ndarray, prompts: list[str], grid: LossGrid) -> np.ndarray:
    x0 = model.encode_images(images)
    cond = model.encode_text(prompts)
    return per_example_losses(model, x0, cond, torch.arange(len(prompts)), grid).double().mean(dim=(1, 2)).cpu().numpy()


def run_unlearning_quality(setup: UnlearningQualitySetup, out_dir: str) -> dict:
    from ..methods.abu.method import preconditioner, retained_rows
    from ..workspace import PrepareSettings
    from ..data import open_dataset
    from ..models.adapter import DiffusionModel
    from ..engine.unlearn import unlearn
    from ..engine.weight_swap import swapped_weights

    os.makedirs(out_dir, exist_ok=True)
    model = DiffusionModel.load(setup.model, device=setup.device)
    dataset = open_dataset(setup.data)
    workspaces = Workspaces(model, dataset, os.path.join(out_dir, "work"),
                              PrepareSettings(fisher_examples=setup.fisher_examples))
    steps = _steps(setup)
    chosen = validation_prompts(dataset, setup.queries + setup.unrelated * setup.queries, seed=QUALITY_SEED)
    prompts = [prompt for prompt, _ in chosen]
    grid = LossGrid(seed=setup.seed, timesteps=setup.loss_timesteps, flips=False, batch_size=256,
                    noise="example")  # the judge's noise, keyed per prompt as every recorded run measured it
    rows = []
    for q in range(setup.queries):
        target = prompts[q]
        others = prompts[setup.queries + q * setup.unrelated: setup.queries + (q + 1) * setup.unrelated]
        batch = [target, *others]
        seeds = [QUALITY_SEED + q] * len(batch)  # the same starting noise for every prompt of this query
        before = model.generate(batch, seed=seeds, steps=setup.sample_steps, guidance=setup.guidance)
        loss_before = _losses(model, before, batch, grid)
        x0 = model.encode_images(before[:1])
        cond = model.encode_text([target])
        for label, settings, overrides in steps:
            workspace = workspaces(overrides).prepare()  # the latents and text its Fisher reads
            unet = unlearn(model, preconditioner(workspace, settings), x0, cond, settings, num_train=len(dataset),
                           retained=retained_rows(workspace, settings) if settings.retain else None)
            changed = dict(unet.named_parameters())
            weights = {name: changed[name].detach() for name in model.parameter_group(settings.group)}
            with swapped_weights(model.unet, weights):
                after = model.generate(batch, seed=seeds, steps=setup.sample_steps, guidance=setup.guidance)
                loss_after = _losses(model, before, batch, grid)
            mse, delta = pixel_mse(after, before), loss_after - loss_before
            rows.append({"query": q, "prompt": target, "step": label, "rule": str(settings.step), "target_mse": float(mse[0]),
                         "target_delta_loss": float(delta[0]), "unrelated_mse": mse[1:].tolist(),
                         "unrelated_delta_loss": delta[1:].tolist()})
            logger.info(f"unlearning quality: query {q + 1}/{setup.queries} {label}: target MSE {mse[0]:.4f}, "
                        f"unrelated MSE {mse[1:].mean():.4f}")
    summary = {"setup": json.loads(json.dumps(asdict(setup))), "num_train": len(dataset),
               "table": summarize(rows, [label for label, _, _ in steps]), "rows": rows}
    write_json(os.path.join(out_dir, "unlearning_quality.json"), summary)
    return summary


def _steps(setup: UnlearningQualitySetup) -> list[tuple[str, object, dict]]:
    """(label, UnlearnSettings, preparation overrides) of every step measured: the paper's rule at each α, then each
    named variant (a Fisher over a larger group is its own preparation)."""
    from ..methods.abu.method import AbU
    from ..engine.step_rules import AlphaOverN
    from ..engine.unlearn import UnlearnSettings

    steps = [(f"α={alpha:g}", UnlearnSettings(step=AlphaOverN(alpha), draws=setup.draws, group=setup.group,
                                              seed=setup.seed),
              {} if setup.group == "kv" else {"fisher_group": setup.group}) for alpha in setup.alphas]
    for name in setup.variants:
        options = {"draws": setup.draws, "seed": setup.seed, **setup.method_options.get(name, {})}
        variant = AbU.variant(name, **options)
        overrides = {k: v for k, v in variant.prepare_overrides().items() if k != "noise"}  # no scoring here
        steps.append((f"{name} ({variant.unlearn.step})", variant.unlearn, overrides))
    return steps


def summarize(rows: list[dict], labels) -> list[dict]:
    """Per step (label): mean ± SE over queries of the target's MSE and ΔL, and of each query's mean over its unrelated prompts."""
    table = []
    for label in labels:
        chosen = [r for r in rows if r["step"] == label]
        entry = {"step": label, "rule": chosen[0]["rule"] if chosen else None, "queries": len(chosen)}
        for key, values in [("target_mse", [r["target_mse"] for r in chosen]),
                            ("target_delta_loss", [r["target_delta_loss"] for r in chosen]),
                            ("unrelated_mse", [float(np.mean(r["unrelated_mse"])) for r in chosen]),
                            ("unrelated_delta_loss", [float(np.mean(r["unrelated_delta_loss"])) for r in chosen]),
                            ("mse_ratio", [r["target_mse"] / max(float(np.mean(r["unrelated_mse"])), 1e-12)
                                           for r in chosen])]:
            mean, se = mean_and_se(values)
            entry[key] = {"mean": mean, "se": se}
        table.append(entry)
    return table


def markdown_table(table: list[dict]) -> str:
    from .metrics import format_mean_se

    lines = ["| step | target pixel MSE | target ΔL | unrelated pixel MSE | unrelated ΔL | target / unrelated MSE |",
             "|---:|---:|---:|---:|---:|---:|"]
    for e in table:
        cells = [format_mean_se(e[k]["mean"], e[k]["se"], 4) for k in
                 ("target_mse", "target_delta_loss", "unrelated_mse", "unrelated_delta_loss")]
        lines.append(f"| {e['step']} | " + " | ".join(cells) + f" | {format_mean_se(e['mse_ratio']['mean'], e['mse_ratio']['se'], 1)} |")
    return "\n".join(lines)
