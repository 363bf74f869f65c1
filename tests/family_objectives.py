"""What diffusers' official training scripts compute as the per-example loss, for each family - a reference written
straight from the scripts, independent of unlearn_fast's own objective code.

    official_training_loss(family, pipe, latents, prompts, noise, schedule_indices, ...) -> (B,) float32

Line numbers refer to huggingface/diffusers at commit 58eb52c0803ea9af3abec60841c2a093bdf1f951 (setup.py there says
0.40.0.dev0; the pipelines called here are the installed diffusers 0.42.1). The scripts themselves are not part of
the pip package.

Common to all families
  * `latents` are the already-scaled model inputs x0: (vae.encode(x).latent_dist.sample() [- shift_factor]) *
    scaling_factor - the scripts' `latents` / `model_input`; `noise` is their `torch.randn_like(...)` (no
    noise_offset / input_perturbation: both default 0).
  * `schedule_indices` (B,) integers:
      DDPM families (sd, sdxl, pixart-sigma): the integer timesteps t in [0, 999] themselves (the scripts'
        `timesteps = torch.randint(0, num_train_timesteps, (bsz,))`).
      flow-matching families (sana, sd3, flux): the scripts' `indices = (u * num_train_timesteps).long()` in
        [0, 999]; timesteps = scheduler.timesteps[indices], sigmas = scheduler.sigmas[indices] (looked up the scripts'
        way, `get_sigmas`: position of each timestep in scheduler.timesteps). Index 0 is t = 1000, sigma = 1 (noise).
  * The training scheduler is a FRESH instance built from the pipeline scheduler's config, as the scripts'
    `DDPMScheduler.from_pretrained(..., subfolder="scheduler")` / `FlowMatchEulerDiscreteScheduler.from_pretrained`
    (+ deepcopy `noise_scheduler_copy`); the pipeline's own scheduler is not used, because a generation calls
    set_timesteps on it, which replaces its timesteps/sigmas by the inference ones. For SDXL this means DDPM betas
    built from an EulerDiscreteScheduler config, exactly as the SDXL script does.
  * Per-example loss = mean over all but the batch dim of (weighting * (model_pred.float() - target.float())**2),
    which is the scripts' `loss.mean(dim=list(range(1, ndim)))` / `torch.mean((...).reshape(B, -1), 1)` before the
    final batch `.mean()`. Weighting is uniform (1) throughout:
      sd/sdxl/pixart: `--snr_gamma` default None -> plain F.mse_loss (Min-SNR weighting only when set);
      sana/flux: `--weighting_scheme` default "none" -> compute_loss_weighting_for_sd3 returns ones;
      sd3: `--weighting_scheme` default "logit_normal" -> also ones (logit_normal only changes how u is SAMPLED,
        which the caller's indices replace). But SD3's `--precondition_outputs` defaults to 1 (see below).
    Prior preservation (`--with_prior_preservation`, default off), DREAM and timestep-bias options are not modelled.
  * Text embeddings come from the pipeline's own `encode_prompt` with no CFG (do_classifier_free_guidance=False
    where the signature has it), num_images_per_prompt=1, clip_skip=None, lora_scale=None, prompt_2/prompt_3=None
    (= the same prompt for every encoder), max_sequence_length = `max_sequence_length` (default 16; the scripts'
    defaults are SD3 77, Flux 77 (train_dreambooth_flux.py) / 512 (pipeline), Sana 300, PixArt 120 in the PixArt
    script and 300 in PixArtSigmaPipeline), clean_caption=False, Sana complex_human_instruction=None (the Sana
    script's default; the pipeline's own default is a long instruction text). They are computed under no_grad,
    as the scripts do with frozen text encoders. The denoiser forward runs with autograd as the caller's context
    allows (wrap in torch.no_grad() for plain evaluation).
  Why encode_prompt equals the scripts' own text code: see family_objectives.md ("text").
"""
from __future__ import annotations

import re

import torch

FLOW_FAMILIES = ("sana", "sd3", "flux")
DDPM_FAMILIES = ("sd", "sdxl", "pixart-sigma")

