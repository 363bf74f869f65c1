"""The public entry point: Attributor.prepare() once per (model, data, settings), then .attribute(queries).

    prepare:    latents ─ text embeddings ─ Fisher ─ base losses L(z, θ0)      (the Workspace, once)
    attribute:  query ─ unlearn (Fisher-preconditioned ascent) ─ losses after ─ τ = after − before ─ rank   (AbU)

A thin facade: the shared artefacts live in the Workspace (workspace.py) and attribution by unlearning is the AbU
method (methods/abu/method.py), which stands on the Workspace like every other method. The Attributor keeps the README's
API in one place: construct, prepare, attribute, write the outputs.
"""
from __future__ import annotations

import numpy as np
import torch

from .attribution import Attribution, ReportSettings
from .data.content import DigestCache
from .data.dataset import CaptionedImages
from .engine.distributed import Ranks
from .methods.abu import method as abu
from .methods.abu.method import AbU
from .methods.abu.two_stage import TwoStageAbU, resolve_candidates
from .models.adapter import DiffusionModel
from .query import Query
from .engine.unlearn import UnlearnSettings
from .score_rules import REFERENCE_RULES
from .trust import method_trust_signals, trust_signals, with_trust
from .workspace import PrepareSettings, Workspace

__all__ = ["Attributor", "PrepareSettings"]


