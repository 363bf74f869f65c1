"""Tiny random diffusers pipelines of six families, built offline (no weights, no tokenizer downloads).

    build_pipeline_folder(family, folder, words, seed=0) -> folder     (pipe.save_pretrained(folder, safetensors))
    run_pipeline(family, folder, prompt) -> (1, 32, 32, 3) float array  (a 2-step generation, output_type="np")

family          pipeline                     denoiser (on 8x8 latents)              text side
"sd"            StableDiffusionPipeline      UNet2DConditionModel (4 ch)            CLIPTextModel
"sdxl"          StableDiffusionXLPipeline    UNet2DConditionModel text_time (4 ch)  CLIPTextModel + CLIPTextModelWithProjection
"pixart-sigma"  PixArtSigmaPipeline          PixArtTransformer2DModel (4 -> 8 ch)   T5EncoderModel
"sana"          SanaPipeline                 SanaTransformer2DModel (4 ch, DC-AE)   Gemma2Model
"sd3"           StableDiffusion3Pipeline     SD3Transformer2DModel (16 ch)          2 x CLIPTextModelWithProjection + T5
"flux"          FluxPipeline                 FluxTransformer2DModel (16 ch packed)  CLIPTextModel (pooled) + T5

All images are 32x32 RGB; every VAE (AutoencoderKL with 3 levels, AutoencoderDC with 3 stages) compresses 4x, so
latents are 8x8. Hidden sizes 8-48, 1-2 layers, 2-4 heads. Configs follow diffusers' own pipeline tests
(tests/pipelines/*/test_*.py get_dummy_components), resized; scheduler configs follow the real checkpoints'.

Tokenizers are the transformers classes the real folders use, built here from `words`:
  * CLIPTokenizer from a vocab.json + merges.txt written here: the 256 byte-level characters, the same with "</w>",
    then the tokens of merges learnt on `words` by a small deterministic BPE (greedy most-frequent pair, ties by
    the pair itself), then <|startoftext|>, <|endoftext|>. Every piece that CLIP's pre-tokenizer cuts out of a word
    of `words` becomes ONE token; anything else still maps to known ids (byte-level characters).
  * T5Tokenizer (transformers 5: the tokenizers-backed class, = T5TokenizerFast) from a Unigram vocabulary:
    <pad>, </s>, <unk>, "▁", "▁"+word for every word (score -1), every character of the words (score -5);
    extra_ids=0 (no sentinels: no pipeline uses them). Case-sensitive like T5.
  * GemmaTokenizer (= GemmaTokenizerFast) from a byte-fallback BPE: <pad> <eos> <bos> <unk> <mask>, the 256 <0xNN>
    byte tokens, the characters, merges learnt on word and "▁"+word; add_bos_token=True like Gemma.
  A `tokenizers` WordLevel model is not used: in transformers 5, T5Tokenizer/GemmaTokenizer.from_pretrained rebuild
  their own Unigram/BPE model from tokenizer.json's vocabulary, so a WordLevel tokenizer.json would not round-trip.
"""
from __future__ import annotations

import json
import pathlib
from collections import Counter

import numpy as np
import torch

FAMILIES = ("sd", "sdxl", "pixart-sigma", "sana", "sd3", "flux")
PIPELINE_CLASS = {
    "sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "pixart-sigma": "PixArtSigmaPipeline",
    "sana": "SanaPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
}
IMAGE_SIZE = 32
LATENT_SIZE = 8
LATENT_CHANNELS = {"sd": 4, "sdxl": 4, "pixart-sigma": 4, "sana": 4, "sd3": 16, "flux": 16}
# CLIP's model_max_length: SD/SDXL's scripts tokenize to tokenizer.model_max_length, so 16 is faithful; the SD3 and
# Flux scripts hard-code max_length=77 for their CLIP tokenizers, so those folders keep CLIP's real 77.
CLIP_MAX_LENGTH = {"sd": 16, "sdxl": 16, "sd3": 77, "flux": 77}
# T5 / Gemma: padding length used by encode_prompt(max_sequence_length=...) in run_pipeline and the tests.
MAX_SEQUENCE_LENGTH = 16


