"""Unlearning where the model learned: the group "changed" (tensors a fine-tune changed most, from --base-model), the
diagonal Fisher damped per layer, gradients of any group on a frozen model, and the customisation fine-tune styles
(Custom-Diffusion-like K/V and token, LoRA) whose concept the groups must reach."""
import json
import re

import numpy as np
import pytest
import torch

from unlearn_fast.engine.curvature import layer_damped
from unlearn_fast.errors import SettingsError
from unlearn_fast.models.adapter import DiffusionModel
from unlearn_fast.models.changed import changed_group, changed_tensors, weight_changes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shifted(model, shifts: dict) -> DiffusionModel:
    """A copy of `model` with `shifts` {name: value} added to every weight of the named tensors."""
    import copy

    other = copy.deepcopy(model)
    params = dict(other.unet.named_parameters())
    with torch.no_grad():
        for name, value in shifts.items():
            params[name].add_(value)
    return other


def test_the_changed_group_is_the_densest_change_until_the_share_is_held(model):
    params = dict(model.unet.named_parameters())
    kv = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    conv = "conv_in.weight"
    bias = "conv_in.bias"
    # Squared change per tensor, by hand: numel × shift². The bias moves most per weight but holds little in total.
    shifts = {bias: 1.0, kv: 0.5, conv: 0.01}
    tuned = shifted(model, shifts)
    expected = {name: params[name].numel() * shift ** 2 for name, shift in shifts.items()}
    rows = {row["name"]: row for row in weight_changes(tuned, model)}
    for name, value in expected.items():
        assert rows[name]["squared_change"] == pytest.approx(value, rel=1e-5)
    assert [row["name"] for row in weight_changes(tuned, model)][:3] == [bias, kv, conv]  # densest first
    total = sum(expected.values())
    assert (expected[bias] + expected[kv]) / total > 0.8 > expected[bias] / total  # so 0.8 stops after kv
    assert changed_tensors(tuned, model) == [bias, kv]
    assert changed_tensors(tuned, model, share=1.0) == [bias, kv, conv]
    assert set(tuned.parameter_group(changed_group(tuned, model))) == {bias, kv}  # the regex names exactly those


def test_the_changed_group_refuses_an_unchanged_model_another_architecture_and_no_base(model, tiny_model):
    with pytest.raises(SettingsError, match="no weight changed"):
        changed_tensors(model, model)
    with pytest.raises(SettingsError, match="--base-model"):
        model.parameter_group("changed")
    other_architecture = shifted(model, {})
    other_architecture.unet.conv_in.weight = torch.nn.Parameter(torch.zeros(3, 3, 3, 3))
    with pytest.raises(SettingsError, match=r"conv_in\.weight: .* here, .* in the base model"):
        weight_changes(other_architecture, model)


def test_the_command_line_unlearns_the_changed_group_and_records_the_base(model, default_image_folder, tmp_path):
    from unlearn_fast.cli.main import main

    tuned_folder = tmp_path / "tuned"
    kv = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    shifted(model, {kv: 0.05}).save(str(tuned_folder))
    images = default_image_folder(range(0, 24))
    work = tmp_path / "work"
    main(["prepare", "--data", images, "--model", str(tuned_folder), "--base-model", "default", "--work-dir",
          str(work), "--timesteps", "2", "--quiet"])
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["sources"]["base_model"] == "default"
    pattern = manifest["settings"]["fisher_group"]
    assert re.fullmatch(pattern, kv) and pattern == "^(?:" + re.escape(kv) + ")$"


def test_layer_damping_adds_a_share_of_each_tensors_own_mean():
    fisher = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([[10.0, 30.0]])}
    damped = layer_damped(fisher, 0.1)
    torch.testing.assert_close(damped["a"], torch.tensor([1.2, 3.2]))
    torch.testing.assert_close(damped["b"], torch.tensor([[12.0, 32.0]]))


def test_the_query_gradient_of_a_frozen_models_conv_and_norm_weights_matches_autograd(model):
    """A model whose weights do not require grad (a LoRA-holding model is one) still differentiates every group."""
    from unlearn_fast.engine.fisher_hooks import summed_gradient

    frozen = shifted(model, {})
    frozen.unet.requires_grad_(False)
    params = {n: p for n, p in frozen.unet.named_parameters() if n in ("conv_in.weight", "conv_norm_out.weight",
                                                                     "conv_out.bias")}
    assert len(params) == 3
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, *frozen.latent_shape, generator=generator)
    cond = frozen.encode_text(["red apple", "blue star"])
    t, noise = torch.tensor([100, 700]), torch.randn(x0.shape, generator=generator)
    grads = summed_gradient(frozen, frozen.unet, params, x0, cond, t, noise, rows=2)
    reference = shifted(model, {})
    ref_params = {n: p for n, p in reference.unet.named_parameters() if n in params}
    for p in reference.unet.parameters():
        p.requires_grad_(False)
    for p in ref_params.values():
        p.requires_grad_(True)
    loss = reference.loss(x0, cond, t, noise).sum()
    expected = torch.autograd.grad(loss, list(ref_params.values()))
    for (name, got), want in zip(grads.items(), expected):
        torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-6)
    assert not any(p.requires_grad for p in frozen.unet.parameters())  # restored


