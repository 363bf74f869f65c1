"""The sparse Johnson-Lindenstrauss projection P that gradient features are compressed with (TRAK's projector, split
from the methods that use it: D-TRAK and the two-stage front of AbU).

Each coordinate j of a parameter tensor goes to one of `dim` buckets b_j with a random sign s_j (dattri's "sjlt"):
(P v)_k = Σ_{j: b_j = k} s_j v_j. O(#params) per vector, and nothing of size #params × dim is ever stored. Buckets
and signs are drawn from one generator seeded once and walked over the parameters in their given order, so the same
(seed, dim, parameter names and shapes) give the same P in every process.
"""
from __future__ import annotations

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
