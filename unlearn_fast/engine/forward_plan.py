"""How the scoring pass runs the UNet (engine/unet_forward.py applies it): torch.compile or not, channels_last or not.
Speed only; declared with no torch import, so the settings that carry it stay light."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SettingsError

if TYPE_CHECKING:
    import torch

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class ForwardPlan:
    """compile: a torch.compile mode or "none". channels_last: NHWC activations and weights (what cuDNN's and
    oneDNN's fastest convolutions want); None = on for CUDA, off for CPU. Both change speed, not what is computed
    (results agree to float32 rounding: tests/ops/test_unet_forward.py)."""

    compile: str = "none"
    channels_last: bool | None = None

    def __post_init__(self):
        if self.compile not in COMPILE_MODES:
            raise SettingsError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")

    def uses_channels_last(self, device: torch.device) -> bool:
        return self.channels_last if self.channels_last is not None else device.type == "cuda"