# ----------------------------------------------------------------------------------------------------- tokenizers
def byte_alphabet() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _split_words(words) -> list[str]:
    out = []
    for entry in words:
        out.extend(str(entry).split())
    return sorted(set(out))


def _learn_merges(sequences: list[list[str]]) -> list[tuple[str, str]]:
    """Greedy BPE until every sequence is one symbol: merge the most frequent adjacent pair (ties: smallest pair)
    everywhere, left to right. Deterministic; applying the merges in this order reproduces the segmentation."""
    seqs = [list(s) for s in sorted({tuple(s) for s in sequences}) if len(s) > 1]
    merges = []
    while seqs:
        counts = Counter(p for s in seqs for p in zip(s, s[1:]))
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        merged = []
        for s in seqs:
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            if len(out) > 1:
                merged.append(out)
        seqs = merged
    return merges


def make_clip_tokenizer(words, directory, model_max_length: int):
    """A CLIPTokenizer over byte-level BPE whose merges turn every (pre-tokenized) word of `words` into one token."""
    import transformers

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = byte_alphabet()
    base = {c: i for i, c in enumerate(alphabet)}
    base.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    probe = transformers.CLIPTokenizer(vocab=dict(base, **{"<|startoftext|>": len(base),
                                                          "<|endoftext|>": len(base) + 1}), merges=[])
    backend = probe.backend_tokenizer
    sequences = []
    for word in _split_words(words):
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(word)):
            symbols = list(piece)
            symbols[-1] += "</w>"
            sequences.append(symbols)
    merges = _learn_merges(sequences)
    vocab = dict(base)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                          encoding="utf-8")
    return transformers.CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"),
                                      model_max_length=model_max_length)


def make_t5_tokenizer(words, model_max_length: int = 512):
    import transformers

    words = _split_words(words)
    chars = sorted({c for w in words for c in w})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in words]
    vocab += [(c, -5.0) for c in chars if c != "▁"]
    return transformers.T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def make_gemma_tokenizer(words, model_max_length: int = 512):
    import transformers

    words = _split_words(words)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for c in ["▁"] + sorted({c for w in words for c in w}):
        vocab.setdefault(c, len(vocab))
    merges = _learn_merges([list(w) for w in words] + [list("▁" + w) for w in words])
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return transformers.GemmaTokenizer(vocab=vocab, merges=[(a, b) for a, b in merges], add_bos_token=True,
                                       add_eos_token=False, model_max_length=model_max_length)


# ------------------------------------------------------------------------------------------------------ text models
def _clip_config(tokenizer, hidden: int, projection: int, max_length: int):
    import transformers

    vocab = tokenizer.get_vocab()
    return transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden + 5, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=max_length, projection_dim=projection, hidden_act="gelu",
        layer_norm_eps=1e-5, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"])


def _t5_encoder(tokenizer, d_model: int):
    import transformers

    config = transformers.T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model + 5, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0)
    return transformers.T5EncoderModel(config)


def _gemma2_encoder(tokenizer, hidden: int):
    import transformers

    config = transformers.Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager")
    return transformers.Gemma2Model(config)


# --------------------------------------------------------------------------------------------------------- VAEs
def _vae_kl(latent_channels: int, scaling_factor: float, shift_factor: float | None = None, quant_conv: bool = True):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=8, sample_size=IMAGE_SIZE, scaling_factor=scaling_factor,
        shift_factor=shift_factor, use_quant_conv=quant_conv, use_post_quant_conv=quant_conv)


def _vae_dc():
    from diffusers import AutoencoderDC

    return AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=4,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8, 16), decoder_block_out_channels=(8, 8, 16),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
        downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
        decoder_act_fns="silu", scaling_factor=0.41407)


