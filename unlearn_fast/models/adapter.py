"""One object for every model unlearn_fast attributes: the diffusers parts plus the few operations the method needs.

``DiffusionModel`` hides where a model came from (the tiny default, a trained checkpoint, a Stable Diffusion pipeline
folder). Everything downstream — training, Fisher, unlearning, scoring, generation — talks to it only through
``encode_images``, ``encode_text``, ``loss``, ``parameter_group`` and ``generate``.
"""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import torch
from torch import nn

from ..errors import SettingsError
from .text_side import TextSide  # noqa: F401  (re-exported: the model's text side)

# Named subsets of weights that unlearning may change (METHOD.md §3). Keys are diffusers parameter names.
PARAMETER_GROUPS: dict[str, str] = {
    "kv": r"\.attn2\.to_[kv]\.weight$",  # cross-attention keys and values: the paper's (and our) default
    "cross-attention": r"\.attn2\.",
    "attention": r"\.attn[12]\.",
    "all": r".",
}


def _config_repr(config) -> str:
    """A config's meaning, without bookkeeping entries (``_name_or_path``, ``_diffusers_version``, ...)."""
    items = config.to_dict().items() if hasattr(config, "to_dict") else dict(config).items()
    return json.dumps({key: value for key, value in items if not key.startswith("_")}, sort_keys=True, default=str)


