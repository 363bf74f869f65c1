"""The diagonal Fisher of METHOD.md §2: F = mean over (examples × samples) of (∂L_n/∂θ)², stored once per model.

Each (example, sample) gets its own timestep and noise, both pure functions of (seed, example id, sample index):
timesteps from `keyed_timesteps`, noise from ops.gaussian_noise(seed, example id, sample index, flip 0). So F does not
depend on the batch size, the order of the examples or how the training set is sharded.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import ops
from .batching import MIN_UNET_ROWS, pad_rows
from .device import module_device, to_device
from ..errors import SettingsError, check_seed
from .fisher_hooks import diagonal_fisher
from ..settings import SPEED, knob, non_negative_float, positive_int


@dataclass
class FisherSettings:
    """samples_per_example: (t, ε) draws per example. batch_size: rows per backward (rounded down to a multiple of
    batching.MIN_UNET_ROWS, at least one block); changes speed, never F.
    damping: λ added to the returned F so unlearning never divides by ~0 (METHOD.md §2: optional, the reference has
    none; λ = 0 gives the raw Fisher). backend: the ops backend of linear_fisher_diag ("auto", "cpp", "cuda", "triton", "reference")."""

    samples_per_example: int = knob(1, flag="--fisher-samples", parse=positive_int,
                                    help="(t, ε) draws per image for the Fisher")
    batch_size: int = knob(64, role=SPEED, cli=False, help="rows per backward")
    seed: int = knob(0, cli=False, help="the Fisher's noise seed (the command line's --score-seed sets it)")
    damping: float = knob(1e-8, parse=non_negative_float, help="λ added to the Fisher")
    backend: str = knob("auto", role=SPEED, cli=False, help="ops backend of the Fisher's linear_fisher_diag")

    def __post_init__(self):
        if self.samples_per_example < 1 or self.batch_size < 1 or self.damping < 0:
            raise SettingsError(f"FisherSettings needs samples_per_example, batch_size >= 1 and damping >= 0: {self}")
        check_seed(self.seed, "the Fisher's seed (--score-seed)")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def keyed_timesteps(seed: int, keys, indices, num_train_timesteps: int) -> torch.Tensor:
    """Uniform timesteps in [0, T), one per (key, index) pair (broadcast): a counter-based hash, no generator state."""
    keys = np.asarray(torch.as_tensor(keys).cpu(), dtype=np.uint64)
    indices = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 wrap-around is the hash's arithmetic
        x = _splitmix64(_splitmix64(_splitmix64(np.full_like(keys, seed)) ^ keys) ^ indices)
    return torch.from_numpy((x % np.uint64(num_train_timesteps)).astype(np.int64))


def estimate_fisher(model, params: dict, x0: torch.Tensor, cond: torch.Tensor, example_ids,
                    settings: FisherSettings = FisherSettings(), progress: bool = False) -> dict[str, torch.Tensor]:
    """{name: float32 F + λ} over `params` (e.g. model.parameter_group("kv")).

    x0 (N, C, h, w) and cond (N, L, D) have one row per (example, caption); example_ids (N,) key the randomness.
    """
    sums = fisher_sums(model, params, x0, cond, example_ids, settings, progress)
    return finish_fisher(sums, len(x0) * settings.samples_per_example, settings.damping)


def finish_fisher(sums: dict[str, torch.Tensor], count: int, damping: float) -> dict[str, torch.Tensor]:
    """F + λ from float64 sums of squared per-example gradients over `count` (example, sample) rows."""
    return {name: (value / count + damping).float() for name, value in sums.items()}


def fisher_sums(model, params: dict, x0: torch.Tensor, cond: torch.Tensor, example_ids,
                settings: FisherSettings = FisherSettings(), progress: bool = False) -> dict[str, torch.Tensor]:
    """{name: float64 Σ (∂L/∂θ)²} over every (example, sample) row: sums of parts add up (a resumable Fisher).

    x0 and cond may stay on the CPU (e.g. memmap rows): each batch moves to the UNet's device; the sums live there."""
    device = module_device(model.unet)
    ids = torch.as_tensor(example_ids, dtype=torch.int64)
    if x0.ndim != 4 or len(cond) != len(x0) or ids.shape != (len(x0),):
        raise ValueError(f"the Fisher needs x0 (N, C, h, w) with one cond and one example id per row, got x0 "
                         f"{tuple(x0.shape)}, cond {tuple(cond.shape)}, example_ids {tuple(ids.shape)}")
    # Rows (example, sample) in C order; a batch is any slice of them.
    row = torch.arange(len(x0)).repeat_interleave(settings.samples_per_example)
    sample = torch.arange(settings.samples_per_example).repeat(len(x0))
    T = model.num_timesteps
    total = {name: torch.zeros(p.shape, dtype=torch.float64, device=p.device) for name, p in params.items()}
    # Batches are whole blocks of MIN_UNET_ROWS rows and each block's float32 sum is added in float64, so F has the
    # same bits for any batch size (the per-example gradients already do: batching.py).
    step = max(1, settings.batch_size // MIN_UNET_ROWS) * MIN_UNET_ROWS
    for start in tqdm(range(0, len(row), step), desc="fisher", unit="batch", disable=not progress):
        batch = torch.arange(start, min(start + step, len(row)))
        count, batch = len(batch), pad_rows(batch)  # only the first `count` rows count
        r, s = row[batch], sample[batch]
        t = keyed_timesteps(settings.seed, ids[r], s, T).to(device)
        noise = ops.gaussian_noise(settings.seed, ids[r].to(device), s.to(device), 0, x0.shape[1:], device=device)
        squares = diagonal_fisher(model, params, to_device(x0[r.to(x0.device)], device),
                                  to_device(cond[r.to(cond.device)], device), t, noise, backend=settings.backend,
                                  rows=count, block_rows=MIN_UNET_ROWS)
        for name, value in squares.items():
            total[name] += value
    return total


def fisher_metadata(settings: FisherSettings, meta: dict | None = None) -> dict[str, str]:
    """The safetensors metadata load_fisher reads back: the settings and `meta` (JSON-serialisable)."""
    return {"settings": json.dumps(asdict(settings)), "meta": json.dumps(meta or {})}


def save_fisher(path: str, fisher: dict[str, torch.Tensor], settings: FisherSettings, meta: dict | None = None):
    """safetensors file; settings and `meta` (JSON-serialisable, e.g. the model fingerprint) go in its metadata."""
    tensors = {name: value.detach().cpu().contiguous() for name, value in fisher.items()}
    save_file(tensors, path, metadata=fisher_metadata(settings, meta))


def load_fisher(path: str, device: str | torch.device = "cpu"
                ) -> tuple[dict[str, torch.Tensor], FisherSettings, dict]:
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "settings" not in metadata:
        raise ValueError(f"{path} is not a Fisher file written by save_fisher (no settings in its metadata)")
    fisher = load_file(path, device=str(device))
    return fisher, FisherSettings(**json.loads(metadata["settings"])), json.loads(metadata.get("meta", "{}"))
