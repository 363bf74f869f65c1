"""Building each method of an evaluation: its options, its α chosen on validation, the work directory it needs.

Every harness (counterfactual, LDS, ground truth) asks for methods by name (methods.build_method, AbU variants
included). A method whose numbers depend on how the work directory is prepared (an AbU variant with shared noise, or
a Fisher over a larger group) gets its own work directory beside the default one, named by what differs.
"""
from __future__ import annotations

import dataclasses
import os

from .validation import Validation, caption_validation, choose_step


def prepared_settings(settings, overrides: dict):
    """PrepareSettings `settings` with the method's overrides (methods.AttributionMethod.prepare_overrides)."""
    values = dict(overrides)
    if "noise" in values:
        values["scoring"] = dataclasses.replace(settings.scoring, noise=values.pop("noise"))
    return dataclasses.replace(settings, **values)


def work_dir_for(folder: str, overrides: dict) -> str:
    """folder for the default preparation, folder-<key>-<value>… for another."""
    return folder if not overrides else folder + "".join(f"-{k}-{v}" for k, v in sorted(overrides.items()))


class Workspaces:
    """One Workspace per preparation the methods ask for, over one model and data set, made on first use."""

    def __init__(self, model, dataset, folder: str, settings=None):
        """settings: the default preparation (None: what `folder` records, or the defaults)."""
        self.model, self.dataset, self.folder, self.settings = model, dataset, folder, settings
        self._made = {}

    def __call__(self, overrides: dict | None = None):
        from ..workspace import PrepareSettings, Workspace

        path = work_dir_for(self.folder, overrides or {})
        if path not in self._made:
            settings = self.settings
            if overrides:
                base = settings or PrepareSettings.recorded_in(self.folder) or PrepareSettings()
                settings = prepared_settings(base, overrides)
            self._made[path] = Workspace(self.model, self.dataset, path, settings, progress=False)
        return self._made[path]


def configured_method(name: str, setup, workspaces: Workspaces, held_out, folder: str,
                      validation: Validation | None = None):
    """(method, workspace, options) for method `name` of `setup` (its method_options, abu_step_factors,
    validation_prompts, query_steps, encoder): an AbU variant without a given step gets, among its own step rule at
    its value × abu_step_factors, the one `validation` judges best (None: MRR on training captions, never the
    `held_out` prompts), recorded in folder/validation[-lds][-<name>].json."""
    from ..methods import AbU, build_method

    options = dict(setup.method_options.get(name, {}))
    encoder = getattr(setup, "encoder", None)
    method = build_method(name, encoder=encoder, **options)
    workspace = workspaces(method.prepare_overrides())
    if isinstance(method, AbU) and "step" not in options and len(setup.abu_step_factors) > 1:
        if validation is None:
            validation = caption_validation(workspace.model, workspace.dataset, setup.validation_prompts,
                                            setup.query_steps, held_out)
        stem = "validation" + ("" if validation.criterion == "mrr" else f"-{validation.criterion}")
        record = os.path.join(folder, f"{stem}.json" if name == "abu" else f"{stem}-{name}.json")
        options["step"] = str(choose_step(workspace, method.unlearn.step, setup.abu_step_factors, name, options,
                                          validation, record))
        method = build_method(name, encoder=encoder, **options)
    return method, workspace, options
