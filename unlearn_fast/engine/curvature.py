"""Kronecker-factored curvature (K-FAC, EK-FAC) of the unlearned Linear layers: what a diagonal Fisher leaves out.

For a Linear layer y = W x + b seen by example n at tokens t, the per-example gradient of W̃ = [W b] is
G_n = Σ_t g_nt x̃_ntᵀ with x̃ = [x, 1] and g = ∂L_n/∂y; a layer without a bias has no bias parameter, so there
W̃ = W and x̃ = x (kronfluence's TrackedLinear appends the column only where the module has a bias, and so do we).
K-FAC approximates the Fisher E[vec G_n vec G_nᵀ] by A ⊗ S:

    A = mean over (n, t) of x̃ x̃ᵀ      (activation covariance)
    S = mean over (n, t) of g gᵀ       (gradient covariance)

With A = Q_A diag(a) Q_Aᵀ and S = Q_S diag(s) Q_Sᵀ, a gradient Ĝ is preconditioned in the Kronecker eigenbasis:

    U = Q_S [(Q_Sᵀ Ĝ Q_A) / (Λ + λ)] Q_Aᵀ,   Λ = s aᵀ (K-FAC)   or   Λ = mean_n (Q_Sᵀ G_n Q_A)²  (EK-FAC)

λ = damping × mean(Λ) per layer (kronfluence's heuristic, 0.1 there). The factors are what kronfluence 1.0 stores,
under its names and with its meaning, one tensor per layer path: activation_covariance and gradient_covariance are the
SUMS Σ x̃x̃ᵀ and Σ ggᵀ with their token-row counts num_activation_covariance_processed and
num_gradient_covariance_processed; *_eigenvectors and *_eigenvalues decompose the means; lambda_matrix is the SUM
Σ_n (Q_Sᵀ G_n Q_A)² with its example count num_lambda_processed (the counts are int64 tensors of shape (1,)). So a
factors folder of ours is one kronfluence loads whole, and one kronfluence wrote reads back here (to_kronfluence,
from_kronfluence; interop/kronfluence.py writes and reads the folders). The sums are float64 and the (t, ε) of each
row are the Fisher's own (fisher.keyed_timesteps, noise keyed by the example id), so the factors do not depend on the
batch size beyond float64 rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .batching import MIN_UNET_ROWS, pad_rows
from .device import module_device, to_device
from ..errors import SettingsError
from .fisher import FisherSettings, keyed_timesteps
from .fisher_hooks import capture_linear_io, linear_rows, only_these_require_grad, split_linear

COVARIANCE_NAMES = ("activation_covariance", "gradient_covariance", "num_activation_covariance_processed",
                    "num_gradient_covariance_processed")
EIGEN_NAMES = ("activation_eigenvectors", "activation_eigenvalues", "gradient_eigenvectors", "gradient_eigenvalues")
LAMBDA_NAMES = ("lambda_matrix", "num_lambda_processed")
FACTOR_NAMES = COVARIANCE_NAMES + EIGEN_NAMES + LAMBDA_NAMES  # kronfluence's file stems, one file per name
COUNT_NAMES = ("num_activation_covariance_processed", "num_gradient_covariance_processed", "num_lambda_processed")


def layer_damped(fisher: dict[str, torch.Tensor], damping: float) -> dict[str, torch.Tensor]:
    """The diagonal Fisher with λ per tensor: F + damping × mean(F) of that tensor. One λ for a whole group lets the
    layers with the smallest gradients (whose F is nearest λ) take the largest steps; a λ at each layer's own scale caps
    every weight's step at 1 / (damping × its layer's mean), as K-FAC's damping does per layer."""
    return {name: f + damping * float(f.double().mean()) for name, f in fisher.items()}


def linear_layers(unet, params: dict, others: bool = False) -> list[str]:
    """The Linear layer paths of `params` (weights, and biases where present). Any other parameter is refused, or
    with `others` left to a diagonal preconditioner (KroneckerCurvature.diagonal)."""
    linear, other = split_linear(unet, params)
    if other and not others:
        raise SettingsError(f"K-FAC curvature covers Linear layers only; group has {len(other)} other parameters "
                            f"(e.g. {next(iter(other))}): use the diagonal curvature or a group of Linear layers")
    return sorted({name.rpartition(".")[0] for name in linear})


def homogeneous(x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """x̃ = [x, 1] on the last dimension (the bias's column) for a layer with a bias; x itself for one without."""
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1) if bias else x