# ---------------------------------------------------------------------------------------------------- families
def _build_sd(words, tmp, seed):
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    import transformers

    tokenizer = make_clip_tokenizer(words, tmp / "clip", CLIP_MAX_LENGTH["sd"])
    torch.manual_seed(seed)
    text_encoder = transformers.CLIPTextModel(_clip_config(tokenizer, 32, 32, CLIP_MAX_LENGTH["sd"]))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)
    torch.manual_seed(seed + 2)
    vae = _vae_kl(4, scaling_factor=0.18215)
    # SD-1.x betas; the real folders ship PNDMScheduler, the brief asks for DDPM (epsilon) - same betas either way.
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                              steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _build_sdxl(words, tmp, seed):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    import transformers

    n = CLIP_MAX_LENGTH["sdxl"]
    tokenizer = make_clip_tokenizer(words, tmp / "clip", n)
    tokenizer_2 = make_clip_tokenizer(words, tmp / "clip2", n)
    torch.manual_seed(seed)
    text_encoder = transformers.CLIPTextModel(_clip_config(tokenizer, 16, 16, n))            # CLIP-L stand-in
    torch.manual_seed(seed + 1)
    text_encoder_2 = transformers.CLIPTextModelWithProjection(_clip_config(tokenizer_2, 32, 32, n))  # OpenCLIP-G
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 1),
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,   # 6 time ids x 8 + pooled text_encoder_2 (32)
        cross_attention_dim=16 + 32,                        # the two encoders' penultimate states, concatenated
        norm_num_groups=8)
    torch.manual_seed(seed + 3)
    vae = _vae_kl(4, scaling_factor=0.13025)
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", prediction_type="epsilon", steps_offset=1,
                                       timestep_spacing="leading", interpolation_type="linear")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)


def _build_pixart(words, tmp, seed):
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    tokenizer = make_t5_tokenizer(words)
    torch.manual_seed(seed)
    text_encoder = _t5_encoder(tokenizer, 32)
    torch.manual_seed(seed + 1)
    transformer = PixArtTransformer2DModel(
        sample_size=LATENT_SIZE, num_layers=2, patch_size=2, attention_head_dim=16, num_attention_heads=2,
        in_channels=4, out_channels=8,          # learned sigma: 4 eps channels + 4 variance channels
        caption_channels=32, cross_attention_dim=32, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    torch.manual_seed(seed + 2)
    vae = _vae_kl(4, scaling_factor=0.13025)    # PixArt-Sigma uses the SDXL VAE
    # scripts/convert_pixart_sigma_to_diffusers.py ships DPMSolverMultistepScheduler() (linear 1e-4..0.02, epsilon)
    scheduler = DPMSolverMultistepScheduler()
    return PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                               scheduler=scheduler)


def _build_sana(words, tmp, seed):
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    tokenizer = make_gemma_tokenizer(words)
    torch.manual_seed(seed)
    text_encoder = _gemma2_encoder(tokenizer, 16)
    torch.manual_seed(seed + 1)
    transformer = SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
        sample_size=LATENT_SIZE, patch_size=1)
    torch.manual_seed(seed + 2)
    vae = _vae_dc()
    # convert_sana_to_diffusers.py: flow-euler = FlowMatchEulerDiscreteScheduler(shift=3.0) at <=2K px
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                        scheduler=scheduler)


def _build_sd3(words, tmp, seed):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    import transformers

    n = CLIP_MAX_LENGTH["sd3"]
    tokenizer = make_clip_tokenizer(words, tmp / "clip", n)
    tokenizer_2 = make_clip_tokenizer(words, tmp / "clip2", n)
    tokenizer_3 = make_t5_tokenizer(words)
    torch.manual_seed(seed)
    text_encoder = transformers.CLIPTextModelWithProjection(_clip_config(tokenizer, 16, 16, n))
    torch.manual_seed(seed + 1)
    text_encoder_2 = transformers.CLIPTextModelWithProjection(_clip_config(tokenizer_2, 16, 16, n))
    torch.manual_seed(seed + 2)
    text_encoder_3 = _t5_encoder(tokenizer_3, 48)    # CLIP states (16 + 16) are zero-padded to T5's width 48
    torch.manual_seed(seed + 3)
    transformer = SD3Transformer2DModel(
        sample_size=LATENT_SIZE, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=48, caption_projection_dim=32, pooled_projection_dim=16 + 16,
        pos_embed_max_size=16)
    torch.manual_seed(seed + 4)
    vae = _vae_kl(16, scaling_factor=1.5305, shift_factor=0.0609, quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                    tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                                    text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)


