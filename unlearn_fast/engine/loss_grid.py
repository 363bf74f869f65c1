"""The loss grid: how per-example losses are computed (engine/scoring.py computes them), the same before and after
unlearning. Declared with no torch import at module level, so the command line builds its flags without the engines."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SettingsError, check_seed
from ..settings import SPEED, knob, positive_int
from ..settings import seed as seed_type
from .forward_plan import COMPILE_MODES, ForwardPlan

if TYPE_CHECKING:
    import torch

DTYPES = ("fp32", "bf16")

PATHS = ("fused", "stored-noise")  # LossGrid.path: how the losses are computed (the ops backend is chosen per op)

# "example": a row's noise is keyed by its example id too (the paper); "shared": only by (seed, timestep, flip), so
# identical images get identical losses (and scores), still independent of batching and sharding.
NOISE_KEYS = ("example", "shared")


def timestep_grid(num_train_timesteps: int, count: int) -> torch.Tensor:
    """`count` evenly spaced timesteps in [0, T): cell midpoints t_i = floor((i + 0.5)·T / count), i < count.

    Integer arithmetic ((2i + 1)·T // (2·count)), so the grid is exact on every platform; T = 1000, count = 10 gives
    50, 150, …, 950.
    """
    import torch

    if not 1 <= count <= num_train_timesteps:
        raise SettingsError(f"timestep count must be in [1, {num_train_timesteps}], got {count}")
    i = torch.arange(count, dtype=torch.int64)
    return (2 * i + 1) * num_train_timesteps // (2 * count)


@dataclass(frozen=True)
class LossGrid:
    """How per-example losses are computed; the same settings must be used before and after unlearning.

    seed: noise seed. timesteps: a count (→ timestep_grid) or explicit timesteps in [0, T). flips: also score the
    mirrored image (with its own noise). batch_size: rows (example × timestep × flip) per UNet call; it changes speed,
    never the losses. dtype: "fp32" (TF32 off on GPUs too), or "bf16" autocast around the UNet (losses still reduced
    in fp32). path: "fused" (ops.noisy_input → UNet → ops.denoising_loss: noise regenerated in-kernel, never stored) or
    "stored-noise" (ops.gaussian_noise stored, torch.flip, model.loss: what the paper's code does; the oracle); PATHS.
    Both use the fastest ops backend (ops.available_backends()), which gives the same noise bits on every backend. compile, channels_last: how the UNet is run
    (unet_forward.ForwardPlan; speed only). With compile, every call is padded to batch_size rows (one graph).
    noise: "shared" (one noise per timestep and flip for every example, so identical images score alike: the
    package's default) or "example" (keyed by example id, timestep and flip: the paper's); NOISE_KEYS.
    """

    seed: int = knob(0, flag="--score-seed", parse=seed_type, help="noise seed of the scoring and the Fisher")
    timesteps: int | tuple[int, ...] = knob(10, parse=positive_int, help="timesteps scored per image")
    flips: bool = knob(True, help="also score the mirrored image, keep the larger change")
    batch_size: int = knob(512, role=SPEED, parse=positive_int, help="UNet rows per call")
    dtype: str = knob("fp32", choices=DTYPES, help="UNet precision when scoring")
    path: str = knob("fused", role=SPEED, cli=False, choices=PATHS,
                     help="fused ops (noise regenerated in-kernel), or stored noise and model.loss (the oracle)")
    compile: str = knob("none", role=SPEED, choices=COMPILE_MODES, help="torch.compile the UNet for the scoring "
                        "passes (reduce-overhead: CUDA graphs); pays a one-off compile per process")
    channels_last: bool | None = knob(None, role=SPEED, parse=bool,
                                      help="NHWC UNet activations (none: on for CUDA, off for CPU)")
    noise: str = knob("shared", choices=NOISE_KEYS,
                      help="scoring noise shared by every example at a timestep, so identical images score alike, or "
                           "keyed per example (the paper's)")

    def __post_init__(self):
        self.forward_plan  # validates compile
        if self.dtype not in DTYPES:
            raise SettingsError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.path not in PATHS:
            raise SettingsError(f"path must be one of {PATHS}, got {self.path!r}")
        if self.noise not in NOISE_KEYS:
            raise SettingsError(f"noise must be one of {NOISE_KEYS}, got {self.noise!r}")
        if self.batch_size < 1:
            raise SettingsError(f"batch_size must be at least 1, got {self.batch_size}")
        check_seed(self.seed, "the scoring seed (--score-seed)")

    @property
    def forward_plan(self) -> ForwardPlan:
        return ForwardPlan(compile=self.compile, channels_last=self.channels_last)

    def timestep_values(self, num_train_timesteps: int) -> torch.Tensor:
        import torch

        if isinstance(self.timesteps, int):
            return timestep_grid(num_train_timesteps, self.timesteps)
        steps = torch.as_tensor(self.timesteps, dtype=torch.int64)
        if steps.ndim != 1 or len(steps) == 0 or bool(((steps < 0) | (steps >= num_train_timesteps)).any()):
            raise SettingsError(f"timesteps must be a non-empty list of ints in [0, {num_train_timesteps}), "
                             f"got {self.timesteps}")
        return steps
