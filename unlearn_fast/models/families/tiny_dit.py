"""Our tiny DiT: a PixArt-style transformer (PixArtTransformer2DModel, cross-attention to the text) on the default
latents, trained with flow matching, with the default model's word-level text encoder. It is what lets the
ground-truth benchmarks run on a transformer trained with flow matching on a 2-core CPU (models/tiny.py builds it).
Every token is attended to (no mask), as the default UNet does."""
from __future__ import annotations

import torch

from ..family import Family, starting_noise
from ..finite import image_bytes
from ..folder import loading, require_parts, weight_options
from .unet import _load_text_side

PIPELINE_NAME = "UnlearnFastDiTPipeline"


class TinyDiTFamily(Family):
    """Cross-attention groups as a UNet's (attn2.to_k / to_v read the text); Euler sampling of the flow."""

    name = "tiny-dit"
    saved_as = PIPELINE_NAME

    def call(self, denoiser, x_t, time, record):
        return denoiser(x_t, encoder_hidden_states=record["tokens"], timestep=time,
                        added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]

    def generate(self, model, prompts, seeds, steps, guidance, progress=False):
        from diffusers import FlowMatchEulerDiscreteScheduler

        sampler = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler.config)
        sampler.set_timesteps(steps, device=model.device)
        x = starting_noise(model, seeds)
        cond, uncond = model.encode_text(prompts), model.encode_text([""] * len(prompts))
        record = model.conditioning_layout.unpack(torch.cat([uncond, cond]))
        for t in self.sampling_steps(sampler.timesteps, progress):
            time = t.expand(2 * len(prompts)).to(x.dtype)
            pred_uncond, pred_cond = self.call(model.unet, torch.cat([x, x]), time, record).chunk(2)
            x = sampler.step(pred_uncond + guidance * (pred_cond - pred_uncond), t, x).prev_sample
        return image_bytes(model.decode(x).permute(0, 2, 3, 1).cpu().numpy(), prompts, seeds)


def load(folder: str, index: dict, device, variant: str | None = None) -> dict:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, PixArtTransformer2DModel

    require_parts(folder, index, ("transformer", "vae", "scheduler", "text_encoder", "tokenizer"))
    with loading(folder, "transformer"):
        transformer = PixArtTransformer2DModel.from_pretrained(folder, subfolder="transformer", use_safetensors=True,
                                                               local_files_only=True, low_cpu_mem_usage=False,
                                                               **weight_options(variant))
    with loading(folder, "vae"):
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True, local_files_only=True,
                                            low_cpu_mem_usage=False, **weight_options(variant))
    with loading(folder, "scheduler"):
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler",
                                                                    local_files_only=True)
    return {"unet": transformer.to(device), "scheduler": scheduler, "vae": vae.to(device),
            "text": _load_text_side(folder, index, device, variant), "family": TinyDiTFamily()}
