"""Our K-FAC / EK-FAC factors against kronfluence 1.0.1's own code: its loaders read our folders whole, with its own
shapes for layers with and without a bias; its preconditioner on our files gives our preconditioned gradient; its own
factor fitting on our keyed denoising loss gives our covariances, counts and EK-FAC eigenvalues."""
import copy
import dataclasses
import json
import logging

import pytest
import torch
from torch import nn

from unlearn_fast import ops
from unlearn_fast.engine.curvature import (COVARIANCE_NAMES, EIGEN_NAMES, LAMBDA_NAMES, KroneckerCurvature,
                                           estimate_curvature)
from unlearn_fast.engine.fisher import FisherSettings, keyed_timesteps
from unlearn_fast.interop.kronfluence import FactorsFolderError, factors_folder, load_factors, save_factors

kronfluence = pytest.importorskip(
    "kronfluence", reason="kronfluence 1.0.1 is not installed: python3 -m pip install --no-deps kronfluence==1.0.1 "
    "(its torchvision requirement is never imported)")
from kronfluence.analyzer import Analyzer, prepare_model  # noqa: E402
from kronfluence.arguments import FactorArguments, ScoreArguments  # noqa: E402
from kronfluence.factor.config import FactorConfig  # noqa: E402
from kronfluence.task import Task  # noqa: E402
from kronfluence.utils import constants  # noqa: E402

BLOCK = "down_blocks.0.attentions.0.transformer_blocks.0"
# K and V read the text and have no bias; to_out.0 has one (its bias unlearned too); ff.net.2 has one, its weight alone
# in the group. kronfluence's activation factors carry the bias column for the last two only.
GROUP = (f"{BLOCK}.attn2.to_k.weight", f"{BLOCK}.attn2.to_v.weight", f"{BLOCK}.attn2.to_out.0.weight",
         f"{BLOCK}.attn2.to_out.0.bias", f"{BLOCK}.ff.net.2.weight")
LAYERS = sorted({name.rpartition(".")[0] for name in GROUP})
SETTINGS = FisherSettings(batch_size=16, seed=3)


@pytest.fixture(scope="module")
def rows(model, default_dataset):
    """16 training rows with the Fisher's keyed (t, ε) for sample 0 (what the curvature's own pass draws)."""
    from unlearn_fast.data import load_pixels

    ids = torch.arange(300, 316)
    x0 = model.encode_images(load_pixels(default_dataset, 32, ids.tolist()))
    cond = model.encode_text([default_dataset.captions(int(i))[0] for i in ids])
    t = keyed_timesteps(SETTINGS.seed, ids, torch.zeros_like(ids), model.num_timesteps)
    noise = ops.gaussian_noise(SETTINGS.seed, ids, torch.zeros_like(ids), 0, x0.shape[1:])
    return x0, cond, ids, t, noise


@pytest.fixture(scope="module")
def curvatures(model, rows):
    params = {name: p for name, p in model.unet.named_parameters() if name in GROUP}
    x0, cond, ids, _, _ = rows
    ekfac = estimate_curvature(model, params, x0, cond, ids, "ekfac", SETTINGS)
    kfac = {path: {name: value for name, value in f.items() if name not in LAMBDA_NAMES} for path, f in
            ekfac.factors.items()}  # K-FAC's factors are EK-FAC's without Λ
    return {"kfac": KroneckerCurvature(kfac, "kfac"), "ekfac": ekfac}


class KeyedDenoising(Task):
    """kronfluence's Task for our Fisher's loss: a batch is row indices; each row's loss is model.loss at the row's
    keyed (t, ε), through the UNet kronfluence tracks (held as `.unet` by the model it was given, or that model)."""

    def __init__(self, diffusion, rows, modules):
        self.diffusion, self.rows, self.modules = diffusion, rows, modules

    def compute_train_loss(self, batch, model, sample=False):
        x0, cond, _, t, noise = self.rows
        unet = getattr(model, "unet", model)
        return self.diffusion.loss(x0[batch], cond[batch], t[batch], noise[batch], unet=unet).sum()

    def compute_measurement(self, batch, model):
        return self.compute_train_loss(batch, model)

    def get_influence_tracked_modules(self):
        return list(self.modules)


