"""What crossing into torch.library needs: the ops' namespace, and seeds carried as int64.

Every fused op is a torch.library custom op unlearn_fast::<op> (with a fake implementation, so torch.compile traces
through it instead of breaking its graph). A schema int is an int64, but a seed is any int in [0, 2**64): seeds of
2**63 and above cross as their two's-complement int64 (seed − 2**64) and are mapped back inside the op, losslessly.
No autograd formula is registered: nothing differentiates through these ops (their outputs are noise, noisy inputs,
losses and Fisher sums, all computed outside autograd), and backpropagating through one raises.
"""
from __future__ import annotations

NAMESPACE = "unlearn_fast"
_TWO_64 = 1 << 64


def seed_to_int64(seed: int) -> int:
    """A seed in [0, 2**64) as the int64 with the same 64 bits."""
    return seed - _TWO_64 if seed >= 1 << 63 else seed


def seed_from_int64(value: int) -> int:
    """The seed in [0, 2**64) that seed_to_int64 mapped to `value`."""
    return value % _TWO_64
