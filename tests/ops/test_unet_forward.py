"""The scoring pass's UNet plans (channels_last, torch.compile), weight swapping and devices, against the plain path.

torch.compile runs for real here (inductor on the CPU, ≈ 50 s on 2 cores for the small UNet below): it is the path a
GPU user turns on, and its guards are what make one graph serve the passes before and after unlearning.
"""
import copy

import pytest
import torch

from unlearn_fast.engine.device import resolve_device
from unlearn_fast.errors import SettingsError
from unlearn_fast.engine.loss_grid import LossGrid
from unlearn_fast.engine.scoring import per_example_losses
from unlearn_fast.engine.unet_forward import ForwardPlan, precision, unet_forward
from unlearn_fast.engine.weight_swap import swapped_weights

needs_cuda = pytest.mark.gpu  # skipped without a CUDA device (conftest)


def small_model(prediction_type="epsilon"):
    """A two-level conditional UNet (8×8×4 latents, 32-d text), seeded: small enough to compile in under a minute."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from unlearn_fast.models.adapter import DiffusionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=2)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    return DiffusionModel(unet.eval(), scheduler, text=None)


def inputs(n=10, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=gen), torch.randn(n, 7, 32, generator=gen), list(range(50, 50 + n))


def relative_error(a, b):
    return float(((a - b).abs() / b.abs()).max())


def test_channels_last_gives_the_plain_losses_for_both_prediction_types():
    for prediction_type in ("epsilon", "v_prediction"):
        model = small_model(prediction_type)
        x0, cond, ids = inputs()
        plain = per_example_losses(model, x0, cond, ids, LossGrid(timesteps=3, batch_size=16))
        nhwc = per_example_losses(model, x0, cond, ids, LossGrid(timesteps=3, batch_size=16, channels_last=True))
        assert relative_error(nhwc, plain) <= 1e-5
        conv = model.unet.conv_in.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


@pytest.mark.slow
def test_compiled_pass_matches_eager_compiles_once_and_sees_swapped_weights():
    import torch._dynamo.utils

    model = small_model()
    x0, cond, ids = inputs()  # 10 × 3 × 2 = 60 rows in batches of 16: a 12-row tail, padded to 16 when compiled
    eager, compiled = LossGrid(timesteps=3, batch_size=16), LossGrid(timesteps=3, batch_size=16, compile="default")
    graphs = torch._dynamo.utils.counters["stats"]
    before = graphs["unique_graphs"]
    reference = per_example_losses(model, x0, cond, ids, eager)
    assert relative_error(per_example_losses(model, x0, cond, ids, compiled), reference) <= 1e-5
    assert graphs["unique_graphs"] - before == 1  # the tail did not make a second graph

    params = dict(model.unet.named_parameters())
    name = next(n for n in params if n.endswith("attn2.to_k.weight"))
    changed = {name: params[name].detach() * 3.0}
    with swapped_weights(model.unet, changed):
        after_eager = per_example_losses(model, x0, cond, ids, eager)
        after_compiled = per_example_losses(model, x0, cond, ids, compiled)
    assert graphs["unique_graphs"] - before == 1  # new values in the same tensors: no recompilation
    assert (after_eager - reference).abs().max() > 1e-4  # the swap changed the losses...
    assert relative_error(after_compiled, after_eager) <= 1e-5  # ...and the compiled graph saw it
    assert torch.equal(per_example_losses(model, x0, cond, ids, eager), reference)  # originals are back


def test_stored_noise_path_ignores_the_plan():
    model = small_model()
    x0, cond, ids = inputs(4)
    grid = LossGrid(timesteps=2, path="stored-noise", channels_last=True, compile="default")
    per_example_losses(model, x0, cond, ids, grid)
    assert model.unet.conv_in.weight.is_contiguous()  # the oracle runs the UNet as it was given
    assert "_unlearn_fast_forwards" not in model.unet.__dict__


def test_a_deep_copy_of_a_prepared_unet_carries_no_prepared_forward():
    model = small_model()
    unet_forward(model, model.unet, ForwardPlan(), torch.device("cpu"))
    assert len(model.unet._unlearn_fast_forwards) == 1
    assert len(copy.deepcopy(model.unet)._unlearn_fast_forwards) == 0  # unlearn's working copy starts clean


def test_swapped_weights_restores_after_an_error_and_checks_names_and_shapes():
    model = small_model()
    params = dict(model.unet.named_parameters())
    name = next(n for n in params if n.endswith("attn2.to_v.weight"))
    original = params[name].detach().clone()
    with pytest.raises(RuntimeError, match="midway"):
        with swapped_weights(model.unet, {name: torch.zeros_like(original)}):
            assert float(params[name].detach().abs().sum()) == 0.0
            raise RuntimeError("midway")
    assert torch.equal(params[name], original)
    with pytest.raises(KeyError, match="not parameters"):
        with swapped_weights(model.unet, {"no.such.weight": original}):
            pass
    with pytest.raises(ValueError, match=r"has shape .* the new value \(3,\)"):
        with swapped_weights(model.unet, {name: torch.zeros(3)}):
            pass


def test_plan_and_device_settings_are_validated():
    with pytest.raises(SettingsError, match="compile must be one of"):
        LossGrid(compile="fastest")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SettingsError, match="not a torch device"):
        resolve_device("gpu0")
    with pytest.raises(SettingsError, match="only cpu and cuda"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(SettingsError, match="sees no CUDA GPU"):
            resolve_device("cuda")


def test_bf16_precision_autocasts_and_fp32_does_not():
    weight = torch.randn(8, 8)
    with precision("bf16", torch.device("cpu")):
        assert (torch.randn(2, 8) @ weight).dtype == torch.bfloat16
    with precision("fp32", torch.device("cpu")):
        assert (torch.randn(2, 8) @ weight).dtype == torch.float32


@needs_cuda
def test_fp32_on_cuda_turns_tf32_off_inside_and_restores_it():
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    with precision("fp32", torch.device("cuda")):
        assert not torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    torch.set_float32_matmul_precision("highest")


@needs_cuda
@pytest.mark.parametrize("plan", [{}, {"channels_last": True}, {"compile": "default"},
                                  {"compile": "reduce-overhead", "channels_last": True}])
def test_gpu_pass_from_cpu_rows_matches_the_cpu_pass(plan):
    """Rows stay on the CPU and move a batch at a time; fp32 on the GPU (TF32 off) agrees with the CPU pass."""
    model = small_model()
    x0, cond, ids = inputs(24)
    on_cpu = per_example_losses(model, x0, cond, ids, LossGrid(timesteps=3, batch_size=32))
    model.to("cuda")
    on_gpu = per_example_losses(model, x0, cond, ids, LossGrid(timesteps=3, batch_size=32, **plan))
    assert on_gpu.device.type == "cpu"
    assert relative_error(on_gpu, on_cpu) <= 1e-4
