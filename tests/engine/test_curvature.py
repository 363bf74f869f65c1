"""K-FAC / EK-FAC curvature (curvature.py) against direct computations on the default model's K/V layers."""
import dataclasses

import numpy as np
import pytest
import torch

from unlearn_fast import ops
from unlearn_fast.engine.curvature import (
    KroneckerCurvature,
    covariance_sums,
    eigenbases,
    estimate_curvature,
    from_kronfluence,
    lambda_sums,
    linear_layers,
    to_kronfluence,
)
from unlearn_fast.errors import SettingsError
from unlearn_fast.methods.abu.artefacts import fisher_rows, fit_curvature, fit_fisher
from unlearn_fast.engine.fisher import FisherSettings, keyed_timesteps


def _spd(n: int, generator) -> torch.Tensor:
    m = torch.randn(n, n, generator=generator, dtype=torch.float64)
    return m @ m.T + 0.1 * torch.eye(n, dtype=torch.float64)


def test_kfac_preconditioning_is_the_damped_kronecker_inverse():
    """U = (A ⊗ S + λ I)⁻¹ vec(Ĝ) with λ = damping × mean eigenvalue, solved directly (column-major vec)."""
    g = torch.Generator().manual_seed(0)
    A, S = _spd(5, g), _spd(4, g)  # A over [x, 1]: 4 inputs + the bias column
    factors = eigenbases({"layer": (A * 10, S * 10, 10)})
    curvature = KroneckerCurvature(factors, "kfac", damping=0.1)
    grad_w, grad_b = torch.randn(4, 4, generator=g, dtype=torch.float64), torch.randn(4, generator=g,
                                                                                     dtype=torch.float64)
    update = curvature.precondition({"layer.weight": grad_w, "layer.bias": grad_b})
    full = torch.cat([grad_w, grad_b[:, None]], 1)
    kron = torch.kron(A, S)
    damping = 0.1 * torch.linalg.eigvalsh(kron).mean()
    expected = torch.linalg.solve(kron + damping * torch.eye(20, dtype=torch.float64), full.T.reshape(-1))
    expected = expected.reshape(5, 4).T
    torch.testing.assert_close(update["layer.weight"], expected[:, :4])
    torch.testing.assert_close(update["layer.bias"], expected[:, 4])


def test_ekfac_with_the_kfac_eigenvalues_is_kfac():
    g = torch.Generator().manual_seed(1)
    factors = eigenbases({"layer": (_spd(3, g), _spd(2, g), 1)})
    f = factors["layer"]
    # kronfluence's meaning: a sum over 7 examples and its count
    ek = {"layer": {**f, "lambda_matrix": 7 * torch.outer(f["gradient_eigenvalues"], f["activation_eigenvalues"]),
                    "num_lambda_processed": torch.tensor([7])}}
    grad = {"layer.weight": torch.randn(2, 2, generator=g, dtype=torch.float64)}
    torch.testing.assert_close(KroneckerCurvature(ek, "ekfac").precondition(grad)["layer.weight"],
                               KroneckerCurvature(factors, "kfac").precondition(grad)["layer.weight"])


def test_factors_of_another_layer_s_shape_are_refused():
    """Factors (read from a folder, say) whose widths are not the layer's: a SettingsError naming the layer."""
    g = torch.Generator().manual_seed(2)
    curvature = KroneckerCurvature(eigenbases({"layer": (_spd(5, g), _spd(4, g), 3)}), "kfac")
    with pytest.raises(SettingsError, match=r"curvature of layer is for a \(4, 5\) gradient; the layer's weight "
                                            r"is \(4, 2\)"):
        curvature.precondition({"layer.weight": torch.ones(4, 2, dtype=torch.float64)})
    with pytest.raises(SettingsError, match="has no bias column"):  # 5 = 5 inputs: no room for a bias
        curvature.precondition({"layer.weight": torch.ones(4, 5, dtype=torch.float64),
                                "layer.bias": torch.ones(4, dtype=torch.float64)})
    assert curvature.precondition({"layer.weight": torch.ones(4, 4, dtype=torch.float64)})["layer.weight"].shape \
        == (4, 4)  # 4 inputs and the bias column, the gradient without a bias
    params = {"layer.weight": torch.ones(4, 2), "other.weight": torch.ones(3, 3)}  # what unlearn checks first
    with pytest.raises(SettingsError, match=r"curvature of layer is for a \(4, 5\) gradient"):
        curvature.check(params)
    with pytest.raises(SettingsError, match="no factors for other.weight"):
        curvature.check({"layer.weight": torch.ones(4, 4), "other.weight": torch.ones(3, 3)})
    curvature.check({"layer.weight": torch.ones(4, 4)})


