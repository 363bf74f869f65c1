"""What `prepare` computes for a work directory (the Workspace's settings): the loss grid, the Fisher's estimate and
group, the chunk plan, how images are preprocessed. Declared with no torch import, so the command line builds its
flags without loading the engines."""
from __future__ import annotations

from dataclasses import dataclass

from .data.preprocess import POLICIES
from .engine.fisher_settings import FisherSettings
from .engine.loss_grid import LossGrid
from .errors import SettingsError
from .settings import IMPLICIT, SPEED, count_or_zero, knob, positive_int, settings_key


@dataclass(frozen=True)
class PrepareSettings:
    """What prepare computes. scoring: the loss grid used before AND after unlearning (so it is fixed per work
    directory). fisher_group: the parameters the Fisher covers (unlearning may use this group or a subset).
    fisher_examples: how many caption rows (a seeded random subset) the Fisher averages over; None = all.
    chunk_rows: caption rows per resumable chunk (speed and resume granularity only). preprocess: how training images
    that are not RGB at the model's resolution are treated (data/preprocess.py: "resize-crop" or "refuse").
    resolution: the side the images are preprocessed to (None: the model's own; the Workspace sets it on the model)."""

    scoring: LossGrid = knob(default_factory=LossGrid, cli=False, help="the loss grid (LossGrid)")
    fisher: FisherSettings = knob(default_factory=FisherSettings, cli=False, help="the Fisher (FisherSettings)")
    fisher_group: str = knob("kv", help="parameters the Fisher covers")
    fisher_examples: int | None = knob(None, parse=count_or_zero, help="caption rows the Fisher averages over, a "
                                       "seeded subset (none or 0: every row)")
    chunk_rows: int = knob(1024, role=SPEED, parse=positive_int, help="caption rows per resumable chunk, the unit a "
                           "pass splits over torchrun's ranks (an array keeps the chunking it was made with)")
    resolution: int | None = knob(None, parse=positive_int, help="side in pixels the training images are "
                                  "preprocessed to (shorter side resized to it, centre crop), as diffusers' training "
                                  "scripts' --resolution; queries must have it too (none: the model's own: its "
                                  "training.json's, else its sample size × the VAE's factor)")
    preprocess: str = knob("resize-crop", choices=POLICIES, help="training images that are not RGB at the model's "
                           "resolution: resize the shorter side and centre-crop as diffusers' training scripts do, or "
                           "refuse them (either way, stated in the log)")

    def manifest(self) -> dict:
        """What the work directory is bound to: every field of role "numbers" (settings.settings_key)."""
        return settings_key(self)

    def validate(self, model) -> None:
        """Every setting checked against the model before anything is computed or recorded (SettingsError)."""
        self.scoring.timestep_values(model.num_timesteps)
        if self.fisher_examples is not None and (not isinstance(self.fisher_examples, int) or self.fisher_examples < 1):
            raise SettingsError(f"fisher_examples must be a number of rows >= 1, or None for every row (0 on the "
                                f"command line); got {self.fisher_examples!r}")
        if not isinstance(self.chunk_rows, int) or self.chunk_rows < 1:
            raise SettingsError(f"chunk_rows must be >= 1, got {self.chunk_rows!r}")
        if self.preprocess not in POLICIES:
            raise SettingsError(f"preprocess must be one of {POLICIES}, got {self.preprocess!r}")
        model.check_resolution(self.resolution)
        model.parameter_group(self.fisher_group)

    @classmethod
    def recorded_in(cls, work_dir) -> "PrepareSettings | None":
        """The settings work_dir's manifest records (default batch sizes), or None for a new folder."""
        from .store import read_manifest

        manifest = read_manifest(work_dir)
        return cls.from_manifest(manifest["settings"]) if manifest else None

    @classmethod
    def from_manifest(cls, numbers: dict, scoring_batch: int = 512, fisher_batch: int = 64) -> "PrepareSettings":
        """The settings a work directory was prepared with (its manifest), with the given batch sizes."""
        # A missing "noise" is the implicit "example" (IMPLICIT), not LossGrid's default.
        scoring = {"noise": IMPLICIT["noise"], **numbers["scoring"]}
        if isinstance(scoring.get("timesteps"), list):
            scoring["timesteps"] = tuple(scoring["timesteps"])
        return cls(scoring=LossGrid(**scoring, batch_size=scoring_batch),
                   fisher=FisherSettings(**numbers["fisher"], batch_size=fisher_batch),
                   fisher_group=numbers["fisher_group"], fisher_examples=numbers["fisher_examples"],
                   preprocess=numbers.get("preprocess", "resize-crop"), resolution=numbers.get("resolution"))
