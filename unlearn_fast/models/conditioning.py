"""A caption row's conditioning record, stored as one array row per caption in the work directory.

A family conditions its denoiser on named tensors: text tokens (L, D), and for some a pooled embedding (P,) or a
token mask (L,). The work directory keeps one array of rows, so a record with more than one field is packed into one
flat float32 row and unpacked before the denoiser call; a record of tokens alone stays (L, D), as it always was.
What is the same for every row (SDXL's time ids at a fixed resolution, Flux's position ids and guidance) is made at
call time, not stored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ConditioningLayout:
    """fields: (name, per-row shape) in storage order; the first is the text tokens."""

    fields: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def packed(self) -> bool:
        return len(self.fields) > 1

    def pack(self, record: dict[str, torch.Tensor]) -> torch.Tensor:
        """{name: (B, *shape)} → (B, L, D) for tokens alone, else (B, F) float32."""
        if not self.packed:
            return record[self.fields[0][0]]
        rows = len(record[self.fields[0][0]])
        parts = []
        for name, shape in self.fields:
            value = record[name]
            if tuple(value.shape[1:]) != tuple(shape):
                raise ValueError(f"conditioning field {name!r}: expected (B, {', '.join(map(str, shape))}), got "
                                 f"{tuple(value.shape)}")
            parts.append(value.reshape(rows, -1).float())
        return torch.cat(parts, dim=1)

    def unpack(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.packed:
            return {self.fields[0][0]: packed}
        out, start = {}, 0
        for name, shape in self.fields:
            size = math.prod(shape)
            out[name] = packed[:, start:start + size].reshape(len(packed), *shape)
            start += size
        return out