class DiffusionModel:
    """A text-conditioned latent (or pixel) diffusion model: UNet2DConditionModel + scheduler [+ VAE] + text side."""

    def __init__(self, unet, scheduler, text: TextSide, vae=None, resolution: int | None = None):
        self.unet = unet
        self.scheduler = scheduler
        self.text = text
        self.vae = vae
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.resolution = resolution or unet.config.sample_size * vae_factor
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"scheduler prediction_type {self.prediction_type!r}: only 'epsilon' and 'v_prediction' "
                             "are supported")

    # ----------------------------------------------------------------------------------------------------- encoding
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return (self.unet.config.in_channels, size, size)

    def _latent_scale_shift(self) -> tuple[float, float]:
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return float(self.vae.config.scaling_factor), float(shift)

    @torch.no_grad()
    def encode_images(self, pixels: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """uint8 (N, H, W, 3) images → x0 (N, C, h, w) float32: VAE posterior mean × scaling factor, or pixels in [-1, 1].

        The posterior mean (not a sample) keeps x0 a deterministic function of the image.
        """
        pixels = torch.as_tensor(pixels)
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"encode_images expects uint8 images of shape (N, H, W, 3), got {tuple(pixels.shape)} "
                             f"{pixels.dtype}")
        if pixels.shape[1:3] != (self.resolution, self.resolution):
            raise ValueError(f"encode_images: images are {pixels.shape[2]}×{pixels.shape[1]}, the model takes "
                             f"{self.resolution}×{self.resolution}")
        out = []
        for chunk in pixels.split(batch_size):
            x = chunk.to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            if self.vae is not None:
                scale, shift = self._latent_scale_shift()
                x = (self.vae.encode(x).latent_dist.mean - shift) * scale
            out.append(x.float())
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 → float images in [0, 1], (N, 3, H, W)."""
        if self.vae is not None:
            scale, shift = self._latent_scale_shift()
            x0 = self.vae.decode(x0 / scale + shift).sample
        return ((x0.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.text.encode(list(prompts)).float()

    def truncated_prompts(self, prompts: list[str]) -> list[int]:
        """Indices of the prompts longer than the text encoder reads: encode_text cuts them to max_tokens."""
        if self.text.token_counts is None or self.text.max_tokens is None:
            return []
        counts = self.text.token_counts(list(prompts))
        return [i for i, count in enumerate(counts) if count > self.text.max_tokens]

    # ---------------------------------------------------------------------------------------------- the loss (§1)
    def noise_coefficients(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, s_t) with x_t = a_t·x0 + s_t·ε: sqrt(ᾱ_t) and sqrt(1 − ᾱ_t), float32, one per row."""
        alphas_cumprod = self.scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)
        abar = alphas_cumprod[timesteps.long()]
        return abar.sqrt().float(), (1.0 - abar).sqrt().float()

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(x0, noise, timesteps)

    def loss(self, x0: torch.Tensor, cond: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor,
             unet: nn.Module | None = None) -> torch.Tensor:
        """Per-example denoising loss mean((model(x_t, t, c) − target)²) over all but the batch dimension, float32."""
        unet = unet or self.unet
        x_t = self.scheduler.add_noise(x0, noise, timesteps)
        pred = unet(x_t, timesteps, encoder_hidden_states=cond).sample
        return (pred.float() - self.target(x0, noise, timesteps).float()).pow(2).flatten(1).mean(1)

    # -------------------------------------------------------------------------------------- parameter groups (§3)
    def parameter_group(self, group: str = "kv") -> dict[str, nn.Parameter]:
        """UNet parameters of a named group ('kv', 'cross-attention', 'attention', 'all') or matching a regex."""
        pattern = PARAMETER_GROUPS.get(group, group)
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise SettingsError(f"parameter group {group!r} is neither one of {sorted(PARAMETER_GROUPS)} nor a valid "
                             f"regex ({error})") from None
        selected = {name: p for name, p in self.unet.named_parameters() if regex.search(name)}
        if not selected:
            raise SettingsError(f"parameter group {group!r} matches no UNet parameter (e.g. "
                             f"{next(iter(dict(self.unet.named_parameters())))!r})")
        return selected

    def fingerprints(self) -> dict[str, str]:
        """A hash per part (every weight and config): "unet", "vae" (with the input resolution), "text_encoder" (with
        the tokenizer's vocabulary where it has one), "scheduler". Artefacts computed from another part are refused, and
        those that never read a changed part (latents when only the UNet changed) are kept."""
        def part(module, *extra: str) -> str:
            digest = hashlib.sha256()
            for item in extra:
                digest.update(item.encode())
            if module is not None:
                digest.update(_config_repr(getattr(module, "config", {})).encode())
                for key, tensor in sorted(module.state_dict().items()):
                    digest.update(key.encode())
                    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            return digest.hexdigest()[:16]

        vocabulary = getattr(self.text.tokenizer, "vocab", None) if self.text is not None else None
        return {"unet": part(self.unet), "vae": part(self.vae, f"resolution {self.resolution}"),
                "text_encoder": part(self.text.encoder if self.text is not None else None,
                                     json.dumps(vocabulary) if isinstance(vocabulary, list) else ""),
                "scheduler": hashlib.sha256(_config_repr(self.scheduler.config).encode()).hexdigest()[:16]}

    def fingerprint(self, parts: dict[str, str] | None = None) -> str:
        """One hash of every weight and config of the model: of its parts' fingerprints (pass them if already known)."""
        return hashlib.sha256(json.dumps(parts or self.fingerprints(), sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompts: list[str] | str, seed: int | list[int] = 0, steps: int = 50, guidance: float = 3.0
                 ) -> np.ndarray:
        """Deterministic DDIM sampling (eta 0) with classifier-free guidance → uint8 images (B, H, W, 3).

        ``seed`` is one per prompt, or one for all: each row's starting noise comes from its own generator, so a
        (prompt, seed) pair gives the same image alone or in a batch, and the same bits every time.
        """
        from diffusers import DDIMScheduler

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = [seed] * len(prompts) if isinstance(seed, int) else list(seed)
        if len(seeds) != len(prompts):
            raise ValueError(f"generate: {len(seeds)} seeds for {len(prompts)} prompts")
        sampler = DDIMScheduler.from_config(self.scheduler.config, clip_sample=False, set_alpha_to_one=False)
        sampler.set_timesteps(steps)
        x = torch.stack([torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        x = x.to(self.device) * sampler.init_noise_sigma
        cond = self.encode_text(prompts)
        uncond = self.encode_text([""] * len(prompts))
        for t in sampler.timesteps:
            timestep = torch.full((len(prompts),), int(t), device=self.device, dtype=torch.long)
            if guidance == 1.0:
                pred = self.unet(x, timestep, encoder_hidden_states=cond).sample
            else:
                both = self.unet(torch.cat([x, x]), torch.cat([timestep, timestep]),
                                 encoder_hidden_states=torch.cat([uncond, cond])).sample
                pred_uncond, pred_cond = both.chunk(2)
                pred = pred_uncond + guidance * (pred_cond - pred_uncond)
            x = sampler.step(pred, t, x).prev_sample
        images = self.decode(x)
        return (images.permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)

    # ------------------------------------------------------------------------------------------------ persistence
    def save(self, folder: str, training_record: dict | None = None) -> None:
        from .folder import save_model_folder

        save_model_folder(self, folder, training_record)

    @classmethod
    def load(cls, folder: str = "default", device: str | torch.device = "cpu") -> "DiffusionModel":
        """A model folder (``"default"`` = the shipped tiny emoji model) in eval mode; bad folders raise
        models.folder.ModelFolderError naming the part."""
        from .folder import load_parts, loading

        parts, where = load_parts(folder, device)
        with loading(where, "model"):  # e.g. a scheduler whose prediction type is not supported
            return cls(**parts).eval()

    def modules(self) -> list[nn.Module]:
        text_encoder = self.text.encoder if self.text is not None else None  # a UNet-only model (benchmarks)
        return [m for m in (self.unet, self.vae, text_encoder) if m is not None]

    def to(self, device) -> "DiffusionModel":
        for module in self.modules():
            module.to(device)
        return self

    def eval(self) -> "DiffusionModel":
        for module in self.modules():
            module.eval()
        return self
