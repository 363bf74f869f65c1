"""The progress bar of a pass split over torchrun's ranks: one bar, on rank 0, over the WHOLE pass.

Ranks.share deals the pass's items round robin, so in round k every rank computes its k-th item; rank 0 holds the
largest share (a remainder falls to the lowest ranks). After rank 0's k-th item its bar stands at the items of the first
k + 1 rounds, min((k + 1) × world size, total): it advances with all ranks' work (at rank 0's pace) and ends at exactly
the total. The other ranks show nothing, so a terminal never receives two bars fighting over one line.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

from tqdm.auto import tqdm

from .distributed import Ranks


def shared_progress(ranks: Ranks, mine: Sequence, total: int, desc: str, unit: str = "chunk",
                    enabled: bool = True) -> Iterator:
    """This rank's share `mine` (ranks.share of the pass's `total` items), one at a time; on rank 0, when `enabled`,
    under a bar whose total is the whole pass."""
    with tqdm(total=total, desc=desc, unit=unit, disable=not (enabled and ranks.is_main)) as bar:
        for k, item in enumerate(mine):
            yield item
            bar.update(min((k + 1) * ranks.world_size, total) - bar.n)