# The Linear weights through which the denoiser reads the per-token text states (keys/values that image queries
# attend to), as parameter-name regexes on the denoiser (pipe.unet / pipe.transformer). Checked in the tests.
TEXT_KV_REGEX = {
    "sd": r"attn2\.to_[kv]\.weight$",
    "sdxl": r"attn2\.to_[kv]\.weight$",
    "pixart-sigma": r"^transformer_blocks\.\d+\.attn2\.to_[kv]\.weight$",
    "sana": r"^transformer_blocks\.\d+\.attn2\.to_[kv]\.weight$",
    "sd3": r"^transformer_blocks\.\d+\.attn\.add_[kv]_proj\.weight$",
    "flux": r"^transformer_blocks\.\d+\.attn\.add_[kv]_proj\.weight$",
}
# Every denoiser parameter that reads text (token states or pooled text) at its input, wider than TEXT_KV_REGEX.
TEXT_INPUT_REGEX = {
    "sd": r"attn2\.to_[kv]\.weight$",
    "sdxl": r"(attn2\.to_[kv]\.weight|^add_embedding\.linear_1\.(weight|bias))$",
    "pixart-sigma": r"(attn2\.to_[kv]\.weight|^caption_projection\.linear_1\.(weight|bias))$",
    "sana": r"(attn2\.to_[kv]\.weight|^caption_projection\.linear_1\.(weight|bias))$",
    "sd3": r"(^context_embedder\.(weight|bias)|^time_text_embed\.text_embedder\.linear_1\.(weight|bias))$",
    "flux": r"(^context_embedder\.(weight|bias)|^time_text_embed\.text_embedder\.linear_1\.(weight|bias))$",
}


