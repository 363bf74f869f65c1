"""One object for every model unlearn_fast attributes: the diffusers parts plus the few operations the method needs.

``DiffusionModel`` hides where a model came from (the tiny default, a trained checkpoint, a pipeline folder of any
family in models/families/) and which family it is. Everything downstream — training, Fisher, unlearning, scoring,
D-TRAK features, generation — talks to it only through ``encode_images``, ``encode_text``, ``loss``, ``predict``,
``coefficients``, ``num_timesteps``, ``parameter_group`` and ``generate``; nothing outside models/ knows the family.
The denoiser (a UNet or a transformer) is ``model.unet``, the name every pass swaps weights into.
"""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import torch
from torch import nn

from ..errors import SettingsError
from .conditioning import ConditioningLayout
from .family import COMMON_GROUPS, UNET_GROUPS, Family
from .sampling import SamplingSettings
from .objective import Coefficients
from .text_side import TextSide  # noqa: F401  (re-exported: the model's text side)

# The default family's named subsets of weights (METHOD.md §3); a model's own are model.family.parameter_groups().
PARAMETER_GROUPS: dict[str, str] = {**UNET_GROUPS, "all": COMMON_GROUPS["all"]}


def _config_repr(config) -> str:
    """A config's meaning, without bookkeeping entries (``_name_or_path``, ``_diffusers_version``, ...)."""
    items = config.to_dict().items() if hasattr(config, "to_dict") else dict(config).items()
    return json.dumps({key: value for key, value in items if not key.startswith("_")}, sort_keys=True, default=str)



