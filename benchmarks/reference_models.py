"""Random-init UNets of the sizes the AbU paper attributes (cost does not depend on the weights), shared by the suites.

The MSCOCO UNet is probes/gpu_probe.py's and probes/fisher_probe.py's config (../shared/ANCHORS.md measured with it):
57.4 M parameters, 7.1 M of them cross-attention K/V, 16x16x4 latents (128 px images), 77 x 1024 text.
"""
import torch

MSCOCO_TEXT = (77, 1024)


def mscoco_unet() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
        cross_attention_dim=MSCOCO_TEXT[1], down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=8)


def mscoco_model(device="cpu", seed: int = 0):
    """The MSCOCO UNet as a DiffusionModel (DDPM, 1,000 steps, epsilon prediction; no VAE or text side needed)."""
    from diffusers import DDPMScheduler

    from unlearn_fast.models.adapter import DiffusionModel

    torch.manual_seed(seed)
    return DiffusionModel(mscoco_unet().to(device).eval(), DDPMScheduler(num_train_timesteps=1000), text=None)


def forward_flops(unet: torch.nn.Module, latent_shape, text_shape, device) -> float:
    """FLOPs of one image's forward pass (torch's FlopCounterMode: matmuls and convolutions, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, *latent_shape, device=device)
    cond = torch.randn(2, *text_shape, device=device)
    t = torch.tensor([10, 500], device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=cond)
    return counter.get_total_flops() / 2
