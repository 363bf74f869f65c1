"""Tiny random pipelines of six diffusers families (tests/tiny_pipelines.py) build offline, save, load back, generate,
and give the official training scripts' per-example loss (tests/family_objectives.py)."""
import hashlib
import json
import re

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import family_objectives as fo  # noqa: E402  (tests/ is on sys.path under pytest's rootdir conftest)
import tiny_pipelines as tp  # noqa: E402

WORDS = ["a", "red", "apple", "painting", "of", "squirrel", "eating", "burger", "green", "t-shirt", "café"]
PROMPTS = ["a red apple", "a squirrel", "a painting of a burger", "red", "", "apple apple", "green t-shirt", "of a"]
B = len(PROMPTS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny sizes: a second thread only waits


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    made = {}

    def folder(family):
        if family not in made:
            made[family] = tp.build_pipeline_folder(family, tmp_path_factory.mktemp(family) / "pipe", WORDS, seed=0)
        return made[family]
    return folder


@pytest.fixture(scope="module")
def pipes(folders):
    loaded = {}

    def pipe(family):
        if family not in loaded:
            loaded[family] = tp.load_pipeline(family, folders(family))
        return loaded[family]
    return pipe


def _inputs(family, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, tp.LATENT_CHANNELS[family], tp.LATENT_SIZE, tp.LATENT_SIZE)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.randint(0, 1000, (B,), generator=g)


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("family", tp.FAMILIES)
def test_build_is_deterministic(family, folders, tmp_path):
    first = _digests(folders(family))
    assert any(name.endswith(".safetensors") for name in first)
    assert _digests(tp.build_pipeline_folder(family, tmp_path / "again", WORDS, seed=0)) == first
    other = _digests(tp.build_pipeline_folder(family, tmp_path / "seed1", WORDS, seed=1))
    assert {n for n in first if n.endswith(".safetensors") and first[n] != other[n]}


@pytest.mark.parametrize("family", tp.FAMILIES)
def test_folder_loads_back_and_generates(family, folders, pipes):
    folder = folders(family)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == tp.PIPELINE_CLASS[family]
    pipe = pipes(family)
    assert type(pipe).__name__ == tp.PIPELINE_CLASS[family]
    fresh = tp.build_pipeline(family, WORDS, seed=0)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            expected = getattr(fresh, name).state_dict()
            got = module.state_dict()
            assert got.keys() == expected.keys(), name
            assert all(torch.equal(got[k], expected[k]) for k in got), name
    # every word of WORDS maps to known ids, and to one token per pre-tokenized piece
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tok = getattr(pipe, name, None)
        if tok is None:
            continue
        assert tok.model_max_length == (tp.CLIP_MAX_LENGTH[family] if type(tok).__name__ == "CLIPTokenizer" else 512)
        for word in WORDS:
            ids = tok(word, add_special_tokens=False).input_ids
            assert tok.unk_token_id not in ids or tok.unk_token_id in (tok.eos_token_id, tok.pad_token_id)
            if type(tok).__name__ == "CLIPTokenizer":
                backend = tok.backend_tokenizer
                pieces = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(word))
                assert len(ids) == len(pieces), (word, tok.convert_ids_to_tokens(ids))
            else:
                assert len(ids) == 1, (word, tok.convert_ids_to_tokens(ids))
    # the VAE makes latents of the shape the objective is fed
    with torch.no_grad():
        encoded = pipe.vae.encode(torch.zeros(1, 3, tp.IMAGE_SIZE, tp.IMAGE_SIZE))
    latent = encoded.latent if hasattr(encoded, "latent") else encoded.latent_dist.mean
    assert tuple(latent.shape[1:]) == (tp.LATENT_CHANNELS[family], tp.LATENT_SIZE, tp.LATENT_SIZE)
    image = tp.run_pipeline(family, folder, "a red apple", pipe=pipe)
    assert image.shape == (1, tp.IMAGE_SIZE, tp.IMAGE_SIZE, 3) and np.isfinite(image).all()
    assert image.min() >= 0 and image.max() <= 1
    assert np.array_equal(image, tp.run_pipeline(family, folder, "a red apple", pipe=pipe))