def fingerprint_of(parts: dict[str, str]) -> str:
    """The model's one hash from its parts' fingerprints (DiffusionModel.fingerprints, or a manifest's record of them)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

class DiffusionModel:
    """A text-conditioned latent (or pixel) diffusion model: a denoiser (UNet or transformer) + scheduler [+ VAE] +
    text side, and the family that says how they fit together (models/family.py; default: a plain UNet)."""

    def __init__(self, unet, scheduler, text: TextSide, vae=None, resolution: int | None = None,
                 family: Family | None = None):
        self.unet = unet
        self.scheduler = scheduler
        self.text = text
        self.vae = vae
        self.family = family or Family()
        self.objective = self.family.objective(scheduler)
        self.resolution = resolution or self._latent_size() * self.vae_scale_factor
        self.native_resolution = self.resolution  # the folder's own (training.json's, else the sample size's)
        self._layout: ConditioningLayout | None = None

    @property
    def prediction_type(self) -> str:
        """"epsilon", "v_prediction" or "flow_matching"."""
        return self.objective.kind

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        if hasattr(self.vae.config, "block_out_channels"):
            return 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.vae.spatial_compression_ratio)  # AutoencoderDC (Sana)

    @property
    def size_multiple(self) -> int:
        """Image sides the model takes are multiples of this: the VAE's factor × the denoiser's (a transformer's patch
        size; Flux's 2×2 packing)."""
        return self.vae_scale_factor * self.family.latent_multiple(self.unet)

    def check_resolution(self, resolution: int | None) -> None:
        """A SettingsError naming --resolution unless it is None (the model's own) or a positive multiple of
        size_multiple."""
        if resolution is None:
            return
        multiple = self.size_multiple
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1 or resolution % multiple:
            raise SettingsError(f"--resolution {resolution!r}: this model takes image sides that are positive "
                                f"multiples of {multiple} (its VAE's factor {self.vae_scale_factor} × its denoiser's "
                                f"{self.family.latent_multiple(self.unet)}); its own resolution is "
                                f"{self.native_resolution}")

    def use_resolution(self, resolution: int | None) -> "DiffusionModel":
        """Take `resolution` px square images from now on (training images are preprocessed to it, queries must have
        it, latents follow); None: the model's own (check_resolution's errors first)."""
        self.check_resolution(resolution)
        self.resolution = self.native_resolution if resolution is None else resolution
        self.family.at_resolution(self.resolution)
        return self

    def _latent_size(self) -> int:
        size = self.unet.config.sample_size
        return size if isinstance(size, int) else size[0]

    # ----------------------------------------------------------------------------------------------------- encoding
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.resolution // self.vae_scale_factor
        # The VAE's channels: Flux's transformer takes them packed 2×2 (in_channels = 4 × latent channels).
        channels = getattr(self.vae.config, "latent_channels", None) if self.vae is not None else None
        return (channels or self.unet.config.in_channels, size, size)

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
                encoded = self.vae.encode(x)
                # The posterior mean of a KL autoencoder; a deterministic one (Sana's DC-AE) gives its latent.
                z = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latent
                x = (z - shift) * scale
            out.append(x.float())
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 → float images in [0, 1], (N, 3, H, W)."""
        if self.vae is not None:
            scale, shift = self._latent_scale_shift()
            x0 = self.vae.decode(x0 / scale + shift).sample
        return ((x0.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def encode_text(self, prompts: list[str], grad: bool = False) -> torch.Tensor:
        """Each prompt's conditioning record as one row: (B, L, D) text tokens, or (B, F) packed when the family
        also conditions on pooled embeddings or a mask (models/conditioning.py). grad: keep the text encoder's graph
        (training it)."""
        with torch.set_grad_enabled(grad):
            encoded = self.text.encode(list(prompts))
        record = encoded if isinstance(encoded, dict) else {"tokens": encoded}
        if self._layout is None:
            self._layout = ConditioningLayout(tuple((name, tuple(v.shape[1:])) for name, v in record.items()))
        return self._layout.pack(record).float()

    @property
    def conditioning_layout(self) -> ConditioningLayout:
        """The fields of a conditioning row (known after the first encode_text; tokens alone for a model without a
        text side, whose callers pass token states themselves)."""
        if self._layout is None:
            if self.text is None:
                return ConditioningLayout((("tokens", ()),))
            self.encode_text([""])
        return self._layout

    def truncated_prompts(self, prompts: list[str]) -> list[int]:
        """Indices of the prompts longer than the text encoder reads: encode_text cuts them to max_tokens."""
        if self.text.token_counts is None or self.text.max_tokens is None:
            return []
        counts = self.text.token_counts(list(prompts))
        return [i for i, count in enumerate(counts) if count > self.text.max_tokens]

    # ---------------------------------------------------------------------------------------------- the loss (§1)
    @property
    def num_timesteps(self) -> int:
        """Size of the training schedule: timesteps are integer indices into it (models/objective.py)."""
        return self.objective.num_timesteps

    def coefficients(self, timesteps: torch.Tensor) -> Coefficients:
        """x_t = a·x0 + s·ε and target = c_eps·ε + c_x·x0 for each row's timestep index, float32 (the fused path)."""
        return self.objective.coefficients(timesteps)

    def noise_coefficients(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, s_t) with x_t = a_t·x0 + s_t·ε, float32, one per row."""
        coefficients = self.coefficients(timesteps)
        return coefficients.a, coefficients.s

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.objective.noisy(x0, noise, timesteps)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.objective.target(x0, noise, timesteps)

    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor, unet=None) -> torch.Tensor:
        """The denoiser's prediction (x_t's shape) at timestep indices `timesteps` for conditioning rows `cond`;
        `unet`: another module or callable standing in for the denoiser (an unlearned copy, a functional_call)."""
        record = self.conditioning_layout.unpack(cond)
        denoiser = self.unet if unet is None else unet  # `unet or …` would ask a compiled module for its len()
        return self.family.call(denoiser, x_t, self.objective.model_time(timesteps), record)

    def loss(self, x0: torch.Tensor, cond: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor,
             unet: nn.Module | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example denoising loss mean((model(x_t, t, c) − target)²) over all but the batch dimension, float32:
        the family's training objective, with diffusers' own arithmetic for x_t and the target. weight: a per-element
        weight broadcast over x0's shape (a query's region mask at the latent resolution, of mean 1)."""
        x_t = self.noisy(x0, noise, timesteps)
        pred = self.predict(x_t, timesteps, cond, unet)
        squared = (pred.float() - self.target(x0, noise, timesteps).float()).pow(2)
        losses = (squared if weight is None else squared * weight).flatten(1).mean(1)
        per_time = self.objective.weight(timesteps)
        return losses if per_time is None else losses * per_time

    # -------------------------------------------------------------------------------------- parameter groups (§3)
    def parameter_group(self, group: str = "kv") -> dict[str, nn.Parameter]:
        """Denoiser parameters of a named group of the family ('kv', 'cross-attention', 'attention', 'all', 'lora':
        models/family.py) or matching a regex."""
        groups = self.family.parameter_groups()
        if group == "changed":  # models.changed: the group is resolved against a base model, into a regex
            raise SettingsError("parameter group 'changed' needs the model the fine-tune started from: give "
                                "--base-model")
        pattern = groups.get(group, group)
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise SettingsError(f"parameter group {group!r} is neither one of {sorted(groups)} nor a valid "
                             f"regex ({error})") from None
        selected = {name: p for name, p in self.unet.named_parameters() if regex.search(name)}
        if not selected:
            raise SettingsError(f"parameter group {group!r} matches no {self.family.name} denoiser parameter (e.g. "
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
        family = json.dumps(self.family.describe(), sort_keys=True) if self.family.name != "unet" else ""
        return {"unet": part(self.unet), "vae": part(self.vae, f"resolution {self.resolution}"),
                "text_encoder": part(self.text.encoder if self.text is not None else None,
                                     json.dumps(vocabulary) if isinstance(vocabulary, list) else ""),
                "scheduler": hashlib.sha256((_config_repr(self.scheduler.config) + family).encode()).hexdigest()[:16]}

    def fingerprint(self, parts: dict[str, str] | None = None) -> str:
        """One hash of every weight and config of the model: of its parts' fingerprints (pass them if already known)."""
        return fingerprint_of(parts or self.fingerprints())

    # ------------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompts: list[str] | str, seed: int | list[int] = SamplingSettings.seed,
                 steps: int = SamplingSettings.steps, guidance: float = SamplingSettings.guidance,
                 progress: bool = False) -> np.ndarray:
        """Deterministic sampling with classifier-free guidance → uint8 images (B, H, W, 3), as the family samples
        (DDIM, eta 0, for a UNet; the pipeline's own sampler otherwise).

        ``seed`` is one per prompt, or one for all: each row's starting noise comes from its own generator, so a
        (prompt, seed) pair gives the same image alone or in a batch (to one grey level where a pipeline's batched
        kernels round differently: SDXL's), and the same bits every time. progress: a bar over the sampling steps.
        """
        from .finite import require_finite

        guidance = require_finite(guidance, "guidance")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = [seed] * len(prompts) if isinstance(seed, int) else list(seed)
        if len(seeds) != len(prompts):
            raise ValueError(f"generate: {len(seeds)} seeds for {len(prompts)} prompts")
        return self.family.generate(self, prompts, seeds, steps, guidance, progress=progress)

    # ------------------------------------------------------------------------------------------------ persistence
    def save(self, folder: str, training_record: dict | None = None) -> None:
        from .folder import save_model_folder

        save_model_folder(self, folder, training_record)

    @classmethod
    def load(cls, folder: str = "default", device: str | torch.device = "cpu", variant: str | None = None,
             config: str | None = None) -> "DiffusionModel":
        """A model folder of any family (``"default"`` = the shipped tiny emoji model) in eval mode; bad folders
        raise models.folder.ModelFolderError naming the part, and weights holding NaN or inf raise its subclass
        models.finite.DamagedWeightsError naming the file and the tensor. variant: the weights diffusers'
        save_pretrained(..., variant="fp16") wrote (<name>.fp16.safetensors), read in float32 like any other; a folder
        holding only such files needs it. A Stable Diffusion single-file checkpoint (``folder`` a .safetensors file
        in the original layout) needs config: a local diffusers pipeline folder whose configs describe it
        (models/single_file.py)."""
        from .families import load_parts
        from .finite import check_model_finite
        from .folder import ModelFolderError, loading
        from .single_file import is_single_file, load_single_file

        if is_single_file(folder):
            if variant is not None:
                raise ModelFolderError(f"--variant {variant}: {folder} is a single-file checkpoint, read as it is "
                                       "saved (--variant picks among a model folder's weight files)")
            parts, where = load_single_file(folder, config, device), folder
        elif config is not None:
            raise ModelFolderError(f"--model-config {config}: only a single-file checkpoint needs one; {folder} is a "
                                   "model folder, read with its own configs")
        else:
            parts, where = load_parts(folder, device, variant)
        with loading(where, "model"):  # e.g. a scheduler whose prediction type is not supported
            model = cls(**parts).eval()
        check_model_finite(model, where)
        model.folder = folder  # what the report names it by
        model.variant = variant  # recorded with the work directory's sources, so later commands reopen the same files
        model.model_config = config  # likewise: a single file's config folder
        return model

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