def _build_flux(words, tmp, seed):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    import transformers

    n = CLIP_MAX_LENGTH["flux"]
    tokenizer = make_clip_tokenizer(words, tmp / "clip", n)
    tokenizer_2 = make_t5_tokenizer(words)
    torch.manual_seed(seed)
    text_encoder = transformers.CLIPTextModel(_clip_config(tokenizer, 32, 32, n))   # only its pooler_output is used
    torch.manual_seed(seed + 1)
    text_encoder_2 = _t5_encoder(tokenizer_2, 32)
    torch.manual_seed(seed + 2)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16 * 4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True,                   # FLUX.1-dev (the guidance-distilled model the scripts fine-tune)
        axes_dims_rope=(4, 4, 8))
    torch.manual_seed(seed + 3)
    vae = _vae_kl(16, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False)
    # FLUX.1-dev's scheduler_config.json
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


_BUILDERS = {"sd": _build_sd, "sdxl": _build_sdxl, "pixart-sigma": _build_pixart, "sana": _build_sana,
             "sd3": _build_sd3, "flux": _build_flux}


def build_pipeline(family: str, words, seed: int = 0, workdir=None):
    """The pipeline object itself (random weights, deterministic in `seed`; the global RNG is left untouched)."""
    import tempfile

    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    with tempfile.TemporaryDirectory() as scratch, torch.random.fork_rng(devices=[]):
        pipe = _BUILDERS[family](list(words), pathlib.Path(workdir or scratch), seed)
    for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.eval()
    return pipe


def build_pipeline_folder(family: str, folder, words: list[str], seed: int = 0) -> pathlib.Path:
    """Write a complete diffusers pipeline folder of `family` (pipe.save_pretrained, safetensors) and return it."""
    folder = pathlib.Path(folder)
    pipe = build_pipeline(family, words, seed)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    # The size these weights are meant for (Flux's transformer has no sample_size: the pipeline default is 1024 px).
    (folder / "training.json").write_text(json.dumps({"resolution": IMAGE_SIZE, "weights": "random (tests)"}))
    return folder


def pipeline_class(family: str):
    import diffusers

    return getattr(diffusers, PIPELINE_CLASS[family])


def load_pipeline(family: str, folder):
    return pipeline_class(family).from_pretrained(str(folder), local_files_only=True)


def generation_kwargs(family: str) -> dict:
    """Keyword arguments of a 2-step, 32x32 generation (CFG on where the family has it)."""
    kwargs = dict(num_inference_steps=2, height=IMAGE_SIZE, width=IMAGE_SIZE, output_type="np")
    if family in ("sd", "sdxl", "sd3", "pixart-sigma", "sana"):
        kwargs["guidance_scale"] = 5.0
    if family in ("pixart-sigma", "sana", "sd3", "flux"):
        kwargs["max_sequence_length"] = MAX_SEQUENCE_LENGTH
    if family in ("pixart-sigma", "sana"):
        kwargs["use_resolution_binning"] = False
        kwargs["clean_caption"] = False              # PixArt's default True needs bs4 + ftfy
    if family == "sana":
        kwargs["complex_human_instruction"] = None   # the default prepends a ~300-token instruction
    if family == "flux":
        kwargs["guidance_scale"] = 3.5               # the guidance embedding of FLUX.1-dev, not CFG
    return kwargs


def run_pipeline(family: str, folder, prompt: str, seed: int = 0, pipe=None) -> np.ndarray:
    """Load the folder with diffusers (unless `pipe` is given) and generate one 2-step image: (1, 32, 32, 3) in [0, 1]."""
    pipe = pipe if pipe is not None else load_pipeline(family, folder)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        return pipe(prompt, generator=generator, **generation_kwargs(family)).images
