"""The diffusion objective of a model family: its time variable, noisy input and regression target.

Every family is written in one form, x_t = a·x0 + s·ε and target = c_ε·ε + c_x·x0, over an integer index into the
family's training schedule (0 … num_timesteps − 1). The index is what the engine grids over and keys noise with; the
objective turns it into the coefficients (for the fused kernels) and into the time value the denoiser is called with.

    family          index t            a             s               c_ε      c_x      model time
    DDPM epsilon    integer timestep   √ᾱ_t          √(1 − ᾱ_t)      1        0        t
    DDPM v          integer timestep   √ᾱ_t          √(1 − ᾱ_t)      √ᾱ_t     −√(1−ᾱ_t) t
    flow matching   schedule index     1 − σ_t       σ_t             1        −1       σ_t · 1000 (timesteps[t])

σ_t is FlowMatchEulerDiscreteScheduler's training sigma at index t (its `shift` applied; with dynamic shifting, the
unshifted sigmas, as diffusers' training scripts use them). Each objective keeps a fresh scheduler of its own, built
from the model's config as the scripts build theirs: a pipeline's scheduler holds the inference grid after sampling.

A family may weight each row's loss by w(t) (`weight`): SD3's scripts precondition the outputs by default
(--precondition_outputs 1: the model's x0 estimate x_t − σ·v against x0), which is the flow loss times σ². The reference path (`noisy`, `target`) is diffusers' own
arithmetic (DDPMScheduler.add_noise / get_velocity; the flow-matching scripts' (1 − σ)·x0 + σ·ε and ε − x0), so the
fused kernels are checked against what diffusers computes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Coefficients:
    """float32 (B,) each: x_t = a·x0 + s·ε, target = c_eps·ε + c_x·x0."""

    a: torch.Tensor
    s: torch.Tensor
    c_eps: torch.Tensor
    c_x: torch.Tensor


class DiffusionObjective(ABC):
    """A family's training objective over integer schedule indices."""

    kind: str

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def weight(self, t: torch.Tensor) -> torch.Tensor | None:
        """Each row's loss weight, float32 (B,), or None for the unweighted loss (every family but SD3)."""
        return None

    @property
    def num_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @abstractmethod
    def coefficients(self, t: torch.Tensor) -> Coefficients:
        """The four coefficients of each row's schedule index t (int64 (B,)), float32 on t's device."""

    @abstractmethod
    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep argument the denoiser is called with for schedule indices t."""

    @abstractmethod
    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t as diffusers' training code forms it."""

    @abstractmethod
    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target as diffusers' training code forms it."""

    def describe(self) -> dict:
        return {"objective": self.kind, "num_timesteps": self.num_timesteps}


class DDPMObjective(DiffusionObjective):
    """DDPMScheduler's objective (whatever scheduler class a folder names, training used its DDPM form)."""

    def __init__(self, scheduler):
        from diffusers import DDPMScheduler

        super().__init__(DDPMScheduler.from_config(scheduler.config))
        self.kind = scheduler.config.prediction_type
        if self.kind not in ("epsilon", "v_prediction"):
            raise ValueError(f"scheduler prediction_type {self.kind!r}: only 'epsilon' and 'v_prediction' are "
                             "supported")

    def coefficients(self, t):
        abar = self.scheduler.alphas_cumprod.to(device=t.device, dtype=torch.float64)[t.long()]
        a, s = abar.sqrt().float(), (1.0 - abar).sqrt().float()
        if self.kind == "epsilon":
            return Coefficients(a, s, torch.ones_like(a), torch.zeros_like(a))
        return Coefficients(a, s, a, -s)

    def model_time(self, t):
        return t

    def noisy(self, x0, noise, t):
        return self.scheduler.add_noise(x0, noise, t)

    def target(self, x0, noise, t):
        return noise if self.kind == "epsilon" else self.scheduler.get_velocity(x0, noise, t)


class FlowMatchingObjective(DiffusionObjective):
    """Rectified flow (SD3, Flux, Sana): x_t = (1 − σ)·x0 + σ·ε, target ε − x0 (diffusers' train_dreambooth_*_sd3 /
    _flux / _sana scripts, weighting "none")."""

    kind = "flow_matching"

    def __init__(self, scheduler, weighting: str = "none"):
        from diffusers import FlowMatchEulerDiscreteScheduler

        super().__init__(FlowMatchEulerDiscreteScheduler.from_config(scheduler.config))
        if weighting not in ("none", "sigma_squared"):
            raise ValueError(f"flow-matching weighting must be 'none' or 'sigma_squared', got {weighting!r}")
        self.weighting = weighting

    def weight(self, t):
        return self._sigmas(t).square().float() if self.weighting == "sigma_squared" else None

    def _sigmas(self, t):
        return self.scheduler.sigmas.to(device=t.device)[t.long()]

    def coefficients(self, t):
        sigma = self._sigmas(t).double()
        one = torch.ones_like(sigma, dtype=torch.float32)
        return Coefficients((1.0 - sigma).float(), sigma.float(), one, -one)

    def model_time(self, t):
        return self.scheduler.timesteps.to(device=t.device)[t.long()]

    def noisy(self, x0, noise, t):
        sigma = self._sigmas(t).to(x0.dtype).view(-1, *[1] * (x0.ndim - 1))
        return (1.0 - sigma) * x0 + sigma * noise

    def target(self, x0, noise, t):
        return noise - x0

    def describe(self) -> dict:
        config = self.scheduler.config
        return {**super().describe(), "shift": float(config.get("shift", 1.0)),
                "dynamic_shifting": bool(config.get("use_dynamic_shifting", False)), "weighting": self.weighting}


def objective_for(scheduler) -> DiffusionObjective:
    """The objective a scheduler trains with: flow matching for FlowMatch* schedulers, DDPM otherwise (e.g. a
    pipeline's Euler or DPM-Solver sampler over DDPM betas). A family whose sampler does not say (Sana ships a
    flow-matching DPM-Solver) chooses its objective itself (Family.objective)."""
    if type(scheduler).__name__.startswith("FlowMatch"):
        return FlowMatchingObjective(scheduler)
    return DDPMObjective(scheduler)