def _layer_rows(model, paths, x0, cond, timesteps, noise, rows):
    """(path, x̃, g) per layer, float64 (rows, tokens, ·), from one forward and one backward of the batch."""
    unet, batch = model.unet, x0.shape[0]
    params = {f"{p}.weight": unet.get_submodule(p).weight for p in paths}
    with capture_linear_io(unet, paths, batch) as captured, only_these_require_grad(unet, params), \
            torch.enable_grad():
        loss = model.loss(x0, cond, timesteps, noise).sum()
    grads = torch.autograd.grad(loss, [output for _, output in captured.values()])
    for path, xs, gs in linear_rows(captured, grads, batch, rows):
        yield path, homogeneous(xs.double(), unet.get_submodule(path).bias is not None), gs.double()


def _batches(model, x0, cond, example_ids, settings: FisherSettings):
    """The Fisher's rows (example, sample) in blocks of whole MIN_UNET_ROWS: (x0, cond, t, noise, real rows)."""
    device = module_device(model.unet)
    ids = torch.as_tensor(example_ids, dtype=torch.int64)
    row = torch.arange(len(x0)).repeat_interleave(settings.samples_per_example)
    sample = torch.arange(settings.samples_per_example).repeat(len(x0))
    T = model.num_timesteps
    step = max(1, settings.batch_size // MIN_UNET_ROWS) * MIN_UNET_ROWS
    for start in range(0, len(row), step):
        batch = torch.arange(start, min(start + step, len(row)))
        count, batch = len(batch), pad_rows(batch)
        r, s = row[batch], sample[batch]
        t = keyed_timesteps(settings.seed, ids[r], s, T).to(device)
        noise = ops.gaussian_noise(settings.seed, ids[r].to(device), s.to(device), 0, x0.shape[1:], device=device)
        yield to_device(x0[r.to(x0.device)], device), to_device(cond[r.to(cond.device)], device), t, noise, count


def covariance_sums(model, paths, x0, cond, example_ids, settings: FisherSettings = FisherSettings()) -> dict:
    """{path: (Σ x̃x̃ᵀ, Σ ggᵀ, token rows)} over the Fisher's rows: sums of parts add up (resumable, shardable)."""
    sums = {}
    for x, c, t, noise, count in _batches(model, x0, cond, example_ids, settings):
        for path, xs, gs in _layer_rows(model, paths, x, c, t, noise, count):
            xf, gf = xs.reshape(-1, xs.shape[-1]), gs.reshape(-1, gs.shape[-1])
            a, s, n = sums.get(path, (0.0, 0.0, 0))
            sums[path] = (a + xf.T @ xf, s + gf.T @ gf, n + len(xf))
    return sums


def as_count(n: int) -> torch.Tensor:
    """A count as kronfluence keeps it: int64 of shape (1,)."""
    return torch.tensor([int(n)], dtype=torch.int64)


def eigenbases(sums: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Factors per layer from covariance sums: the sums with their counts, and the eigendecompositions of the means."""
    factors = {}
    for path, (a, s, n) in sums.items():
        # contiguous, as read back from a file: the preconditioner's products then round alike on either route
        a_values, a_vectors = (t.contiguous() for t in torch.linalg.eigh(a / n))
        s_values, s_vectors = (t.contiguous() for t in torch.linalg.eigh(s / n))
        factors[path] = {"activation_covariance": a, "gradient_covariance": s,
                         "num_activation_covariance_processed": as_count(n),
                         "num_gradient_covariance_processed": as_count(n),
                         "activation_eigenvectors": a_vectors, "activation_eigenvalues": a_values.clamp_min(0),
                         "gradient_eigenvectors": s_vectors, "gradient_eigenvalues": s_values.clamp_min(0)}
    return factors


def lambda_sums(model, factors: dict, x0, cond, example_ids, settings: FisherSettings = FisherSettings()) -> dict:
    """{path: (Σ_n (Q_Sᵀ G_n Q_A)², examples)}: EK-FAC's eigenvalue correction, a second pass over the same rows."""
    paths = sorted(factors)
    sums = {}
    for x, c, t, noise, count in _batches(model, x0, cond, example_ids, settings):
        for path, xs, gs in _layer_rows(model, paths, x, c, t, noise, count):
            f = factors[path]
            per_example = torch.einsum("nto,nti->noi", gs, xs)  # G_n (rows, out, in [+ 1])
            rotated = f["gradient_eigenvectors"].T @ per_example @ f["activation_eigenvectors"]
            total, n = sums.get(path, (0.0, 0))
            sums[path] = (total + rotated.square().sum(0), n + count)
    return sums


@dataclass
class KroneckerCurvature:
    """factors: {layer path: {FACTOR_NAMES: tensor}}; kind "kfac" or "ekfac"; damping: λ as a share of mean(Λ).
    diagonal: the damped diagonal Fisher {parameter: F + λ} that preconditions the weights no Linear layer holds
    (convolutions, norms: a group such as "all"), or None (then every unlearned weight needs factors)."""

    factors: dict
    kind: str = "ekfac"
    damping: float = 0.1
    diagonal: dict | None = None

    def __post_init__(self):
        if self.kind not in ("kfac", "ekfac"):
            raise SettingsError(f"Kronecker curvature kind must be 'kfac' or 'ekfac', got {self.kind!r}")
        if not self.damping > 0:
            raise SettingsError(f"curvature damping must be > 0 (a share of the mean eigenvalue), got {self.damping}")

    def eigenvalues(self, path: str) -> torch.Tensor:
        """Λ of one layer: EK-FAC's mean of the rotated squared gradients, or K-FAC's s aᵀ."""
        f = self.factors[path]
        if self.kind == "ekfac":
            return f["lambda_matrix"].double() / f["num_lambda_processed"]
        return torch.outer(f["gradient_eigenvalues"], f["activation_eigenvalues"])

    def check(self, params: dict[str, torch.Tensor]) -> None:
        """Before any work: factors (or a diagonal) for every parameter of `params` ({path.weight, path.bias?}), of
        the layer's shapes; a SettingsError naming the first that is not."""
        for path, f in self.factors.items():
            if f"{path}.weight" in params:
                self._with_bias(path, f, tuple(params[f"{path}.weight"].shape), f"{path}.bias" in params)
        missing = [name for name in params if name.rpartition(".")[0] not in self.factors
                   and not (self.diagonal is not None and name in self.diagonal)]
        if missing:
            raise SettingsError(f"the curvature has no factors for {missing[0]} (and {len(missing) - 1} more): "
                                "estimate it over the unlearned group")

    @staticmethod
    def _with_bias(path: str, f: dict, weight: tuple, bias: bool) -> bool:
        """Whether the layer's factors carry the bias column; a SettingsError when they fit another layer."""
        width, out_width = f["activation_eigenvectors"].shape[0], f["gradient_eigenvectors"].shape[0]
        if width not in (weight[1], weight[1] + 1) or out_width != weight[0]:
            raise SettingsError(f"the curvature of {path} is for a ({out_width}, {width}) gradient; the layer's "
                                f"weight is {weight}: the factors are of another model")
        if bias and width == weight[1]:
            raise SettingsError(f"the curvature of {path} has no bias column ({weight[1]} inputs) but the "
                                "gradient has a bias: the factors are of another layer")
        return width == weight[1] + 1

    def precondition(self, gradient: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """U = (Λ + λ)⁻¹ Ĝ in each layer's eigenbasis, for gradients {path.weight, path.bias?} (float64). A layer's
        factors have the bias column where its module has a bias (even when the gradient has none: then zero)."""
        out = {}
        for path, f in self.factors.items():
            weight = gradient[f"{path}.weight"]
            bias = gradient.get(f"{path}.bias")
            with_bias = self._with_bias(path, f, tuple(weight.shape), bias is not None)
            full = weight
            if with_bias:
                full = torch.cat([weight, (bias if bias is not None else torch.zeros_like(weight[:, 0]))[:, None]], 1)
            q_a, q_s = f["activation_eigenvectors"].to(full), f["gradient_eigenvectors"].to(full)
            values = self.eigenvalues(path).to(full)
            rotated = (q_s.T @ full @ q_a) / (values + self.damping * values.mean())
            update = q_s @ rotated @ q_a.T
            out[f"{path}.weight"] = update[:, :-1] if with_bias else update
            if bias is not None:
                out[f"{path}.bias"] = update[:, -1]
        for name in sorted(set(gradient) - set(out)):
            if self.diagonal is not None and name in self.diagonal:
                out[name] = gradient[name] / self.diagonal[name].to(gradient[name])
        missing = sorted(set(gradient) - set(out))
        if missing:  # check() says so before any work; a direct caller learns it here
            raise SettingsError(f"the curvature has no factors for {missing[0]} (and {len(missing) - 1} more): "
                                "estimate it over the unlearned group")
        return out


def estimate_curvature(model, params: dict, x0, cond, example_ids, kind: str = "ekfac",
                       settings: FisherSettings = FisherSettings(), damping: float = 0.1) -> KroneckerCurvature:
    """K-FAC or EK-FAC factors of the Linear layers of `params` over the rows (x0, cond, example_ids), in one pass
    (Workspace.curvature runs the same two passes chunked and resumable)."""
    paths = linear_layers(model.unet, params)
    factors = eigenbases(covariance_sums(model, paths, x0, cond, example_ids, settings))
    if kind == "ekfac":
        add_lambda(factors, lambda_sums(model, factors, x0, cond, example_ids, settings))
    return KroneckerCurvature(factors, kind, damping)


def add_sums(total: dict | None, part: dict) -> dict:
    """Two covariance_sums or lambda_sums results added (parts of the rows, in a fixed order)."""
    if total is None:
        return dict(part)
    return {path: tuple(a + b for a, b in zip(total[path], part[path])) for path in part}


def add_lambda(factors: dict, sums: dict) -> None:
    """EK-FAC's lambda_sums into the factors, as kronfluence keeps them: the sum and its example count."""
    for path, (total, n) in sums.items():
        factors[path]["lambda_matrix"] = total
        factors[path]["num_lambda_processed"] = as_count(n)


def sums_to_tensors(sums: dict) -> dict[str, torch.Tensor]:
    """covariance_sums / lambda_sums as flat tensors (a safetensors file: one chunk's part of a resumable pass)."""
    flat = {}
    for path, values in sums.items():
        for i, value in enumerate(values):
            flat[f"{path}#{i}"] = torch.as_tensor(value, dtype=torch.float64).contiguous()
    return flat


def sums_from_tensors(flat: dict[str, torch.Tensor]) -> dict:
    sums = {}
    for key in sorted(flat, key=lambda k: (k.rsplit("#", 1)[0], int(k.rsplit("#", 1)[1]))):
        path, _ = key.rsplit("#", 1)
        value = flat[key]
        sums.setdefault(path, []).append(value if value.ndim else int(value.item()))
    return {path: tuple(values) for path, values in sums.items()}


def kronfluence_arguments(kind: str) -> dict:
    """kronfluence 1.0's FactorArguments (factor_arguments.json, as its to_dict writes it) for our factors: the
    strategy, float64 throughout, every row (no max examples), gradients of the training loss at its own target."""
    float64 = str(torch.float64)
    return {"strategy": kind, "use_empirical_fisher": True, "amp_dtype": None, "amp_scale": 2.0 ** 16,
            "has_shared_parameters": False, "covariance_max_examples": None, "covariance_data_partitions": 1,
            "covariance_module_partitions": 1, "activation_covariance_dtype": float64,
            "gradient_covariance_dtype": float64, "eigendecomposition_dtype": float64, "lambda_max_examples": None,
            "lambda_data_partitions": 1, "lambda_module_partitions": 1, "use_iterative_lambda_aggregation": False,
            "offload_activations_to_cpu": False, "per_sample_gradient_dtype": float64, "lambda_dtype": float64}


def to_kronfluence(curvature: KroneckerCurvature) -> dict[str, dict[str, torch.Tensor]]:
    """{factor name: {layer path: tensor}}: one safetensors file per factor name, as kronfluence lays them out."""
    layout = {}
    for path, f in curvature.factors.items():
        for name, value in f.items():
            layout.setdefault(name, {})[path] = value.contiguous()
    return layout


def factor_files(curvature: KroneckerCurvature) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(factor name, {layer path: tensor}) of every file of a kronfluence factors folder, in the order to write them:
    the activation eigenvectors last, so that their file marks a folder complete (what readers look for)."""
    layout = to_kronfluence(curvature)
    last = "activation_eigenvectors"
    return [(name, layout[name]) for name in FACTOR_NAMES if name in layout and name != last] + [(last, layout[last])]


def from_kronfluence(layout: dict, kind: str = "ekfac", damping: float = 0.1) -> KroneckerCurvature:
    """A KroneckerCurvature from {factor name: {layer path: tensor}} (ours or kronfluence's files): floats as float64,
    counts as int64. The factors `kind` preconditions with must be there for every layer."""
    factors = {}
    for name, per_layer in layout.items():
        for path, value in per_layer.items():
            factors.setdefault(path, {})[name] = value.long() if name in COUNT_NAMES else value.double()
    needed = EIGEN_NAMES + (LAMBDA_NAMES if kind == "ekfac" else ())
    for path, f in factors.items():
        missing = [name for name in needed if name not in f]
        if missing:
            raise SettingsError(f"{kind} curvature of layer {path} lacks factor {missing[0]!r} "
                                f"({missing[0]}.safetensors has no tensor for it)")
    return KroneckerCurvature(factors, kind, damping)