def denoiser(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def text_kv_parameter_names(family: str, pipe) -> list[str]:
    pattern = re.compile(TEXT_KV_REGEX[family])
    return [n for n, _ in denoiser(pipe).named_parameters() if pattern.search(n)]


def _vae_scale_factor(vae) -> int:
    if hasattr(vae.config, "encoder_block_out_channels"):       # AutoencoderDC (Sana)
        return 2 ** (len(vae.config.encoder_block_out_channels) - 1)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def training_scheduler(family: str, pipe):
    """A fresh copy of the scheduler the family's script trains with, from the folder's scheduler config."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    cls = FlowMatchEulerDiscreteScheduler if family in FLOW_FAMILIES else DDPMScheduler
    return cls.from_config(dict(pipe.scheduler.config))


def _get_sigmas(scheduler, timesteps, n_dim, dtype, device):
    """The scripts' get_sigmas (train_dreambooth_sd3.py 1532-1541, same in the Flux/Sana scripts)."""
    sigmas = scheduler.sigmas.to(device=device, dtype=dtype)
    schedule_timesteps = scheduler.timesteps.to(device)
    timesteps = timesteps.to(device)
    step_indices = [(schedule_timesteps == t).nonzero().item() for t in timesteps]
    sigma = sigmas[step_indices].flatten()
    while len(sigma.shape) < n_dim:
        sigma = sigma.unsqueeze(-1)
    return sigma


def _per_example(model_pred, target, weighting=None):
    err = (model_pred.float() - target.float()) ** 2
    if weighting is not None:
        err = weighting.float() * err
    return torch.mean(err.reshape(target.shape[0], -1), 1)


def official_training_loss(family: str, pipe, latents: torch.Tensor, prompts: list[str], noise: torch.Tensor,
                           schedule_indices: torch.Tensor, *, max_sequence_length: int = 16,
                           precondition_outputs: bool = True, guidance_scale: float = 3.5,
                           original_size: tuple[int, int] | None = None,
                           crops_coords_top_left: tuple[int, int] = (0, 0),
                           target_size: tuple[int, int] | None = None) -> torch.Tensor:
    """The per-example training loss (B,) float32 of diffusers' official script for `family`.

    sd — examples/text_to_image/train_text_to_image.py 982-1038:
        noisy = DDPMScheduler.add_noise(x0, noise, t)                                   (990)
        encoder_hidden_states = text_encoder(input_ids)[0]                              (993) = encode_prompt(...)[0]
        target = noise (epsilon) | get_velocity(x0, noise, t) (v_prediction)            (1000-1005)
        model_pred = unet(noisy, t, encoder_hidden_states)                              (1020)
        loss = F.mse_loss(model_pred.float(), target.float())  (snr_gamma None)          (1022-1023)
    sdxl — examples/text_to_image/train_text_to_image_sdxl.py 1091-1164 (+ encode_prompt 502-541):
        same DDPM noising (1104), add_time_ids = original_size + crop_top_left + (resolution, resolution)
        (1107-1116), unet(noisy, t, prompt_embeds, added_cond_kwargs={"time_ids", "text_embeds": pooled})
        (1119-1128), targets epsilon / v / sample (1136-1146), plain MSE (1148-1149).
        original_size defaults to the pixel size of `latents` (h, w) * vae_scale_factor, target_size likewise (the
        script's args.resolution), crops to (0, 0) - i.e. an uncropped square training image.
    pixart-sigma — diffusers has no PixArt-Sigma text-to-image training script; the one PixArt trainer in the repo
        is examples/research_projects/pixart/train_pixart_controlnet_hf.py (PixArt-Alpha + ControlNet), lines
        1000-1049, whose objective for the transformer is used here without the ControlNet branch:
        DDPM noising (1005); T5 states with attention mask (1008-1009); target epsilon / v (1015-1020);
        added_cond_kwargs resolution/aspect_ratio only when transformer.config.sample_size == 128, else None
        (1023-1029); model_pred = transformer(noisy, encoder_hidden_states, encoder_attention_mask, timestep,
        added_cond_kwargs) (1032-1039); learned-sigma split: if out_channels // 2 == latent channels keep
        model_pred.chunk(2, dim=1)[0] (1042-1045) - the variance half gets no loss; plain MSE (1047-1048).
        (PixArt-Sigma's own repo trains the variance half too, with IDDPM's L_vlb; that is not what diffusers
        computes and is not modelled.)
    sana — examples/dreambooth/train_dreambooth_lora_sana.py 1224-1453:
        prompt_embeds, prompt_attention_mask = pipe.encode_prompt(prompt, max_sequence_length,
        complex_human_instruction) (1224-1228); timesteps = timesteps_schedule[indices], sigmas by get_sigmas
        (1410-1415); noisy = (1 - sigma) x0 + sigma noise (1416); model_pred = transformer(noisy,
        encoder_hidden_states, encoder_attention_mask, timestep=timesteps) (1419-1425) - raw timesteps in
        (0, 1000], no timestep_scale (the pipeline multiplies by transformer.config.timestep_scale, 1.0 here);
        target = noise - x0 (1432); weighting "none" -> 1 (1429); per-example mean (1449-1452).
    sd3 — examples/dreambooth/train_dreambooth_sd3.py 1587-1653 (train_dreambooth_lora_sd3.py 1734-1843 is
        identical here):
        timesteps / sigmas as above (1587-1592); noisy = (1 - sigma) x0 + sigma noise (1593); model_pred =
        transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=prompt_embeds,
        pooled_projections=pooled) (1597-1603); `--precondition_outputs` (type=int, DEFAULT 1, line 506-511):
        model_pred = model_pred * (-sigma) + noisy, target = x0 (1621-1630); with precondition_outputs=0:
        target = noise - x0. So by default the loss is sigma^2 * |v_pred - (noise - x0)|^2 per element - a
        sigma^2 weighting in disguise. Weighting (logit_normal default) = 1 (1626). Per-example mean (1649-1652).
        `precondition_outputs` here defaults to True like the script.
    flux — examples/dreambooth/train_dreambooth_flux.py 1611-1703 (train_dreambooth_lora_flux.py the same):
        vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) (1611); latent_image_ids =
        FluxPipeline._prepare_latent_image_ids(B, h // 2, w // 2) (1613-1619); indices -> timesteps / sigmas as above
        (1633-1639); noisy = (1 - sigma) x0 + sigma noise (1640); packed = FluxPipeline._pack_latents(noisy)
        (1642-1648); guidance = full(B, args.guidance_scale = 3.5) if transformer.config.guidance_embeds else None
        (1651-1655); model_pred = transformer(packed, timestep=timesteps / 1000, guidance, pooled_projections,
        encoder_hidden_states, txt_ids, img_ids) (1658-1668); unpacked (1670-1675); target = noise - x0 (1682);
        weighting "none" -> 1 (1679); per-example mean (1699-1702). text_ids: the script builds zeros(B, seq, 3),
        encode_prompt returns zeros(seq, 3); the transformer uses txt_ids[0] of a 3-d tensor, so both are the same.
        Note the sigmas: FLUX.1-dev's scheduler has use_dynamic_shifting=True, so the scheduler built from its
        config applies NO shift at construction (sigma = t / 1000) and the script trains on unshifted sigmas,
        while the pipeline shifts by mu(image_seq_len) at inference.
    """
    family = family.lower()
    device = latents.device
    bsz = latents.shape[0]
    if noise.shape != latents.shape:
        raise ValueError(f"noise {tuple(noise.shape)} != latents {tuple(latents.shape)}")
    if len(prompts) != bsz or schedule_indices.shape != (bsz,):
        raise ValueError("need one prompt and one schedule index per latent")
    scheduler = training_scheduler(family, pipe)
    net = denoiser(pipe)
    dtype = net.dtype
    latents = latents.to(dtype)
    noise = noise.to(dtype)
    prompts = list(prompts)

    if family in DDPM_FAMILIES:
        timesteps = schedule_indices.to(device).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction_type = scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        elif prediction_type == "sample" and family == "sdxl":
            target = latents
        else:
            raise ValueError(f"{family}: unknown prediction type {prediction_type}")

        if family == "sd":
            with torch.no_grad():
                encoder_hidden_states, _ = pipe.encode_prompt(prompts, device, num_images_per_prompt=1,
                                                              do_classifier_free_guidance=False)
            model_pred = net(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
            return _per_example(model_pred, target)

        if family == "sdxl":
            with torch.no_grad():
                prompt_embeds, _, pooled_prompt_embeds, _ = pipe.encode_prompt(
                    prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
            scale = _vae_scale_factor(pipe.vae)
            pixels = (latents.shape[2] * scale, latents.shape[3] * scale)
            add_time_ids = list(tuple(original_size or pixels) + tuple(crops_coords_top_left)
                                + tuple(target_size or pixels))
            add_time_ids = torch.tensor([add_time_ids], device=device, dtype=dtype).repeat(bsz, 1)
            model_pred = net(noisy, timesteps, prompt_embeds.to(dtype),
                             added_cond_kwargs={"time_ids": add_time_ids, "text_embeds": pooled_prompt_embeds},
                             return_dict=False)[0]
            if prediction_type == "sample":
                model_pred = model_pred - noise
            return _per_example(model_pred, target)

        # pixart-sigma
        with torch.no_grad():
            prompt_embeds, prompt_attention_mask, _, _ = pipe.encode_prompt(
                prompts, do_classifier_free_guidance=False, num_images_per_prompt=1, device=device,
                clean_caption=False, max_sequence_length=max_sequence_length)
        added_cond_kwargs = {"resolution": None, "aspect_ratio": None}
        if net.config.sample_size == 128:
            resolution = latents.shape[2] * _vae_scale_factor(pipe.vae)
            added_cond_kwargs = {
                "resolution": torch.tensor([resolution, resolution]).repeat(bsz, 1).to(dtype=dtype, device=device),
                "aspect_ratio": torch.tensor([1.0]).repeat(bsz, 1).to(dtype=dtype, device=device)}
        model_pred = net(noisy, encoder_hidden_states=prompt_embeds, encoder_attention_mask=prompt_attention_mask,
                         timestep=timesteps, added_cond_kwargs=added_cond_kwargs, return_dict=False)[0]
        if net.config.out_channels // 2 == latents.shape[1]:
            model_pred = model_pred.chunk(2, dim=1)[0]
        return _per_example(model_pred, target)

    if family not in FLOW_FAMILIES:
        raise ValueError(f"unknown family {family!r}")
    indices = schedule_indices.long().cpu()
    timesteps = scheduler.timesteps[indices].to(device=device)
    sigmas = _get_sigmas(scheduler, timesteps, latents.ndim, latents.dtype, device)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    target = noise - latents

    if family == "sana":
        with torch.no_grad():
            prompt_embeds, prompt_attention_mask, _, _ = pipe.encode_prompt(
                prompts, do_classifier_free_guidance=False, num_images_per_prompt=1, device=device,
                clean_caption=False, max_sequence_length=max_sequence_length, complex_human_instruction=None)
        model_pred = net(hidden_states=noisy, encoder_hidden_states=prompt_embeds.to(dtype),
                         encoder_attention_mask=prompt_attention_mask, timestep=timesteps, return_dict=False)[0]
        return _per_example(model_pred, target, torch.ones_like(sigmas))

    if family == "sd3":
        with torch.no_grad():
            prompt_embeds, _, pooled_prompt_embeds, _ = pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
                do_classifier_free_guidance=False, max_sequence_length=max_sequence_length)
        model_pred = net(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=prompt_embeds,
                         pooled_projections=pooled_prompt_embeds, return_dict=False)[0]
        if precondition_outputs:
            model_pred = model_pred * (-sigmas) + noisy
            target = latents
        return _per_example(model_pred, target, torch.ones_like(sigmas))

    # flux
    from diffusers import FluxPipeline

    with torch.no_grad():
        prompt_embeds, pooled_prompt_embeds, text_ids = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, num_images_per_prompt=1,
            max_sequence_length=max_sequence_length)
    scale = _vae_scale_factor(pipe.vae)
    _, channels, height, width = latents.shape
    latent_image_ids = FluxPipeline._prepare_latent_image_ids(bsz, height // 2, width // 2, device, dtype)
    packed = FluxPipeline._pack_latents(noisy, batch_size=bsz, num_channels_latents=channels, height=height,
                                        width=width)
    guidance = None
    if net.config.guidance_embeds:
        guidance = torch.tensor([guidance_scale], device=device).expand(bsz)
    model_pred = net(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
                     pooled_projections=pooled_prompt_embeds, encoder_hidden_states=prompt_embeds, txt_ids=text_ids,
                     img_ids=latent_image_ids, return_dict=False)[0]
    model_pred = FluxPipeline._unpack_latents(model_pred, height=height * scale, width=width * scale,
                                              vae_scale_factor=scale)
    return _per_example(model_pred, target, torch.ones_like(sigmas))


def tiny_dit_training_loss(transformer, scheduler_config_source, latents: torch.Tensor, text_states: torch.Tensor,
                           noise: torch.Tensor, schedule_indices: torch.Tensor) -> torch.Tensor:
    """unlearn_fast's tiny DiT (a PixArtTransformer2DModel trained with flow matching, no diffusers pipeline of its
    own) under the flow-matching scripts' loss, exactly the Sana branch above: a fresh FlowMatchEulerDiscreteScheduler
    from the model's scheduler config, timesteps = scheduler.timesteps[indices], get_sigmas, noisy = (1 - σ) x0 + σ ε,
    target = ε - x0, weighting "none"; the transformer called as PixArt's script calls it (no resolution / aspect
    conditioning). text_states: the text encoder's per-token states (B, L, D)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config_source.config))
    timesteps = scheduler.timesteps[schedule_indices.long().cpu()].to(latents.device)
    sigmas = _get_sigmas(scheduler, timesteps, latents.ndim, latents.dtype, latents.device)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    model_pred = transformer(noisy, encoder_hidden_states=text_states, timestep=timesteps,
                             added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
    return _per_example(model_pred, noise - latents, torch.ones_like(sigmas))