@pytest.fixture(scope="module")
def rows(model, default_dataset):
    from unlearn_fast.data import load_pixels

    indices = list(range(300, 316))
    x0 = model.encode_images(load_pixels(default_dataset, 32, indices))
    cond = model.encode_text([default_dataset.captions(i)[0] for i in indices])
    return x0, cond, torch.tensor(indices)


@pytest.mark.parametrize("path", ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                                  "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0"],
                         ids=["kv layer without bias", "layer with bias"])
def test_factors_match_per_example_autograd(model, rows, path):
    """A, S and EK-FAC's Λ of one layer against a per-example loop: each example's own forward and backward. The
    activations carry the bias's column exactly where the layer has a bias (a K/V layer has none)."""
    x0, cond, ids = rows
    layer = model.unet.get_submodule(path)
    assert (layer.bias is None) == path.endswith("to_k")
    settings = FisherSettings(batch_size=16, seed=3)
    T = model.scheduler.config.num_train_timesteps
    t = keyed_timesteps(settings.seed, ids, torch.zeros_like(ids), T)
    noise = ops.gaussian_noise(settings.seed, ids, torch.zeros_like(ids), 0, x0.shape[1:])
    inputs, grads, weight_grads = [], [], []
    for n in range(len(ids)):
        seen = {}
        handle = layer.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach(), y=o))
        loss = model.loss(x0[n:n + 1], cond[n:n + 1], t[n:n + 1], noise[n:n + 1]).sum()
        handle.remove()
        wanted = [seen["y"], layer.weight] + ([layer.bias] if layer.bias is not None else [])
        gy, gw, *gb = torch.autograd.grad(loss, wanted)
        x = seen["x"][0].double()
        inputs.append(torch.cat([x, torch.ones_like(x[:, :1])], 1) if gb else x)
        grads.append(gy[0].double())
        weight_grads.append(torch.cat([gw.double(), gb[0].double()[:, None]], 1) if gb else gw.double())
    X, G = torch.cat(inputs), torch.cat(grads)
    a, s, count = covariance_sums(model, [path], x0, cond, ids, settings)[path]
    assert count == len(X) and a.shape == (layer.in_features + (layer.bias is not None),) * 2
    torch.testing.assert_close(a, X.T @ X, rtol=1e-5, atol=1e-6 * float((X.T @ X).abs().max()))  # float32 activations
    # float32 backwards of a batch and of one example round apart: a tolerance at the matrix's scale
    torch.testing.assert_close(s, G.T @ G, rtol=1e-4, atol=1e-5 * float((G.T @ G).abs().max()))
    factors = eigenbases({path: (a, s, count)})
    total, examples = lambda_sums(model, factors, x0, cond, ids, settings)[path]
    q_s, q_a = factors[path]["gradient_eigenvectors"], factors[path]["activation_eigenvectors"]
    direct = sum((q_s.T @ w @ q_a).square() for w in weight_grads)
    assert examples == len(ids)
    torch.testing.assert_close(total, direct, rtol=1e-4, atol=1e-5 * float(direct.abs().max()))


def test_the_kronfluence_layout_round_trips_and_non_linear_groups_are_refused(model, rows):
    x0, cond, ids = rows
    curvature = estimate_curvature(model, model.parameter_group("kv"), x0, cond, ids, "ekfac",
                                   FisherSettings(batch_size=16))
    layout = to_kronfluence(curvature)
    assert set(layout) >= {"activation_covariance", "gradient_covariance", "lambda_matrix"}
    assert set(layout["lambda_matrix"]) == set(curvature.factors)
    again = from_kronfluence(layout, "ekfac")
    grad = {name: torch.ones_like(p, dtype=torch.float64) for name, p in model.parameter_group("kv").items()}
    for name, value in curvature.precondition(grad).items():
        assert value.shape == grad[name].shape
        torch.testing.assert_close(again.precondition(grad)[name], value, rtol=0, atol=0)
    norm = {n: p for n, p in model.unet.named_parameters() if "norm" in n}
    with pytest.raises(SettingsError, match="Linear layers only"):
        linear_layers(model.unet, norm)


