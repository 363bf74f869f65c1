"""What differs between text-to-image families: how the denoiser is called, what it is conditioned on, which weights
read the text, and how it samples. One subclass per family (models/families/); DiffusionModel holds one.

Parameter groups (METHOD.md §3) are regexes over the denoiser's parameter names. "kv" means the weights that read
the text, per family:

    family              denoiser                       "kv": the text's keys and values
    SD 1.x/2.x, SDXL    UNet2DConditionModel           attn2.to_k / attn2.to_v (cross-attention)
    PixArt-Σ, Sana      PixArt/SanaTransformer2DModel  attn2.to_k / attn2.to_v (cross-attention)
    SD3, Flux           SD3/FluxTransformer2DModel     attn.add_k_proj / attn.add_v_proj (joint attention's text stream)

"lora" means a loaded LoRA adapter's A and B matrices (models/lora.py).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .finite import image_bytes

# "image": the image pathway, what reads the picture and not the text: convolutions, self-attention and the
# feed-forward layers of the image tokens (weights only). A concept a full fine-tune or a LoRA learnt sits there as
# much as in the cross-attention K/V (issue 28).
UNET_GROUPS = {
    "kv": r"\.attn2\.to_[kv]\.weight$",
    "cross-attention": r"\.attn2\.",
    "attention": r"\.attn[12]\.",
    "image": r"((^|\.)conv(_in|_out|_shortcut|\d*)|\.attn1\.to_(q|k|v|out\.0)|\.ff\.(net\.(0\.proj|2)|conv_\w+))"
             r"\.weight$",
}
JOINT_ATTENTION_GROUPS = {
    "kv": r"\.attn\.add_[kv]_proj\.weight$",
    "cross-attention": r"\.attn\.(add_[qkv]_proj|to_add_out|norm_added_[qk])\.",
    "attention": r"\.attn\.",
    "image": r"(\.attn\.to_(q|k|v|out\.0)|\.ff\.net\.(0\.proj|2)|single_transformer_blocks\.\d+\.(proj_mlp|proj_out))"
             r"\.weight$",
}
COMMON_GROUPS = {"all": r".", "lora": r"\.lora_[AB]\."}


class Family:
    """The default: a UNet2DConditionModel read through `encoder_hidden_states` alone, sampled with DDIM (SD 1.x/2.x
    and the shipped tiny model); subclasses override what their family does differently."""

    name = "unet"
    groups = UNET_GROUPS
    saved_as = "UnlearnFastPipeline"  # model_index.json's _class_name when saved with our word-level text encoder

    def objective(self, scheduler):
        """The training objective of a model with this scheduler (models/objective.py)."""
        from .objective import objective_for

        return objective_for(scheduler)

    def parameter_groups(self) -> dict[str, str]:
        return {**self.groups, **COMMON_GROUPS}

    def call(self, denoiser, x_t: torch.Tensor, time: torch.Tensor, record: dict[str, torch.Tensor]) -> torch.Tensor:
        """The denoiser's prediction for x_t (B, C, h, w) at the model time `time` (B,), x_t's shape."""
        return denoiser(x_t, time, encoder_hidden_states=record["tokens"]).sample

    def describe(self) -> dict:
        return {"family": self.name}

    def latent_multiple(self, denoiser) -> int:
        """The latent sides the denoiser takes are multiples of this: a transformer's patch size (a UNet: 1, its
        up-blocks follow any size)."""
        return int(getattr(denoiser.config, "patch_size", None) or 1)

    def at_resolution(self, resolution: int) -> None:
        """The images are `resolution` px square from now on (a family whose conditioning states the size follows)."""

    # ------------------------------------------------------------------------------------------------- sampling
    @staticmethod
    def sampling_steps(timesteps, progress: bool):
        """The sampler's timesteps, under a progress bar (rate, ETA) when `progress`."""
        return tqdm(timesteps, desc="generate", unit="step", disable=not progress, leave=False)

    def generate(self, model, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                 progress: bool = False) -> np.ndarray:
        """uint8 (B, H, W, 3): DDIM (eta 0) with classifier-free guidance, each row from its own seed's noise (so a
        (prompt, seed) pair gives the same image alone or in a batch). progress: a bar over the sampling steps."""
        from diffusers import DDIMScheduler

        sampler = DDIMScheduler.from_config(model.scheduler.config, clip_sample=False, set_alpha_to_one=False)
        sampler.set_timesteps(steps)
        x = starting_noise(model, seeds) * sampler.init_noise_sigma
        cond = model.encode_text(prompts)
        uncond = model.encode_text([""] * len(prompts))
        for t in self.sampling_steps(sampler.timesteps, progress):
            timestep = torch.full((len(prompts),), int(t), device=model.device, dtype=torch.long)
            if guidance == 1.0:
                pred = model.predict(x, timestep, cond)
            else:
                both = model.predict(torch.cat([x, x]), torch.cat([timestep, timestep]), torch.cat([uncond, cond]))
                pred_uncond, pred_cond = both.chunk(2)
                pred = pred_uncond + guidance * (pred_cond - pred_uncond)
            x = sampler.step(pred, t, x).prev_sample
        return image_bytes(model.decode(x).permute(0, 2, 3, 1).cpu().numpy(), prompts, seeds)


class PipelineFamily(Family):
    """A family that samples through its diffusers pipeline (built over the model's own modules, so weights swapped
    into the denoiser are the ones it samples with)."""

    call_options: dict = {}  # extra keyword arguments of the pipeline call, per family

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def generate(self, model, prompts, seeds, steps, guidance, progress=False):
        self.pipeline.set_progress_bar_config(disable=not progress)  # diffusers' own bar
        images = self.pipeline(**self.pipeline_prompts(model, prompts, guidance),
                               latents=self.pipeline_latents(starting_noise(model, seeds)), num_inference_steps=steps,
                               guidance_scale=guidance, height=model.resolution, width=model.resolution,
                               output_type="np", **self.call_options).images
        return image_bytes(images, prompts, seeds)

    def pipeline_prompts(self, model, prompts: list[str], guidance: float) -> dict:
        return {"prompt": list(prompts)}

    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


def starting_noise(model, seeds: list[int]) -> torch.Tensor:
    """(B, *latent_shape) standard normal, row b from a generator seeded with seeds[b]."""
    return torch.stack([torch.randn(model.latent_shape, generator=torch.Generator().manual_seed(s))
                        for s in seeds]).to(model.device)
