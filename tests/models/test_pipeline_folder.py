"""A Stable Diffusion pipeline folder (built and saved by the test itself, no network) loads into the same adapter."""
import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tiny_pipelines import byte_alphabet  # noqa: E402


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    root = tmp_path_factory.mktemp("pipeline")
    alphabet = byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    for token in ("ap", "apple</w>", "<|startoftext|>", "<|endoftext|>"):
        vocab[token] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\na p\n")
    tokenizer = transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=12)
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=12, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"]))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=16)
    vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=16, sample_size=16)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=DDPMScheduler(prediction_type="v_prediction"), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(str(root / "sd"), safe_serialization=True)
    return root / "sd", pipeline


def test_pipeline_folder_round_trip(sd_folder, tmp_path):
    from unlearn_fast.models.adapter import DiffusionModel

    folder, pipeline = sd_folder
    model = DiffusionModel.load(str(folder))
    assert model.resolution == 16 and model.latent_shape == (4, 8, 8) and model.prediction_type == "v_prediction"
    cond = model.encode_text(["an apple", ""])
    ids = pipeline.tokenizer(["an apple", ""], padding="max_length", max_length=12, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(cond, pipeline.text_encoder(ids)[0])
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    x0 = model.encode_images(pixels)
    with torch.no_grad():
        posterior = pipeline.vae.encode(torch.as_tensor(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist
    torch.testing.assert_close(x0, posterior.mean * pipeline.vae.config.scaling_factor)
    t, noise = torch.tensor([5, 700]), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        x_t = pipeline.scheduler.add_noise(x0, noise, t)
        pred = pipeline.unet(x_t, t, encoder_hidden_states=cond).sample
        expected = (pred - pipeline.scheduler.get_velocity(x0, noise, t)).pow(2).mean((1, 2, 3))
        torch.testing.assert_close(model.loss(x0, cond, t, noise), expected)
    assert set(model.parameter_group("kv")) == {n for n, _ in pipeline.unet.named_parameters()
                                                if n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}
    image = model.generate("an apple", seed=1, steps=3)
    assert image.shape == (1, 16, 16, 3) and np.array_equal(image, model.generate("an apple", seed=1, steps=3))
    # and it saves back into a folder that loads to the same model
    model.save(str(tmp_path / "again"))
    assert DiffusionModel.load(str(tmp_path / "again")).fingerprint() == model.fingerprint()
