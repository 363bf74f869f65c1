"""The default model: a miniature Stable Diffusion, made of the same diffusers parts, sized for a 2-core CPU.

32×32×3 images ─ AutoencoderKL (16/32/64 channels, 3 levels) ─ 8×8×4 latents
prompts ─ WordTokenizer ─ WordTextEncoder (64-d, 2 layers) ─ 16×64 conditioning
UNet2DConditionModel on 8×8×4: 32/64/64 channels, cross-attention at 8×8 and 4×4 (none at 2×2), 1 layer per block
DDPMScheduler: 1,000 steps, epsilon prediction, cosine (squaredcos_cap_v2) schedule

Why these sizes (probed on the 2-core CPU, torch 2.13, randomly initialised): this UNet (1.49 M parameters, 45 k
cross-attention K/V weights) took 0.40 s for a training step of 128 and ran ≈ 890 img/s forward; 48/96/96 channels
(3.3 M parameters) took 0.67 s per step and 32×32 pixels would need 4× the spatial work. So the shipped recipe
(1,200 VAE + 4,000 diffusion steps) costs ≈ 30 minutes on an idle machine (benchmarks/README.md), and a scoring pass
over the default set stays in minutes. Self-attention runs at 8×8 and 4×4 only: ANCHORS.md measured a 32×32-pixel UNet
with attention at every level at 14.3 s per step against 0.8 s with attention at 8×8 only. All weights together are
9.3 MB in float32.
"""
from __future__ import annotations

from diffusers import (AutoencoderKL, DDPMScheduler, FlowMatchEulerDiscreteScheduler, PixArtTransformer2DModel,
                       UNet2DConditionModel)

from .adapter import DiffusionModel
from .families.tiny_dit import TinyDiTFamily
from .text_encoder import WordTextEncoder, WordTokenizer
from .text_side import TextSide, word_text_side

IMAGE_SIZE = 32
TEXT_DIM = 64
MAX_PROMPT_WORDS = 16


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )


def tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,  # diffusers reads this as the number of heads for these blocks
        norm_num_groups=16,
    )


def tiny_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                         clip_sample=False)


def tiny_text_side(captions) -> TextSide:
    tokenizer = WordTokenizer.from_captions(captions, max_length=MAX_PROMPT_WORDS)
    encoder = WordTextEncoder(len(tokenizer), max_length=MAX_PROMPT_WORDS, dim=TEXT_DIM, pad_id=tokenizer.pad_id)
    return word_text_side(tokenizer, encoder)


def tiny_dit() -> PixArtTransformer2DModel:
    """A PixArt-style DiT on the same 8×8×4 latents: 2×2 patches (16 tokens), 4 blocks of 64-d self-attention,
    cross-attention to the 64-d text and an MLP, adaLN-single time conditioning (0.32 M parameters; a forward of 128
    rows took 0.05 s on the 2-core CPU)."""
    return PixArtTransformer2DModel(sample_size=IMAGE_SIZE // 4, patch_size=2, in_channels=4, out_channels=4,
                                    num_layers=4, attention_head_dim=16, num_attention_heads=4,
                                    cross_attention_dim=TEXT_DIM, caption_channels=TEXT_DIM, norm_num_groups=1,
                                    norm_type="ada_norm_single", use_additional_conditions=False)


def tiny_flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


ARCHITECTURES = ("unet", "dit")


def new_tiny_model(captions, vae: AutoencoderKL | None = None, architecture: str = "unet") -> DiffusionModel:
    """A freshly initialised default-size model whose vocabulary covers ``captions``: the UNet with the DDPM
    objective (the default), or the tiny DiT with flow matching ("dit")."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if architecture == "dit":
        return DiffusionModel(tiny_dit(), tiny_flow_scheduler(), tiny_text_side(captions), vae=vae or tiny_vae(),
                              resolution=IMAGE_SIZE, family=TinyDiTFamily())
    return DiffusionModel(tiny_unet(), tiny_scheduler(), tiny_text_side(captions), vae=vae or tiny_vae())
