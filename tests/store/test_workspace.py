"""The Workspace beneath every method: many queries scored in one sweep give each query's own bits, and the methods
stand on the Workspace, never on the Attributor facade."""
import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import unlearn_fast
from unlearn_fast.engine.step_rules import AlphaOverN
from unlearn_fast.attributor import Attributor
from unlearn_fast.data import open_dataset
from unlearn_fast.engine.fisher import FisherSettings
from unlearn_fast.query import query_from_array
from unlearn_fast.engine.loss_grid import LossGrid
from unlearn_fast.engine.scoring import losses_under_weights, per_example_losses
from unlearn_fast.engine.unlearn import UnlearnSettings
from unlearn_fast.engine.weight_swap import swapped_weights
from unlearn_fast.workspace import PrepareSettings, Workspace

UNLEARN = UnlearnSettings(step=AlphaOverN(3e-3), draws=16, batch_size=16)


def settings() -> PrepareSettings:
    return PrepareSettings(scoring=LossGrid(timesteps=2, flips=True, batch_size=24, seed=5, noise="shared"),
                           fisher=FisherSettings(batch_size=24, seed=5), chunk_rows=8)


@pytest.fixture(scope="module")
def data(default_image_folder):
    return default_image_folder(range(360, 380))


@pytest.fixture(scope="module")
def queries(default_dataset):
    from unlearn_fast.data import load_pixels

    pixels = load_pixels(default_dataset, 32, [369, 365, 372])
    return [query_from_array(image, default_dataset.captions(i)[0], 32, source=f"training image {i}")
            for image, i in zip(pixels, [369, 365, 372])]


def test_losses_under_several_weight_sets_have_each_sets_own_bits(model, default_dataset):
    from unlearn_fast.data import load_pixels

    x0 = model.encode_images(load_pixels(default_dataset, 32, range(10)))
    cond = model.encode_text([default_dataset.captions(i)[0] for i in range(10)])
    params = model.parameter_group("kv")
    generator = torch.Generator().manual_seed(0)
    sets = [{}, *({n: p + 0.05 * torch.randn(p.shape, generator=generator) for n, p in params.items()}
                  for _ in range(2))]
    grid = LossGrid(timesteps=3, batch_size=7, seed=2)
    together = losses_under_weights(model, x0, cond, range(10), grid, sets)
    assert together.shape == (3, 10, 3, 2)
    for q, weights in enumerate(sets):
        with swapped_weights(model.unet, weights):
            alone = per_example_losses(model, x0, cond, range(10), grid)
        assert torch.equal(together[q], alone), q
    assert not torch.equal(together[1], together[0])  # the sets really differ
    assert torch.equal(per_example_losses(model, x0, cond, range(10), grid), together[0])  # originals restored


def test_queries_scored_in_one_sweep_match_each_query_scored_alone(model, data, queries, tmp_path):
    together = Attributor(model, open_dataset(data), tmp_path / "together", settings(), progress=False)
    attribution = together.attribute(queries, UNLEARN)
    for q, query in enumerate(queries):
        alone = Attributor(model, open_dataset(data), tmp_path / f"alone{q}", settings(), progress=False)
        np.testing.assert_array_equal(alone.attribute([query], UNLEARN).scores[0], attribution.scores[q])
        assert attribution.records[q]["timings_s"]["queries_in_sweep"] == 3
    assert len({tuple(row) for row in attribution.scores}) == 3  # three different rankings, not one
    # asked again, with one new query: the known ones are read back, only the new one is unlearned and scored
    again = Workspace(model, open_dataset(data), tmp_path / "together", settings(), progress=False)
    from unlearn_fast.methods.abu.method import attribute_by_unlearning

    first = attribute_by_unlearning(again, queries[:2], UNLEARN)
    np.testing.assert_array_equal(first.scores, attribution.scores[:2])
    assert "unlearn" not in again.timings and "score" not in again.timings  # nothing unlearned or rescored


def test_methods_import_the_workspace_never_the_attributor():
    root = Path(unlearn_fast.__file__).parent
    for path in sorted((root / "methods").rglob("*.py")) + [root / "workspace.py"]:
        tree = ast.parse(path.read_text())
        imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not any(name.split(".")[-1] in ("attributor", "evaluate", "cli") for name in imported), path.name


def test_prepare_makes_only_what_the_methods_read_and_a_read_never_computes(model, data, tmp_path):
    """The Workspace holds what every method stands on; AbU's Fisher and base losses are AbU's (methods/abu/), made
    only when an AbU method is prepared. Reading an artefact before its phase ran is an error, not a computation."""
    from unlearn_fast.errors import NotPreparedError
    from unlearn_fast.methods import AbU, PixelCosine

    workspace = Workspace(model, open_dataset(data), tmp_path, settings(), progress=False)
    with pytest.raises(NotPreparedError, match="latents is read before prepare"):
        workspace.latents
    assert not (tmp_path / "latents").exists()  # the read started nothing
    workspace.prepare([PixelCosine()])
    assert workspace.latents.shape[0] == 20 and {"latents", "text"} <= set(workspace.timings)
    assert not list(tmp_path.glob("fisher*")) and not (tmp_path / "losses_base").exists()
    assert "fisher" not in workspace.timings
    workspace.prepare([AbU()])
    assert (tmp_path / "fisher.safetensors").is_file() and (tmp_path / "losses_base").is_dir()
    assert {"fisher", "base_losses"} <= set(workspace.timings)


def test_a_folder_recorded_without_a_noise_key_reopens_with_per_example_noise():
    """Per-example noise, the value folders had before the key existed, is left out of the record; reading a record
    back must give it, not LossGrid's default (shared): else an old folder would silently score with other noise."""
    from unlearn_fast.engine.loss_grid import LossGrid
    from unlearn_fast.workspace import PrepareSettings

    example = PrepareSettings(scoring=LossGrid(noise="example"))
    assert "noise" not in example.manifest()["scoring"]
    assert PrepareSettings.from_manifest(example.manifest()).scoring.noise == "example"
    assert PrepareSettings.from_manifest(PrepareSettings().manifest()).scoring.noise == LossGrid.noise == "shared"
