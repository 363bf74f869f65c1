"""The sparse Johnson-Lindenstrauss projection P that gradient features are compressed with (TRAK's projector, split
from the methods that use it: D-TRAK and the two-stage front of AbU).

Each coordinate j of a parameter tensor goes to one of `dim` buckets b_j with a random sign s_j (dattri's "sjlt"):
(P v)_k = Σ_{j: b_j = k} s_j v_j. O(#params) per vector, and nothing of size #params × dim is ever stored. Buckets
and signs are drawn from one generator seeded once and walked over the parameters in their given order, so the same
(seed, dim, parameter names and shapes) give the same P in every process.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch


class SparseProjector:
    """P for the parameters `params` ({name: tensor or shape}); dim buckets, seed for the draws."""

    def __init__(self, params: dict, dim: int, seed: int = 0):
        self.dim, self.seed = int(dim), int(seed)
        generator = torch.Generator().manual_seed(self.seed)
        self.buckets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, p in params.items():
            numel = p.numel() if isinstance(p, torch.Tensor) else int(torch.Size(p).numel())
            bucket = torch.randint(0, self.dim, (numel,), generator=generator)
            sign = torch.randint(0, 2, (numel,), generator=generator).float() * 2 - 1
            device = p.device if isinstance(p, torch.Tensor) else "cpu"
            self.buckets[name] = (bucket.to(device), sign.to(device))

    def add_projection(self, out: torch.Tensor, name: str, values: torch.Tensor) -> None:
        """out (B, dim) += P_name · values (B, numel of `name`), rows in place; float64 sums when out is float64."""
        bucket, sign = self.buckets[name]
        out.index_add_(1, bucket.to(out.device), (values.flatten(1) * sign.to(values.device)).to(out.dtype))

    def project(self, vectors: dict[str, torch.Tensor], dtype=torch.float64) -> torch.Tensor:
        """P · v (dim,) of one vector given per parameter ({name: tensor of that parameter's shape})."""
        first = next(iter(vectors.values()))
        out = torch.zeros(1, self.dim, dtype=dtype, device=first.device)
        for name, v in vectors.items():
            self.add_projection(out, name, v.reshape(1, -1))
        return out[0]


PRODUCT_ROWS = 4096  # feature rows read (and widened to float32) at a time: bounds memory, not the numbers


def feature_product(features: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """features (R, dim) float16 (a memmap: read PRODUCT_ROWS rows at a time) times vectors (Q, dim): (R, Q) float32.

    Each block is widened into one reused float32 buffer: a fresh tensor per block costs its page faults, which made
    the product 3.3× slower at a million rows (benchmarks/README.md, "Two-stage queries")."""
    weights = torch.from_numpy(np.ascontiguousarray(vectors, np.float32)).T
    out = torch.empty(len(features), len(vectors), dtype=torch.float32)
    buffer = torch.empty(min(PRODUCT_ROWS, len(features)), features.shape[1], dtype=torch.float32)
    with warnings.catch_warnings():  # a read-only memmap: torch warns it may not write to it, and it does not
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for start in range(0, len(features), PRODUCT_ROWS):
            block = torch.from_numpy(np.asarray(features[start:start + PRODUCT_ROWS]))
            widened = buffer[:len(block)]
            widened.copy_(block)
            torch.mm(widened, weights, out=out[start:start + len(block)])
    return out.numpy()