def test_run_pipeline_loads_the_folder_itself(folders):
    image = tp.run_pipeline("sd", folders("sd"), "a red apple")
    assert image.shape == (1, tp.IMAGE_SIZE, tp.IMAGE_SIZE, 3)


@pytest.mark.parametrize("family", tp.FAMILIES)
def test_official_loss(family, pipes):
    pipe = pipes(family)
    x0, noise, indices = _inputs(family)
    with torch.no_grad():
        loss = fo.official_training_loss(family, pipe, x0, PROMPTS, noise, indices)
        again = fo.official_training_loss(family, pipe, x0.clone(), list(PROMPTS), noise.clone(), indices.clone())
        other_text = fo.official_training_loss(family, pipe, x0, ["squirrel"] * B, noise, indices)
    assert loss.shape == (B,) and loss.dtype == torch.float32 and torch.isfinite(loss).all()
    assert torch.equal(loss, again)                               # same inputs, same bits
    assert not torch.equal(loss, other_text)                      # the text reaches the loss
    # gradients reach the text-reading K/V weights
    kv = dict(fo.denoiser(pipe).named_parameters())
    names = fo.text_kv_parameter_names(family, pipe)
    assert names
    fo.denoiser(pipe).zero_grad()
    fo.official_training_loss(family, pipe, x0, PROMPTS, noise, indices).sum().backward()
    assert all(kv[n].grad is not None and kv[n].grad.abs().sum() > 0 for n in names)
    fo.denoiser(pipe).zero_grad(set_to_none=True)


@pytest.mark.parametrize("family", tp.FAMILIES)
def test_text_regexes_select_parameters(family, pipes):
    names = [n for n, _ in fo.denoiser(pipes(family)).named_parameters()]
    for table in (fo.TEXT_KV_REGEX, fo.TEXT_INPUT_REGEX):
        assert [n for n in names if re.search(table[family], n)], (family, table[family])


def _clip_ids(tokenizer, prompts, max_length):
    return tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids


def _t5_ids(tokenizer, prompts, max_length):
    return tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
                     return_tensors="pt")


@pytest.mark.parametrize("family", tp.FAMILIES)
def test_encode_prompt_equals_the_scripts_text_code(family, pipes):
    """The pipelines' encode_prompt (used by official_training_loss) gives the same tensors as the scripts' own."""
    pipe, n = pipes(family), tp.MAX_SEQUENCE_LENGTH
    with torch.no_grad():
        if family == "sd":   # train_text_to_image.py 794-797, 993
            ids = _clip_ids(pipe.tokenizer, PROMPTS, pipe.tokenizer.model_max_length)
            expected = pipe.text_encoder(ids, return_dict=False)[0]
            got, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
            assert torch.equal(got, expected)
        elif family == "sdxl":   # train_text_to_image_sdxl.py 502-541
            states = []
            for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
                out = enc(_clip_ids(tok, PROMPTS, tok.model_max_length), output_hidden_states=True, return_dict=False)
                pooled = out[0]
                states.append(out[-1][-2])
            got, _, got_pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
            assert torch.equal(got, torch.cat(states, -1)) and torch.equal(got_pooled, pooled)
        elif family == "pixart-sigma":   # train_pixart_controlnet_hf.py 828, 1008-1009
            inputs = _t5_ids(pipe.tokenizer, PROMPTS, n)
            expected = pipe.text_encoder(inputs.input_ids, attention_mask=inputs.attention_mask)[0]
            got, mask, _, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=n)
            assert torch.equal(got, expected) and torch.equal(mask, inputs.attention_mask)
        elif family == "sana":   # the Sana script calls pipeline.encode_prompt itself (1224-1228); Gemma adds <bos>
            _, mask, _, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=n,
                                               complex_human_instruction=None)
            assert mask.shape == (B, n) and (mask[:, 0] == 1).all()
            assert pipe.tokenizer("red").input_ids[0] == pipe.tokenizer.bos_token_id
        elif family == "sd3":   # train_dreambooth_sd3.py 867-987: CLIP at max_length=77, hidden_states[-2], pad, cat
            clip, pooled = [], []
            for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
                out = enc(_clip_ids(tok, PROMPTS, 77), output_hidden_states=True)
                pooled.append(out[0])
                clip.append(out.hidden_states[-2])
            t5 = pipe.text_encoder_3(_t5_ids(pipe.tokenizer_3, PROMPTS, n).input_ids)[0]
            clip = torch.nn.functional.pad(torch.cat(clip, -1), (0, t5.shape[-1] - 32))
            got, _, got_pooled, _ = pipe.encode_prompt(PROMPTS, None, None, device="cpu",
                                                       do_classifier_free_guidance=False, max_sequence_length=n)
            assert torch.equal(got, torch.cat([clip, t5], -2)) and torch.equal(got_pooled, torch.cat(pooled, -1))
        else:   # flux: train_dreambooth_flux.py 940-1025: CLIP pooler_output at max_length=77, T5 states, zero text ids
            pooled = pipe.text_encoder(_clip_ids(pipe.tokenizer, PROMPTS, 77), output_hidden_states=False).pooler_output
            t5 = pipe.text_encoder_2(_t5_ids(pipe.tokenizer_2, PROMPTS, n).input_ids)[0]
            got, got_pooled, text_ids = pipe.encode_prompt(PROMPTS, None, device="cpu", max_sequence_length=n)
            assert torch.equal(got, t5) and torch.equal(got_pooled, pooled)
            assert not text_ids.any() and text_ids.shape == (n, 3)


