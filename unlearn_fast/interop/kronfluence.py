"""K-FAC / EK-FAC factors as kronfluence 1.0 keeps them on disk: written for kronfluence, and read back from it.

kronfluence's Analyzer keeps the factors named <name> in <output_dir>/<analysis_name>/factors_<name>/:

    factor_arguments.json                     FactorArguments.to_dict(): the strategy ("kfac", "ekfac"), dtypes
    activation_covariance.safetensors         Σ x̃x̃ᵀ per module, x̃ = [x, 1] only where the module has a bias
    gradient_covariance.safetensors           Σ ggᵀ, g = ∂L/∂y
    num_activation_covariance_processed.safetensors, num_gradient_covariance_processed.safetensors
                                              the token rows summed, int64 of shape (1,)
    activation_eigenvectors / activation_eigenvalues / gradient_eigenvectors / gradient_eigenvalues .safetensors
                                              eigendecompositions of the means (sum / count)
    lambda_matrix.safetensors, num_lambda_processed.safetensors
                                              EK-FAC's Σ_n (Q_Sᵀ G_n Q_A)² and the number of examples n

Every file maps a module path to a tensor. Ours are paths inside the UNet: give kronfluence the UNet itself as its model
(prepare_model(unet, task)), or pass module_prefix when its model held the UNet as a submodule. A work directory's
own curvature/factors_<kind>/ is such a folder (analysis_name "curvature", output_dir the work directory), so
kronfluence.Analyzer(...).load_all_factors(kind) reads it whole. Nothing here imports kronfluence.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..engine.curvature import (FACTOR_NAMES, KroneckerCurvature, factor_files, from_kronfluence,
                                kronfluence_arguments)
from ..store.atomic import atomic_write, write_json
from ..errors import UserInputError

ARGUMENTS_FILE = "factor_arguments.json"
FOLDER_PREFIX = "factors_"  # kronfluence's FACTOR_SAVE_PREFIX


class FactorsFolderError(UserInputError):
    """A factors folder that cannot be written as asked or read as kronfluence's."""


def factors_folder(output_dir: str | os.PathLike, analysis_name: str, factors_name: str) -> Path:
    """Where kronfluence's Analyzer(analysis_name, output_dir=output_dir) keeps the factors named factors_name."""
    return Path(output_dir) / analysis_name / f"{FOLDER_PREFIX}{factors_name}"


def save_factors(curvature: KroneckerCurvature, folder: str | os.PathLike, overwrite: bool = False,
                 module_prefix: str = "") -> Path:
    """Write `curvature` as a kronfluence factors folder (every factor file, the counts, factor_arguments.json).
    module_prefix: prepended to every module path, for a kronfluence model that holds the UNet as a submodule
    ("unet.")."""
    from safetensors.torch import save

    folder = Path(folder)
    taken = [name for name in (ARGUMENTS_FILE, *(f"{n}.safetensors" for n in FACTOR_NAMES)) if (folder / name).exists()]
    if taken and not overwrite:
        raise FactorsFolderError(f"{folder} already holds factors ({taken[0]}); pass overwrite to replace them")
    folder.mkdir(parents=True, exist_ok=True)
    # Each file atomically, in the work directory's order (the eigenvectors last): a killed save leaves no folder a
    # reader takes for complete. No checksum sidecars: the folder is kronfluence's.
    write_json(folder / ARGUMENTS_FILE, kronfluence_arguments(curvature.kind), checksum=False)
    for name, per_layer in factor_files(curvature):
        data = save({module_prefix + path: value.cpu().contiguous() for path, value in per_layer.items()})
        atomic_write(folder / f"{name}.safetensors", lambda handle, data=data: handle.write(data), checksum=False)
    return folder


def load_factors(folder: str | os.PathLike, kind: str | None = None, damping: float = 0.1,
                 module_prefix: str = "") -> KroneckerCurvature:
    """A KroneckerCurvature from a kronfluence factors folder (kronfluence's or ours). kind: "kfac" or "ekfac"; None
    reads the strategy from factor_arguments.json. module_prefix: the path of the UNet in the model kronfluence
    tracked ("unet." for a wrapper holding it as .unet): stripped from every module name, which must all start with
    it. damping: λ as a share of the mean eigenvalue (kronfluence's heuristic damping is 0.1)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise FactorsFolderError(f"{folder} is not a folder of kronfluence factors (factors_<name>/)")
    if kind is None:
        arguments = folder / ARGUMENTS_FILE
        if not arguments.is_file():
            raise FactorsFolderError(f"{folder} has no {ARGUMENTS_FILE}: pass kind ('kfac' or 'ekfac')")
        kind = json.loads(arguments.read_text(encoding="utf-8")).get("strategy")
    if kind not in ("kfac", "ekfac"):
        raise FactorsFolderError(f"{folder}: strategy {kind!r} is not a Kronecker curvature ('kfac' or 'ekfac')")
    layout = {}
    for name in FACTOR_NAMES:
        path = folder / f"{name}.safetensors"
        if path.is_file():
            layout[name] = {_without_prefix(module, module_prefix, path): value
                            for module, value in load_file(str(path)).items()}
    if "activation_eigenvectors" not in layout:
        raise FactorsFolderError(f"{folder} has no activation_eigenvectors.safetensors: run kronfluence's "
                                 "perform_eigendecomposition first")
    return from_kronfluence(layout, kind, damping)


def _without_prefix(module: str, prefix: str, path: Path) -> str:
    if not module.startswith(prefix):
        raise FactorsFolderError(f"{path}: module {module!r} is not under module_prefix {prefix!r}")
    return module[len(prefix):]