class HoldsTheUNet(nn.Module):
    """A model that keeps the UNet as a submodule: kronfluence's module names then start with "unet."."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet


class Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return i


def analyzer(model, rows, tmp_path, name, holder=False):
    unet = copy.deepcopy(model.unet)
    tracked = HoldsTheUNet(unet) if holder else unet
    prefix = "unet." if holder else ""
    task = KeyedDenoising(model, rows, [prefix + layer for layer in LAYERS])
    return Analyzer(name, prepare_model(tracked, task), task, cpu=True, output_dir=str(tmp_path), disable_tqdm=True,
                    log_level=logging.WARNING)


def kronfluence_precondition(factors: dict, module: str, kind: str, gradient: torch.Tensor) -> torch.Tensor:
    """kronfluence's own preconditioner on one module's loaded factors, at the heuristic damping (0.1 × mean Λ)."""
    storage = {name: per_module[module] for name, per_module in factors.items()}
    config = FactorConfig.CONFIGS[kind]
    config.prepare(storage, ScoreArguments(damping_factor=None, precondition_dtype=torch.float64), torch.device("cpu"))
    return config.precondition_gradient(gradient[None], storage)[0]


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_our_factors_folder_is_one_kronfluence_loads_whole(model, rows, curvatures, tmp_path, kind):
    """Every factor file, the counts and factor_arguments.json are read by kronfluence's Analyzer; each module's
    shapes are those kronfluence's TrackedLinear gives it (the bias column exactly where the module has a bias); its
    preconditioner on our files gives our preconditioned gradient; load_factors reads the folder back bit for bit."""
    curvature = curvatures[kind]
    folder = save_factors(curvature, factors_folder(tmp_path, "abu", kind))
    analysis = analyzer(model, rows, tmp_path, "abu")
    arguments = analysis.load_factor_args(kind)
    assert arguments.strategy == kind
    assert set(json.loads((folder / "factor_arguments.json").read_text())) == \
        {field.name for field in dataclasses.fields(FactorArguments)}  # every field of the installed version
    covariance, eigen, lambdas = (analysis.load_covariance_matrices(kind), analysis.load_eigendecomposition(kind),
                                  analysis.load_lambda_matrices(kind))
    assert covariance is not None and eigen is not None and set(covariance) == set(constants.COVARIANCE_FACTOR_NAMES)
    assert set(eigen) == set(constants.EIGENDECOMPOSITION_FACTOR_NAMES) == set(EIGEN_NAMES)
    assert set(COVARIANCE_NAMES) == set(constants.COVARIANCE_FACTOR_NAMES)
    assert (lambdas is not None) == (kind == "ekfac")
    if lambdas is not None:
        assert set(lambdas) == set(constants.LAMBDA_FACTOR_NAMES) == set(LAMBDA_NAMES)
    loaded = analysis.load_all_factors(kind)  # what kronfluence's scoring reads: the strategy's factors, all present
    assert set(loaded) == set(EIGEN_NAMES) | (set(LAMBDA_NAMES) if kind == "ekfac" else set())
    factors = {**covariance, **eigen, **(lambdas or {})}

    x0, cond, ids, t, noise = rows
    gradient = {name: torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
                for i, (name, p) in enumerate((n, p) for n, p in model.unet.named_parameters() if n in GROUP)}
    ours = curvature.precondition(gradient)
    for layer in LAYERS:
        tracked = analysis.model.get_submodule(layer)
        width = tracked.get_flattened_activation(torch.zeros(1, tracked.in_features))[0].shape[1]  # kronfluence's
        assert width == tracked.in_features + (tracked.bias is not None)
        out = tracked.out_features
        assert factors["activation_covariance"][layer].shape == factors["activation_eigenvectors"][layer].shape \
            == (width, width)
        assert factors["gradient_covariance"][layer].shape == factors["gradient_eigenvectors"][layer].shape \
            == (out, out)
        assert factors["activation_eigenvalues"][layer].shape == (width,)
        assert factors["gradient_eigenvalues"][layer].shape == (out,)
        counts = {name: factors[name][layer] for name in constants.COVARIANCE_FACTOR_NAMES if name.startswith("num")}
        tokens = int(counts["num_activation_covariance_processed"])
        assert all(c.dtype == torch.int64 and c.shape == (1,) and int(c) == tokens for c in counts.values())
        assert tokens % len(ids) == 0 and tokens > len(ids)  # 16 examples × the layer's tokens
        torch.testing.assert_close(factors["activation_covariance"][layer] / tokens,
                                   factors["activation_eigenvectors"][layer]
                                   @ torch.diag(factors["activation_eigenvalues"][layer])
                                   @ factors["activation_eigenvectors"][layer].T)  # the sum, of the decomposed mean
        if kind == "ekfac":
            assert factors["lambda_matrix"][layer].shape == (out, width)
            assert int(factors["num_lambda_processed"][layer]) == len(ids)

        weight, bias = gradient[f"{layer}.weight"], gradient.get(f"{layer}.bias")
        full = weight if width == weight.shape[1] else torch.cat(
            [weight, (bias if bias is not None else torch.zeros(out, dtype=torch.float64))[:, None]], 1)
        theirs = kronfluence_precondition(factors, layer, kind, full)
        scale = 1e-12 * float(theirs.abs().max())  # float64 both, in another order of operations
        torch.testing.assert_close(ours[f"{layer}.weight"], theirs[:, :weight.shape[1]], rtol=1e-9, atol=scale)
        if bias is not None:
            torch.testing.assert_close(ours[f"{layer}.bias"], theirs[:, -1], rtol=1e-9, atol=scale)

    back = load_factors(folder)  # the strategy from factor_arguments.json
    assert back.kind == kind
    for name, value in back.precondition(gradient).items():
        assert torch.equal(value, ours[name]), name


@pytest.mark.slow
def test_kronfluence_s_own_fitting_gives_our_factors(model, rows, curvatures, tmp_path):
    """kronfluence fits the factors itself, its Task's loss being our keyed denoising loss, on a model holding the UNet
    as .unet: the covariance sums and counts are ours (float64 rounding apart), and so are the eigenvalues; EK-FAC's Λ,
    fitted by kronfluence in OUR eigenbasis (our folder, written under the holder's module names), is ours. The folder
    kronfluence wrote reads back (load_factors with the module prefix) into a curvature that preconditions like ours."""
    ekfac = curvatures["ekfac"]
    analysis = analyzer(model, rows, tmp_path, "fitted", holder=True)
    arguments = FactorArguments(strategy="ekfac", use_empirical_fisher=True, covariance_max_examples=None,
                                lambda_max_examples=None, activation_covariance_dtype=torch.float64,
                                gradient_covariance_dtype=torch.float64, per_sample_gradient_dtype=torch.float64,
                                lambda_dtype=torch.float64)
    analysis.fit_covariance_matrices("theirs", Rows(), per_device_batch_size=8, factor_args=arguments)
    analysis.perform_eigendecomposition("theirs", factor_args=arguments)
    save_factors(ekfac, factors_folder(tmp_path, "fitted", "ours"), module_prefix="unet.")
    analysis.fit_lambda_matrices("lambda_in_our_basis", Rows(), per_device_batch_size=8, factor_args=arguments,
                                 load_from_factors_name="ours")
    covariance = analysis.load_covariance_matrices("theirs")
    eigen = analysis.load_eigendecomposition("theirs")
    lambdas = analysis.load_lambda_matrices("lambda_in_our_basis")
    for layer in LAYERS:
        ours, key = ekfac.factors[layer], f"unet.{layer}"
        # The gradients are float32 (the UNet's own backward, threads summing in any order): float32's tolerance.
        for name in ("activation_covariance", "gradient_covariance"):
            torch.testing.assert_close(covariance[name][key], ours[name], rtol=1e-4,
                                       atol=1e-6 * float(ours[name].abs().max()))
        for name in ("num_activation_covariance_processed", "num_gradient_covariance_processed"):
            assert torch.equal(covariance[name][key], ours[name]), (layer, name)
        for name in ("activation_eigenvalues", "gradient_eigenvalues"):
            torch.testing.assert_close(eigen[name][key].clamp_min(0), ours[name], rtol=1e-4,
                                       atol=1e-6 * float(ours[name].max()))
        torch.testing.assert_close(lambdas["lambda_matrix"][key], ours["lambda_matrix"], rtol=1e-4,
                                   atol=1e-6 * float(ours["lambda_matrix"].max()))
        assert torch.equal(lambdas["num_lambda_processed"][key], ours["num_lambda_processed"])

    theirs = load_factors(factors_folder(tmp_path, "fitted", "theirs"), module_prefix="unet.", kind="kfac")
    gradient = {name: torch.ones_like(p, dtype=torch.float64) for name, p in model.unet.named_parameters()
                if name in GROUP}
    kfac = curvatures["kfac"].precondition(gradient)
    for name, value in theirs.precondition(gradient).items():
        torch.testing.assert_close(value, kfac[name], rtol=1e-4, atol=1e-6 * float(kfac[name].abs().max()))
    with pytest.raises(FactorsFolderError, match="not under module_prefix 'vae.'"):
        load_factors(factors_folder(tmp_path, "fitted", "theirs"), module_prefix="vae.")


@pytest.mark.slow
def test_a_work_directory_s_curvature_folder_is_a_kronfluence_analysis(model, default_dataset, tmp_path):
    """curvature/factors_<kind>/ of a work directory, as AbU's EK-FAC recipe leaves it, is what kronfluence's Analyzer
    (analysis_name "curvature", output_dir the work directory) loads whole, and reads back to the same curvature."""
    from unlearn_fast.attributor import PrepareSettings
    from unlearn_fast.data import SubsetDataset
    from unlearn_fast.engine.loss_grid import LossGrid
    from unlearn_fast.methods.abu.artefacts import curvature_folder, fit_curvature
    from unlearn_fast.workspace import Workspace

    settings = PrepareSettings(scoring=LossGrid(timesteps=1, flips=False), fisher=FisherSettings(batch_size=16),
                               chunk_rows=16)
    workspace = Workspace(model, SubsetDataset(default_dataset, range(360, 376)), tmp_path, settings, progress=False)
    curvature = fit_curvature(workspace.prepare([]), "ekfac")
    assert curvature_folder("ekfac") == "curvature/factors_ekfac"
    task = KeyedDenoising(model, None, sorted(curvature.factors))
    analysis = Analyzer("curvature", prepare_model(copy.deepcopy(model.unet), task), task, cpu=True,
                        output_dir=str(tmp_path), disable_tqdm=True, log_level=logging.WARNING)
    assert analysis.load_factor_args("ekfac").strategy == "ekfac"
    whole = {**analysis.load_covariance_matrices("ekfac"), **analysis.load_all_factors("ekfac")}
    assert set(whole) == set(COVARIANCE_NAMES + EIGEN_NAMES + LAMBDA_NAMES)
    for name, per_module in whole.items():
        assert set(per_module) == set(curvature.factors), name
        for module, value in per_module.items():
            assert torch.equal(value, curvature.factors[module][name]), (name, module)
    back = load_factors(tmp_path / "curvature" / "factors_ekfac")
    gradient = {name: torch.ones_like(p, dtype=torch.float64) for name, p in model.parameter_group("kv").items()}
    for name, value in back.precondition(gradient).items():
        assert torch.equal(value, curvature.precondition(gradient)[name]), name