def test_flow_matching_schedules(pipes):
    """Script-side schedules: SD3/Sana sigmas shifted (shift=3) at construction, Flux (dynamic shifting) unshifted."""
    indices = torch.tensor([0, 250, 500, 999])
    u = 1 - indices.double() / 1000
    for family, shift in (("sd3", 3.0), ("sana", 3.0), ("flux", 1.0)):
        scheduler = fo.training_scheduler(family, pipes(family))
        timesteps = scheduler.timesteps[indices]
        sigmas = fo._get_sigmas(scheduler, timesteps, 1, torch.float32, "cpu")
        assert torch.equal(sigmas, scheduler.sigmas[indices].float())
        torch.testing.assert_close(sigmas.double(), shift * u / (1 + (shift - 1) * u), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(timesteps.double(), 1000 * sigmas.double(), rtol=1e-6, atol=1e-3)


def test_sd3_preconditioning_is_a_sigma_squared_weight(pipes):
    """precondition_outputs=1 (the script default): (-sigma v + x_t - x0)^2 = sigma^2 (v - (noise - x0))^2."""
    pipe = pipes("sd3")
    x0, noise, indices = _inputs("sd3", seed=3)
    with torch.no_grad():
        pre = fo.official_training_loss("sd3", pipe, x0, PROMPTS, noise, indices, precondition_outputs=True)
        raw = fo.official_training_loss("sd3", pipe, x0, PROMPTS, noise, indices, precondition_outputs=False)
    sigma = fo.training_scheduler("sd3", pipe).sigmas[indices]
    torch.testing.assert_close(pre, sigma ** 2 * raw, rtol=1e-4, atol=1e-6)


def test_ddpm_loss_by_hand(pipes):
    """SD: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, target eps, mean over (C, h, w)."""
    pipe = pipes("sd")
    x0, noise, t = _inputs("sd", seed=5)
    abar = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2, 0)[t]
    x_t = abar.sqrt()[:, None, None, None] * x0 + (1 - abar).sqrt()[:, None, None, None] * noise
    with torch.no_grad():
        cond, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
        expected = (pipe.unet(x_t, t, cond).sample - noise).pow(2).mean((1, 2, 3))
        torch.testing.assert_close(fo.official_training_loss("sd", pipe, x0, PROMPTS, noise, t), expected)