class Attributor:
    """Attribution by unlearning over one training set, for one model.

    >>> attributor = Attributor(DiffusionModel.load("default"), open_dataset("default"), "work")
    >>> attribution = attributor.prepare().attribute([query_from_prompt(attributor.model, "red apple")])
    >>> attribution.save("work/report")
    """

    def __init__(self, model: DiffusionModel, dataset: CaptionedImages, work_dir, settings: PrepareSettings = None,
                 *, overwrite: bool = False, progress: bool = True, digest_cache: DigestCache | None = None,
                 lock_timeout: float | None = None, ranks: Ranks | None = None):
        """The Workspace's arguments (workspace.Workspace): settings=None reuses the folder's; a folder built from
        other content or settings is refused (store.StoreMismatchError) unless overwrite=True."""
        self.workspace = Workspace(model, dataset, work_dir, settings, overwrite=overwrite, progress=progress,
                                   digest_cache=digest_cache, lock_timeout=lock_timeout, ranks=ranks)

    # What callers read: the Workspace's parts.
    model = property(lambda self: self.workspace.model)
    dataset = property(lambda self: self.workspace.dataset)
    store = property(lambda self: self.workspace.store)
    settings = property(lambda self: self.workspace.settings)
    timings = property(lambda self: self.workspace.timings)
    ranks = property(lambda self: self.workspace.ranks)

    @property
    def caption_rows(self) -> np.ndarray:
        return self.workspace.caption_rows

    @property
    def latents(self) -> np.ndarray:
        return self.workspace.latents

    @property
    def conditioning(self) -> np.ndarray:
        return self.workspace.conditioning

    @property
    def fisher(self) -> dict[str, torch.Tensor]:
        """AbU's Fisher, as prepare() made it (NotPreparedError before)."""
        return self.workspace.prepared("fisher")

    @property
    def base_losses(self) -> np.ndarray:
        """AbU's losses before unlearning, as prepare() made them (NotPreparedError before)."""
        return self.workspace.prepared("base_losses")

    def prepare(self, methods=None) -> "Attributor":
        """Compute (or resume) what `methods` stand on (None: the default AbU's Fisher and base losses, beside the
        latents and text conditioning every method reads); artefacts already complete are read back."""
        self.workspace.prepare([AbU()] if methods is None else methods)
        return self

    def attribute(self, queries: list[Query] | Query, settings: UnlearnSettings = None, group_by: str | None = None,
                  candidates=None, controls: bool = False) -> Attribution:
        """Scores (queries, N) for each query; every query's unlearned weights and losses are resumable artefacts.
        group_by: a metadata field (groups.py), checked on every training image before any work. candidates: None
        (exact: every image rescored), a count or share ("10%") for the two-stage query (methods/abu/two_stage.py),
        or "auto" (exact below a measured size, and for settings the two-stage query cannot take: a score rule
        other than raw, Kronecker curvature). controls: also measure each answer's trust signals (trust.py: its
        specificity against reference queries, and how much of its top 10 the prompt alone and the image alone
        recover); the specificity is measured anyway for the rules that unlearn the reference queries."""
        self.check_group_by(group_by)
        settings = settings or UnlearnSettings()
        if candidates == "auto" and (settings.score != "raw" or settings.curvature != "diagonal"):
            candidates = None
        count = resolve_candidates(candidates, len(self.dataset))
        if count is None:
            attribution = abu.attribute_by_unlearning(self.workspace, queries, settings)
        else:
            two_stage = TwoStageAbU(settings, candidates=count)
            attribution = two_stage.attribute(self.workspace, queries)
        attribution.group_by = group_by
        if controls or settings.score in REFERENCE_RULES:
            queries = [queries] if isinstance(queries, Query) else list(queries)
            signals = trust_signals(self.workspace, queries, attribution.scores, settings, controls)
            with_trust(attribution, signals)
        return attribution

    def compare(self, queries: list[Query] | Query, methods, settings: UnlearnSettings = None, group_by: str | None = None,
                controls: bool = False, encoder: str | None = None) -> "Comparison":
        """Every method's attribution of the same queries, side by side (comparison.Comparison: one report, each
        image's rank under every method, where they agree). methods: names (methods.registry: "abu", "dtrak", "pixel",
        an AbU variant, …) or AttributionMethod objects; "abu" is the AbU `settings` describe, exactly as attribute()
        computes it. controls: each method's trust signals, measured by its own scores (trust.method_trust_signals).
        Every name is checked before any work."""
        from .comparison import Comparison
        from .methods.base import labelled, run_method
        from .methods.registry import methods_to_compare

        self.check_group_by(group_by)
        queries = [queries] if isinstance(queries, Query) else list(queries)
        settings = settings or UnlearnSettings()
        built = methods_to_compare(methods, encoder, abu=AbU(settings))
        for method in built.values():
            method.check(self.workspace)
        attributions = {}
        for name, method in built.items():
            if name == "abu":
                attribution = labelled(self.attribute(queries, settings, controls=controls), method)
            else:
                attribution = run_method(method, self.workspace, queries)
                if controls:
                    signals = method_trust_signals(self.workspace, method, queries, attribution.scores, controls,
                                                   settings.references)
                    with_trust(attribution, signals)
            attributions[name] = attribution
        comparison = Comparison(attributions)
        comparison.group_by = group_by
        return comparison

    def check_group_by(self, group_by: str | None) -> None:
        """A DataError naming the field and the first training row without it, before any unlearning."""
        if group_by:
            self.dataset.metadata_field(group_by)

    def check_unlearning(self, settings: UnlearnSettings) -> None:
        """The unlearning settings checked against the model and the Fisher's group before any work (SettingsError)."""
        abu.check_unlearning(self.workspace, settings)

    def preconditioner(self, settings: UnlearnSettings):
        return abu.preconditioner(self.workspace, settings)

    def retained_rows(self, settings: UnlearnSettings):
        return abu.retained_rows(self.workspace, settings)

    def reference_queries(self, count: int) -> list[Query]:
        return abu.reference_queries(self.workspace, count)

    def write_outputs(self, attribution, out: str | None = None, top_k: int = ReportSettings.top_k
                      ) -> dict[str, str]:
        """attribution.save into `out`, by default the work directory's own folder for these queries
        (attributions/<id>/, listed in attributions/index.json and index.html, with attributions/latest pointing at
        the newest). attribution: an Attribution or a Comparison (compare()). Written by rank 0; every rank gets the
        paths."""
        from .outputs import output_id, record_output

        workspace = self.workspace
        paths = {}

        def write():
            with workspace.store.locked():
                name = output_id(attribution.records, getattr(attribution, "methods", None))
                folder = out or str(workspace.store.artefact_path(f"attributions/{name}"))
                paths.update(attribution.save(folder, top_k=top_k))
                record_output(workspace.store.path, folder, attribution)
        workspace.on_main(write)
        return workspace.ranks.broadcast(paths)