def test_abu_with_ekfac_curvature_scores_and_keeps_its_factors(model, tmp_path, default_dataset, red_apple_query):
    from unlearn_fast.attributor import Attributor, PrepareSettings
    from unlearn_fast.data import SubsetDataset
    from unlearn_fast.methods import build_method, run_method
    from unlearn_fast.engine.loss_grid import LossGrid

    data = SubsetDataset(default_dataset, range(360, 392))
    settings = PrepareSettings(scoring=LossGrid(timesteps=2, flips=False, batch_size=64, noise="example"),
                               fisher=FisherSettings(batch_size=32), chunk_rows=16)  # the paper's noise key
    attributor = Attributor(model, data, tmp_path, settings, progress=False)
    method = build_method("abu-ekfac", step="rise:0.1", draws=24, batch_size=24)
    scores = run_method(method, attributor, [red_apple_query]).scores[0]
    assert np.isfinite(scores).all() and np.abs(scores).max() > 0
    assert (tmp_path / "curvature" / "factors_ekfac" / "lambda_matrix.safetensors").exists()
    diagonal = run_method(build_method("abu-rise", step="rise:0.1", draws=24, batch_size=24), attributor,
                          [red_apple_query]).scores[0]
    assert not np.allclose(scores, diagonal)  # another preconditioner, another ranking


def test_the_work_directory_s_curvature_is_chunked_resumable_and_equals_one_pass(model, tmp_path, default_dataset,
                                                                                 monkeypatch):
    """EK-FAC over every weight of the group: both passes in chunks of rows, each chunk saved as it finishes; a run
    killed in the second pass resumes with the missing chunks only and gives the one-pass factors; the weights no
    Linear layer holds (here the convolutions of "all") are preconditioned by the diagonal Fisher."""
    import unlearn_fast.engine.curvature as curvature_module
    import unlearn_fast.methods.abu.artefacts as abu_artefacts
    from unlearn_fast.attributor import PrepareSettings
    from unlearn_fast.data import SubsetDataset
    from unlearn_fast.engine.loss_grid import LossGrid
    from unlearn_fast.workspace import Workspace, rows_of

    data = SubsetDataset(default_dataset, range(360, 424))
    settings = PrepareSettings(scoring=LossGrid(timesteps=2, flips=False), fisher=FisherSettings(batch_size=16),
                               fisher_group="all", chunk_rows=16)  # 4 chunks of 16 rows
    calls = []
    real = curvature_module.lambda_sums

    def dies_on_the_third_chunk(*args, **kwargs):
        calls.append(len(args[4]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(abu_artefacts, "lambda_sums", dies_on_the_third_chunk)  # where the pass calls it
    workspace = Workspace(model, data, tmp_path, settings, progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit_curvature(workspace.prepare(), "ekfac")
    assert len(list((tmp_path / "curvature_parts" / "factors_ekfac").glob("covariance/*.safetensors"))) == 4
    assert len(list((tmp_path / "curvature_parts" / "factors_ekfac").glob("lambda/*.safetensors"))) == 2
    calls.clear()
    chunked = fit_curvature(Workspace(model, data, tmp_path, settings, progress=False).prepare(), "ekfac")
    assert len(calls) == 2 and not (tmp_path / "curvature_parts" / "factors_ekfac").exists()  # the missing two

    ids = workspace.caption_rows[fisher_rows(workspace)]
    monkeypatch.setattr(abu_artefacts, "lambda_sums", real)
    params = model.parameter_group("all")
    whole = curvature_module.KroneckerCurvature(curvature_module.eigenbases(curvature_module.covariance_sums(
        model, linear_layers(model.unet, params, others=True), rows_of(workspace.latents, ids),
        rows_of(workspace.conditioning, fisher_rows(workspace)), ids, settings.fisher)), "ekfac")
    curvature_module.add_lambda(whole.factors, real(model, whole.factors, rows_of(workspace.latents, ids),
                                                    rows_of(workspace.conditioning, fisher_rows(workspace)), ids,
                                                    settings.fisher))
    assert set(chunked.factors) == set(whole.factors)
    for path in whole.factors:
        for name in ("activation_covariance", "gradient_covariance", "lambda_matrix"):
            torch.testing.assert_close(chunked.factors[path][name], whole.factors[path][name], rtol=1e-6, atol=1e-12)

    conv = next(n for n, p in params.items() if p.ndim == 4)
    gradient = {n: torch.ones_like(p, dtype=torch.float64) for n, p in params.items()}
    fisher = fit_fisher(workspace)
    with pytest.raises(SettingsError, match="no factors"):
        chunked.precondition(gradient)
    update = dataclasses.replace(chunked, diagonal=fisher).precondition(gradient)
    assert set(update) == set(gradient)
    torch.testing.assert_close(update[conv], gradient[conv] / fisher[conv].double())
