"""A Stable Diffusion pipeline's weights as ONE safetensors file in the original (LDM / CompVis) key layout, the way
single-file checkpoints are distributed: the reverse of diffusers' own conversion, which is not installed.

    ldm_state_dict(pipe) -> {ldm key: tensor}    write_ldm_checkpoint(pipe, path) -> path

    diffusers part    LDM prefix                              diffusers' conversion back (loaders/single_file_utils.py)
    unet              model.diffusion_model.                  convert_ldm_unet_checkpoint(checkpoint, unet.config)
    vae               first_stage_model.                      convert_ldm_vae_checkpoint(checkpoint, vae.config)
    text_encoder      cond_stage_model.transformer.text_model.  convert_ldm_clip_checkpoint(checkpoint)

The UNet's layout (openaimodel.py): input_blocks.0 is conv_in; then, for down block b and layer l, input_blocks.k with
k = 1 + b·(L+1) + l (L = layers_per_block) holds the resnet at .0 and the cross-attention at .1, and the block's
downsampler sits alone at k = 1 + b·(L+1) + L, as .0.op; middle_block.0/.1/.2 = resnet, attention, resnet; output
block k = b·(L+1) + l holds up block b's resnet l at .0, its attention at .1, and the upsampler after the last layer (at
.1 without attention, .2 with). The VAE's (ldm/modules/diffusionmodules/model.py): encoder.down.i.block.j,
encoder.down.i.downsample; decoder.up is numbered from the bottom (diffusers' up block i is up.{n-1-i}); mid.block_1,
mid.attn_1, mid.block_2; the attention's q/k/v/proj_out are 1×1 convolutions. CLIP's keys are transformers' own under
the prefix. tests/models/test_single_file.py checks this mapping by running diffusers' conversion back on it.
"""
from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_TOP = {"conv_norm_out": "norm_out"}  # conv_in, conv_out, quant_conv and post_quant_conv keep their names
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    layer, _, tail = rest.rpartition(".")
    return f"{_UNET_RESNET[layer]}.{tail}"


def unet_key(key: str, config) -> str:
    """A diffusers UNet2DConditionModel key → its LDM key (without the prefix)."""
    per_block = config["layers_per_block"] + 1
    with_attention = [kind.startswith("CrossAttn") for kind in config["up_block_types"]]
    for name, ldm in _UNET_TOP.items():
        if key.startswith(name + "."):
            return ldm + key[len(name):]
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = 1 + block * per_block + layer
        return f"input_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"input_blocks.{1 + int(match[1]) * per_block + per_block - 1}.0.op.{match[2]}"
    if match := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, layer, rest = match[1], int(match[2]), match[3]
        return f"middle_block.{2 * layer}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = block * per_block + layer
        return f"output_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        block = int(match[1])
        return f"output_blocks.{block * per_block + per_block - 1}.{2 if with_attention[block] else 1}.conv.{match[2]}"
    raise KeyError(f"no LDM name for UNet tensor {key!r}")


def vae_key(key: str, config) -> tuple[str, bool]:
    """A diffusers AutoencoderKL key → (its LDM key without the prefix, whether LDM stores it as a 1×1 convolution)."""
    levels = len(config["up_block_types"])
    side, _, rest = key.partition(".")
    for name, ldm in _VAE_TOP.items():
        if rest.startswith(name + "."):
            return f"{side}.{ldm}{rest[len(name):]}", False
    if match := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        return f"{side}.down.{match[1]}.block.{match[2]}.{match[3].replace('conv_shortcut', 'nin_shortcut')}", False
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", rest):
        return f"{side}.down.{match[1]}.downsample.conv.{match[2]}", False
    if match := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        level = levels - 1 - int(match[1])
        return f"{side}.up.{level}.block.{match[2]}.{match[3].replace('conv_shortcut', 'nin_shortcut')}", False
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", rest):
        return f"{side}.up.{levels - 1 - int(match[1])}.upsample.conv.{match[2]}", False
    if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        return f"{side}.mid.block_{int(match[1]) + 1}.{match[2].replace('conv_shortcut', 'nin_shortcut')}", False
    if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest):
        layer = _VAE_ATTENTION[match[1]]
        return f"{side}.mid.attn_1.{layer}.{match[2]}", layer != "norm" and match[2] == "weight"
    return key, False  # conv_in, conv_out, quant_conv, post_quant_conv


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """Every weight of a StableDiffusionPipeline (UNet, VAE, CLIP text encoder) under its LDM name, as fresh
    contiguous tensors (safetensors stores no shared memory)."""
    out = {}
    for key, tensor in pipe.unet.state_dict().items():
        out[UNET_PREFIX + unet_key(key, pipe.unet.config)] = tensor.detach().clone().contiguous()
    for key, tensor in pipe.vae.state_dict().items():
        name, as_conv = vae_key(key, pipe.vae.config)
        tensor = tensor.detach().clone()
        out[VAE_PREFIX + name] = (tensor[:, :, None, None] if as_conv else tensor).contiguous()
    for key, tensor in pipe.text_encoder.state_dict().items():
        # transformers ≥ 5.6 flattened CLIPTextModel (no text_model. level); the LDM name always has it.
        out[CLIP_PREFIX + key.removeprefix("text_model.")] = tensor.detach().clone().contiguous()
    if len(out) != sum(len(part.state_dict()) for part in (pipe.unet, pipe.vae, pipe.text_encoder)):
        raise AssertionError("two diffusers tensors were given the same LDM name")
    return out


def write_ldm_checkpoint(pipe, path) -> str:
    import safetensors.torch

    safetensors.torch.save_file(ldm_state_dict(pipe), str(path))
    return str(path)