@pytest.fixture(scope="module")
def exemplar_folder(tmp_path_factory, default_dataset):
    from unlearn_fast.data import SubsetDataset
    from unlearn_fast.data.export import export_imagefolder

    folder = tmp_path_factory.mktemp("exemplars") / "data"
    export_imagefolder(SubsetDataset(default_dataset, range(100, 104)), str(folder))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    (folder / "metadata.jsonl").write_text("".join(json.dumps({**r, "text": "<v9> face"}) + "\n" for r in rows))
    return str(folder)


def test_a_custom_diffusion_fine_tune_moves_only_the_kv_and_the_new_tokens_row(exemplar_folder, tmp_path):
    from unlearn_fast.evaluate.groundtruth import CUSTOM_STYLES
    from unlearn_fast.training.run import TrainRequest, run_training

    out = tmp_path / "cd"
    run_training(TrainRequest(data=exemplar_folder, out=str(out), init_from="default", add_tokens=["<v9>"], steps=6,
                              batch_size=4, warmup_steps=1, lr=1e-2, **CUSTOM_STYLES["custom-diffusion"]), quiet=True)
    base, tuned = DiffusionModel.load("default"), DiffusionModel.load(str(out))
    kv = set(base.parameter_group("kv"))
    before, after = dict(base.unet.named_parameters()), dict(tuned.unet.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and moved <= kv
    old = base.text.encoder.get_input_embeddings().weight
    new = tuned.text.encoder.get_input_embeddings().weight
    assert new.shape[0] == old.shape[0] + 1
    torch.testing.assert_close(new[:-1], old, rtol=0, atol=0)  # every known word keeps its embedding
    assert not torch.allclose(new[-1], old.mean(0))  # the new token's row (initialised at the mean) learned
    for name, p in base.text.encoder.named_parameters():
        if "token_embedding" not in name:
            torch.testing.assert_close(dict(tuned.text.encoder.named_parameters())[name], p, rtol=0, atol=0)


def test_a_lora_fine_tune_saves_the_adapter_beside_an_unchanged_base_unet(exemplar_folder, tmp_path):
    pytest.importorskip("peft")
    from unlearn_fast.evaluate.groundtruth import CUSTOM_STYLES
    from unlearn_fast.models.lora import load_lora
    from unlearn_fast.training.run import TrainRequest, run_training

    out = tmp_path / "lora"
    run_training(TrainRequest(data=exemplar_folder, out=str(out), init_from="default", add_tokens=["<v9>"], steps=6,
                              batch_size=4, warmup_steps=1, lr=1e-2, **CUSTOM_STYLES["lora"]), quiet=True)
    base, tuned = DiffusionModel.load("default"), DiffusionModel.load(str(out))
    for name, p in base.unet.named_parameters():  # the folder's UNet is the base one: the adapter holds the change
        torch.testing.assert_close(dict(tuned.unet.named_parameters())[name], p, rtol=0, atol=0)
    load_lora(tuned, str(out / "lora"))
    lora = tuned.parameter_group("lora")
    assert lora and any(float(p.detach().abs().max()) > 0 for n, p in lora.items() if "lora_B" in n)  # B trained off zero


def test_validation_customises_on_another_family_and_other_exemplars(default_dataset):
    from unlearn_fast.evaluate.groundtruth import (GroundTruthSetup, customisation_scenario,
                                                   domain_customisation_scenario)

    words = DiffusionModel.load("default").text.tokenizer.index
    made = {}
    for split in ("evaluation", "validation"):
        setup = GroundTruthSetup(plant_split=split, prompts=3)
        made[split] = (customisation_scenario(setup, 32, words),
                       domain_customisation_scenario(setup, default_dataset, 32, words))
    assert made["evaluation"][1].info["family"] != made["validation"][1].info["family"]
    assert not np.array_equal(made["evaluation"][0].extra_images[0], made["validation"][0].extra_images[0])
    lora = customisation_scenario(GroundTruthSetup(prompts=3, custom_styles=("lora",)), 32, words, style="lora")
    assert lora.name == "customisation-lora" and lora.finetune["lora_rank"] == 4


def test_only_the_new_token_rows_change_even_under_weight_decay():
    from unlearn_fast.training.config import TrainingConfig
    from unlearn_fast.training.trainer import TrainingSet, train_diffusion

    from unlearn_fast.training.run import _add_tokens

    model = DiffusionModel.load("default")
    _add_tokens(model, ["<v8>"])
    table = model.text.encoder.get_input_embeddings().weight
    before = table.detach().clone()
    x0 = torch.randn(4, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    data = TrainingSet(x0, [("<v8> face",)] * 4)
    config = TrainingConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=1, weight_decay=0.5,
                            unet_parameters="kv", train_text_encoder=False, new_token_rows=1, ema_decay=0.0)
    train_diffusion(model, data, config, quiet=True)
    after = model.text.encoder.get_input_embeddings().weight
    torch.testing.assert_close(after[:-1], before[:-1], rtol=0, atol=0)  # decay would have shrunk them by lr × 0.5
    assert not torch.equal(after[-1], before[-1])
