"""The ``unlearn-fast`` command. Each verb is a thin layer over the Python API; ``unlearn-fast VERB --help`` explains it."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import shlex
import sys
import time

from .. import __version__
from ..settings import SPEED, add_arguments, command_line_fields, given, role
from .arguments import (Parser, RetiredFlag, candidate_spec, count_or_zero, device_argument, model_config_argument,
                        positive_int, variant_argument)


SAMPLE_FLAGS = {"steps": "--sample-steps"}  # attribute and demo: --steps would read as the unlearning's


def _speed_fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in command_line_fields(cls) if role(f) == SPEED)


def _other_fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in command_line_fields(cls) if role(f) != SPEED)



def _read_indices(spec: str | None) -> list[int]:
    """Indices from '3,17,42', or a list file as --subset reads it (data/subset.listed_entries: one per line, a line
    may hold several separated by commas; a .json list or a .npy array)."""
    if not spec:
        return []
    if os.path.isfile(spec):
        from ..data.subset import listed_entries

        entries = [(f"{spec} line {line}", part) for line, entry in listed_entries(spec) for part in entry.split(",")]
    else:
        entries = [("--exclude", part) for part in spec.split(",")]
    entries = [(where, part.strip()) for where, part in entries if part.strip()]
    bad = next(((where, part) for where, part in entries if not part.lstrip("-").isdigit()), None)
    if bad is not None:
        raise SystemExit(f"{bad[0]}: {bad[1][:80]!r}: expected comma-separated integers or a file of them")
    return [int(part) for _, part in entries]


def cmd_train(args) -> None:
    import torch

    from ..engine.device import resolve_device
    from ..training.config import TrainingConfig
    from ..training.run import TrainRequest, run_training

    torch.set_num_threads(args.threads or torch.get_num_threads())
    recipe = given(args, TrainingConfig)  # the parser's defaults are the config's own (add_arguments' real defaults)
    request = TrainRequest(
        data=args.data, out=args.out, init_from=args.init_from, vae_from=args.vae_from, exclude=_read_indices(args.exclude),
        add_tokens=args.add_token or [], **recipe, architecture=args.architecture,
        caption_column=args.caption_column, image_column=args.image_column,
        subset=os.path.abspath(args.subset) if args.subset else None, command="unlearn-fast " + " ".join(shlex.quote(a) for a in args.argv),
        device=str(resolve_device(args.device)),
    )
    summary = run_training(request, quiet=args.quiet)
    print(json.dumps(summary, indent=None if args.json else 2))


def cmd_generate(args) -> None:
    import numpy as np
    from PIL import Image

    model = _load_model(args)
    prompts = args.prompt
    images = model.generate(prompts, seed=args.seed, steps=args.steps, guidance=args.guidance)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    if len(images) == 1:
        Image.fromarray(images[0]).save(args.out)
    else:
        Image.fromarray(np.concatenate(list(images), axis=1)).save(args.out)
    print(json.dumps({"out": os.path.abspath(args.out), "prompts": prompts, "seed": args.seed, "steps": args.steps,
                      "guidance": args.guidance}))


def cmd_grid(args) -> None:
    from ..report.grid import sample_grid

    model = _load_model(args)
    path = sample_grid(model, args.prompt, args.out, seeds=range(args.seed, args.seed + args.per_prompt),
                       steps=args.steps, guidance=args.guidance)
    print(json.dumps({"out": os.path.abspath(path)}))


DEMO_PROMPT = "red apple"


def _threads(args) -> None:
    import torch

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)


def _prepare_settings(args):
    """PrepareSettings from the command line: numeric options not given keep the work directory's values (or the
    defaults for a new one); the speed options (batch size, compile, channels_last) always come from the command."""
    from ..engine.fisher_settings import FisherSettings
    from ..engine.loss_grid import LossGrid
    from ..methods.abu.recipes import recipe_noise
    from ..prepare_settings import PrepareSettings

    scoring, fisher, other = given(args, LossGrid), given(args, FisherSettings), given(args, PrepareSettings)
    recorded = PrepareSettings.recorded_in(args.work_dir)
    base = recorded or PrepareSettings()
    # The noise key follows the recipe; a folder prepared with the other key is named with what to do.
    recipe = getattr(args, "recipe", None) or "default"
    if recorded and "noise" not in scoring and recorded.scoring.noise != recipe_noise(recipe) and not args.overwrite:
        from ..errors import SettingsError

        other_recipe = next((name for name in ("default", "paper") if recipe_noise(name) == recorded.scoring.noise),
                            None)
        raise SettingsError(
            f"{args.work_dir} was prepared with scoring noise {recorded.scoring.noise!r}, the {recipe} recipe scores "
            f"with {recipe_noise(recipe)!r}: give --noise {recorded.scoring.noise}"
            + (f" (or --recipe {other_recipe})" if other_recipe and hasattr(args, "recipe") else "")
            + " to use it as it is, or --overwrite to recompute its base losses (its latents, text and Fisher are kept)")
    scoring.setdefault("noise", recipe_noise(recipe))
    if "seed" in scoring:
        fisher["seed"] = scoring["seed"]  # --score-seed seeds both passes
    speed = {name: scoring.pop(name, getattr(LossGrid, name)) for name in _speed_fields(LossGrid)}
    if other.get("fisher_examples") == 0:  # 0 = every row
        other["fisher_examples"] = None
    return dataclasses.replace(base, scoring=dataclasses.replace(base.scoring, **speed, **scoring),
                               fisher=dataclasses.replace(base.fisher, **fisher), **other)


def _load_model(args):
    """The model folder of --model on the device of --device (auto: a CUDA GPU when torch sees one)."""
    from ..engine.device import resolve_device
    from ..models.adapter import DiffusionModel

    model = DiffusionModel.load(args.model, device=resolve_device(args.device), variant=getattr(args, "variant", None),
                                config=getattr(args, "model_config", None))
    if getattr(args, "lora", None):
        from ..models.lora import load_lora

        load_lora(model, args.lora)
    return model


def _resolve_sources(args) -> None:
    """--model, --variant, --model-config, --lora, --data, --caption-column, --image-column and --subset not given:
    what the work directory recorded (a new folder: the shipped default model and data); --variant and --model-config
    only with --model (a folder named without --variant is read from its plain files; a single file named without
    --model-config is refused). --lora implies --group lora and --fisher-group lora unless they are given."""
    from ..errors import SettingsError
    from ..store import recorded_sources

    recorded = recorded_sources(args.work_dir) if os.path.isdir(args.work_dir) else None
    model_named = args.model is not None  # then its plain files and its own config, unless given with it
    for name, default in (("model", "default"), ("variant", None), ("model_config", None), ("data", "default"),
                          ("caption_column", "text"), ("image_column", "image"), ("subset", None), ("lora", None),
                          ("base_model", None)):
        if getattr(args, name) is not None or (model_named and name in ("variant", "model_config")):
            continue
        if recorded is None:
            setattr(args, name, default)
        elif name in recorded:
            setattr(args, name, recorded[name])
        elif default is None or name in ("caption_column", "image_column"):
            setattr(args, name, default)
        else:  # a folder prepared before sources were recorded: never guess the shipped default for it
            raise SettingsError(f"--{name.replace('_', '-')}: {args.work_dir} does not record its {name} (prepared "
                                f"by an earlier version); give --{name.replace('_', '-')}")
    if args.lora:
        if getattr(args, "fisher_group", None) is None:
            args.fisher_group = "lora"
        if hasattr(args, "group") and args.group is None:
            args.group = "lora"
    if args.base_model:  # the tensors the fine-tune changed most: the default group of both
        if getattr(args, "fisher_group", None) is None and (recorded is None or "base_model" in recorded):
            args.fisher_group = "changed"
        if hasattr(args, "group") and args.group is None:
            args.group = "changed"
    if recorded is None and getattr(args, "fisher_group", None) is None:
        from ..methods.abu.recipes import recipe_group

        # A new folder: the Fisher covers the group asked to unlearn, else the recipe's.
        args.fisher_group = getattr(args, "group", None) or recipe_group(getattr(args, "recipe", None) or "default")


def _changed_group(args, model) -> None:
    """--group / --fisher-group "changed" become the regex of the tensors the fine-tune changed (models.changed)."""
    if "changed" not in (getattr(args, "group", None), getattr(args, "fisher_group", None)):
        return
    from ..errors import SettingsError

    if not args.base_model:
        raise SettingsError("--group changed: give --base-model, the model the fine-tune started from")
    from ..models.adapter import DiffusionModel
    from ..models.changed import changed_group

    pattern = changed_group(model, DiffusionModel.load(args.base_model, device=model.device))
    model.base_model = args.base_model if args.base_model == "default" else os.path.abspath(args.base_model)
    for name in ("group", "fisher_group"):
        if getattr(args, name, None) == "changed":
            setattr(args, name, pattern)


def _attributor(args):
    from ..attributor import Attributor
    from ..data import open_dataset

    _threads(args)
    model = _load_model(args)
    _changed_group(args, model)
    dataset = open_dataset(args.data, caption_column=args.caption_column, image_column=args.image_column,
                           subset=args.subset)
    if getattr(args, "group_by", None):  # a missing field fails here, before the work directory is touched
        dataset.metadata_field(args.group_by)
    return Attributor(model, dataset, args.work_dir, _prepare_settings(args), overwrite=args.overwrite,
                      progress=not args.quiet)


def _job(workspace) -> dict:
    """What the summary says about the processes: the world size and the chunks each rank computed per pass."""
    return {"world_size": workspace.ranks.world_size, "chunks_by_rank": workspace.chunks_by_rank}


def cmd_prepare(args) -> None:
    _resolve_sources(args)
    attributor = _attributor(args).prepare()
    if attributor.ranks.is_main:  # one summary per job
        print(json.dumps({"work_dir": os.path.abspath(args.work_dir), "num_train": len(attributor.dataset),
                          "timings_s": attributor.timings, **_job(attributor.workspace)}))


def _queries(args, model) -> list:
    from ..query import query_from_file, query_from_prompt, read_mask

    prompts, images = args.prompt or [], args.image or []
    if not prompts:
        raise SystemExit("attribute: give --prompt (with --image FILE, or alone to generate the query with --seed)")
    if images and len(images) != len(prompts):
        raise SystemExit(f"attribute: {len(images)} --image for {len(prompts)} --prompt; give one prompt per image")
    masks = getattr(args, "mask", None) or []
    if masks and len(masks) != len(prompts):
        raise SystemExit(f"attribute: {len(masks)} --mask for {len(prompts)} --prompt; give one mask per query")
    # A QueryError (size, mode, file) reaches main(), which prints it as one line; masks are read before any generation.
    regions = [read_mask(path, (model.resolution, model.resolution)) for path in masks]
    if images:
        queries = [query_from_file(path, prompt, model.resolution) for path, prompt in zip(images, prompts)]
    else:
        queries = [query_from_prompt(model, prompt, seed=args.seed, steps=args.sample_steps, guidance=args.guidance,
                                     progress=not args.quiet) for prompt in prompts]
    return [query.with_mask(region, os.path.abspath(path))
            for query, region, path in zip(queries, regions, masks)] or queries


def _unlearn_settings(args):
    """The recipe's settings (the dataclass defaults for "default"), then every option the command line gave."""
    from ..engine.unlearn_settings import UnlearnSettings
    from ..methods.abu.recipes import RECIPES

    recipe = {k: v for k, v in RECIPES[args.recipe].items() if k != "noise"}
    return UnlearnSettings(**{**recipe, **given(args, UnlearnSettings)})


def _report_settings(args):
    from ..report.settings import ReportSettings

    return ReportSettings(**given(args, ReportSettings))


def _finish(attribution, paths: dict, top_k: int, as_json: bool, started: float, verb: str, job: dict | None = None
            ) -> None:
    summary = attribution.summary(top_k=min(top_k, 5))
    summary.update(files=paths, seconds=round(time.perf_counter() - started, 1), **(job or {}))
    if as_json:
        print(json.dumps(summary))
        return
    for query in summary["queries"]:
        best = ", ".join(f"#{r['rank']} {r['caption']} ({r['score']:.2e})" for r in query["top"])
        print(f"{query['prompt']!r}: {best}")
        if "trust" in query:
            print(f"  trust: {query['trust']['verdict']}")
    print(f"unlearn-fast {verb}: report {paths['report']} ({summary['seconds']} s)")


def cmd_attribute(args) -> None:
    from ..attribution import check_output_folder

    from ..query import check_prompt

    started = time.perf_counter()
    for prompt in args.prompt or []:  # before the work directory is touched
        check_prompt(prompt, "--prompt")
    if args.out:
        check_output_folder(args.out)  # before any work: a folder of other files is never written into
    if args.methods:  # an unknown or repeated name, a missing --encoder: named before any work
        from ..methods.registry import methods_to_compare

        methods_to_compare(args.methods, encoder=args.encoder)
    _resolve_sources(args)  # before the unlearning settings: --lora sets their group
    settings = _unlearn_settings(args)
    attributor = _attributor(args)
    if settings.group == "changed":  # resolved against --base-model when the model loaded
        settings = dataclasses.replace(settings, group=args.group)
    attributor.check_unlearning(settings)
    ranks = attributor.ranks  # rank 0 reads or generates the queries, so every rank attributes the same images
    queries = ranks.broadcast(_queries(args, attributor.model) if ranks.is_main else None)
    if args.methods:
        comparison = attributor.compare(queries, args.methods, settings, group_by=args.group_by,
                                        controls=args.controls, encoder=args.encoder)
        top_k = _report_settings(args).top_k
        paths = attributor.write_outputs(comparison, args.out, top_k=top_k)
        if ranks.is_main:
            _finish_comparison(comparison, paths, top_k, args.json, started, _job(attributor.workspace))
        return
    attribution = attributor.attribute(queries, settings, group_by=args.group_by,
                                       candidates=None if args.candidates == "exact" else args.candidates,
                                       controls=args.controls)
    top_k = _report_settings(args).top_k
    paths = attributor.write_outputs(attribution, args.out, top_k=top_k)
    if ranks.is_main:
        _finish(attribution, paths, top_k, args.json, started, "attribute", _job(attributor.workspace))


def _finish_comparison(comparison, paths: dict, top_k: int, as_json: bool, started: float, job: dict) -> None:
    summary = comparison.summary(top_k=min(top_k, 5))
    summary.update(files=paths, seconds=round(time.perf_counter() - started, 1), **job)
    if as_json:
        print(json.dumps(summary))
        return
    for query in summary["queries"]:
        print(f"{query['prompt']!r}:")
        for method, top in query["top"].items():
            print(f"  {method}: " + ", ".join(f"#{r['rank']} {r['caption']}" for r in top[:3]))
        for pair in query["agreement"]:
            print(f"  {pair['a']} and {pair['b']}: {pair['top_k_overlap']:.0%} of the top {min(top_k, 5)} in common,"
                  f" Spearman {pair['spearman']:.2f}")
    print(f"unlearn-fast attribute: comparison {paths['report']} ({summary['seconds']} s)")


def cmd_report(args) -> None:
    from ..attribution import Attribution, check_output_folder
    from ..comparison import Comparison, is_comparison
    from ..outputs import resolve_output

    started = time.perf_counter()
    args.attribution = resolve_output(args.attribution)
    compared = is_comparison(args.attribution)  # attribute --methods: every method's folder and the comparison page
    result = (Comparison if compared else Attribution).load(args.attribution)
    if args.group_by:
        result.dataset.metadata_field(args.group_by)  # the one-line error before anything is written
        result.group_by = args.group_by
    out = args.out or args.attribution
    check_output_folder(out)
    top_k = _report_settings(args).top_k
    paths = result.save(out, top_k=top_k)
    if compared:
        _finish_comparison(result, paths, top_k, args.json, started, {})
    else:
        _finish(result, paths, top_k, args.json, started, "report")


def cmd_demo(args) -> None:
    """The main job on the embedded default: generate a query with the shipped model, attribute it, write the report.

    Demo-sized settings (demo_settings) keep it within a minute on 2 CPU cores; `unlearn-fast attribute` uses the
    full defaults.
    """
    from ..attributor import Attributor
    from ..data import open_dataset
    from ..query import query_from_prompt

    started = time.perf_counter()
    _threads(args)
    unlearning = _unlearn_settings(args)
    model = _load_model(args)
    settings = demo_settings(args, unlearning)
    work_dir = os.path.join(args.out, "work")
    attributor = Attributor(model, open_dataset("default"), work_dir, settings, progress=not args.quiet)
    query = query_from_prompt(model, args.prompt, seed=args.seed, steps=args.sample_steps, guidance=args.guidance,
                              progress=not args.quiet)
    attribution = attributor.attribute([query], unlearning)
    top_k = _report_settings(args).top_k
    paths = attributor.write_outputs(attribution, os.path.join(args.out, "report"), top_k=top_k)
    _finish(attribution, paths, top_k, args.json, started, "demo")


def demo_settings(args, unlearning):
    """The demo's prepare settings: 3 timesteps, no flips, a 1,024-row Fisher (the full defaults: 10 timesteps, both
    flips, every row) so that the whole run fits in a minute on 2 CPU cores: on the validation prompts these settings
    still put the prompt's own training image in the top 10 every time (benchmarks/results/tuning.md). From the demo's
    parsed `args` and `unlearning` settings: their speed options, the recipe's noise key and a Fisher over the group
    the demo unlearns."""
    from ..engine.loss_grid import LossGrid
    from ..methods.abu.recipes import recipe_noise
    from ..prepare_settings import PrepareSettings

    settings = PrepareSettings(scoring=LossGrid(timesteps=3, flips=False, batch_size=128), fisher_examples=1024)
    speed = given(args, LossGrid, ("compile", "channels_last"))
    return dataclasses.replace(settings, fisher_group=unlearning.group, scoring=dataclasses.replace(
        settings.scoring, noise=recipe_noise(args.recipe), **speed))


def cmd_verify(args) -> None:
    from ..store.verify import verify_work_dir

    report = verify_work_dir(args.work_dir, repair=args.repair)
    if args.json:
        print(json.dumps(report.summary()))
    else:
        for finding in report.damaged:
            action = finding.repair if args.repair else f"--repair: {finding.repair}"
            print(f"DAMAGED {finding.path}: {finding.problem} ({action})")
        state = "ok" if report.ok else (f"{len(report.damaged)} damaged, repaired" if args.repair
                                        else f"{len(report.damaged)} damaged")
        print(f"unlearn-fast verify: {args.work_dir}: {state} ({report.checked_files} files and "
              f"{report.checked_chunks} chunks checked against their digests"
              + (f"; {len(report.unchecked)} files written before digests existed" if report.unchecked else "") + ")")
    if not report.ok and not args.repair:
        raise SystemExit(1)


def cmd_export_data(args) -> None:
    from ..data import export_imagefolder, open_dataset

    dataset = open_dataset(args.data)
    export_imagefolder(dataset, args.out)
    print(json.dumps({"out": os.path.abspath(args.out), "images": len(dataset)}))


def cmd_export_scores(args) -> None:
    import numpy as np

    from ..interop.exporters import ExportError, export_scores

    path = os.path.join(args.attribution, "scores.npy") if os.path.isdir(args.attribution) else args.attribution
    if not os.path.isfile(path):
        raise ExportError(f"{path}: no such file (give a folder written by attribute, or its scores.npy)")
    out = export_scores(np.load(path), args.format, args.out, args.experiment, args.overwrite)
    print(json.dumps({"out": out, "format": args.format}))


def _sampling_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--model", default="default", help="model folder ('default': the shipped emoji model) or a "
                        "Stable Diffusion single-file checkpoint (.safetensors, with --model-config)")
    variant_argument(parser)
    model_config_argument(parser)
    parser.add_argument("--out", default=out)
    from ..models.sampling import SamplingSettings

    add_arguments(parser, SamplingSettings, real_defaults=True)
    device_argument(parser)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The command's parser. verb: build only that verb's options (main passes the verb it was given, "" for none,
    so `unlearn-fast --help` imports neither torch nor diffusers); None: every verb's."""
    def wanted(name: str) -> bool:
        return verb is None or verb == name

    parser = Parser(prog="unlearn-fast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"unlearn-fast {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True)

    train = sub.add_parser("train", help="train the VAE and the diffusion model (or fine-tune one) on a captioned set")
    train.add_argument("--data", default="default", help="'default', an image folder with metadata.jsonl, a .parquet "
                       "file, a folder of parquet shards or webdataset shards")
    train.add_argument("--caption-column", default="text")
    train.add_argument("--image-column", default="image", help="parquet data: the images' column")
    train.add_argument("--subset", metavar="FILE", help="train on these images only: a file of file names or row "
                       "indices, one per line (or .json / .npy)")
    train.add_argument("--out", required=True, help="model folder to write (diffusers layout)")
    train.add_argument("--init-from", help="model folder to fine-tune from (all weights)")
    train.add_argument("--vae-from", help="model folder whose VAE to reuse (no VAE training): leave-K-out retraining")
    train.add_argument("--exclude", help="training indices never to show the model: '3,17,42' or a file")
    train.add_argument("--add-token", action="append", help="new word for the vocabulary, e.g. '<v1>' (repeatable)")
    if wanted("train"):
        from ..training.config import TrainingConfig

        # Real defaults: nothing recorded overrides a training number, so the parser holds the config's own values.
        add_arguments(train, TrainingConfig, real_defaults=True)
    train.add_argument("--architecture", choices=("unet", "dit"), default="unet", help="a new model's denoiser: the "
                       "default UNet (DDPM) or the tiny PixArt-style DiT trained with flow matching (ignored with "
                       "--init-from)")
    train.add_argument("--threads", type=count_or_zero, default=0, help="torch CPU threads (0: torch's default)")
    device_argument(train)
    train.add_argument("--quiet", action="store_true")
    train.add_argument("--json", action="store_true")
    train.set_defaults(run=cmd_train)

    generate = sub.add_parser("generate", help="prompt + seed → PNG (DDIM, classifier-free guidance)")
    generate.add_argument("prompt", nargs="+")
    _sampling_arguments(generate, out="generated.png")
    generate.set_defaults(run=cmd_generate)

    grid = sub.add_parser("grid", help="a labelled sample grid: prompts × seeds → PNG")
    grid.add_argument("prompt", nargs="+")
    _sampling_arguments(grid, out="samples.png")
    grid.add_argument("--per-prompt", type=positive_int, default=4)
    grid.set_defaults(run=cmd_grid)

    def work_arguments(p):
        from ..engine.fisher_settings import FisherSettings
        from ..engine.loss_grid import LossGrid
        from ..methods.abu.recipes import recipe_group, recipe_noise
        from ..prepare_settings import PrepareSettings

        p.add_argument("--model", help="model folder ('default': the shipped emoji model), a diffusers pipeline "
                       "folder of any supported family (README: Model families), or a Stable Diffusion single-file "
                       "checkpoint (.safetensors, with --model-config); default: the one the work directory recorded, "
                       "else 'default'")
        variant_argument(p, "; default: the work directory's, else the plain files")
        model_config_argument(p, "; default: the work directory's when --model is not given")
        p.add_argument("--lora", help="a LoRA adapter (diffusers' pytorch_lora_weights.safetensors or its folder) on "
                       "the model; its A/B matrices are then the Fisher's and the unlearning's group unless "
                       "--fisher-group / --group say otherwise; default: the one the work directory recorded")
        p.add_argument("--base-model", help="the model a fine-tune started from (--model being the fine-tuned one): "
                       "the group 'changed', the tensors the fine-tune changed most, becomes the Fisher's and the "
                       "unlearning's group unless --fisher-group / --group say otherwise")
        p.add_argument("--data", help="training set: 'default', an image folder with metadata.jsonl, a .parquet "
                       "file, a folder of parquet shards or webdataset shards; default: the one the work directory "
                       "recorded, else 'default'")
        p.add_argument("--caption-column", help="caption column or key (default: the work directory's, else text)")
        p.add_argument("--image-column", help="parquet data: the images' column (default: the work directory's, else "
                       "image)")
        p.add_argument("--subset", metavar="FILE", help="attribute over these training images only: a file of file "
                       "names or row indices, one per line (or .json / .npy); default: the work directory's, else all")
        p.add_argument("--work-dir", required=True, help="folder for the prepared artefacts (one per model + data)")
        p.add_argument("--overwrite", action="store_true", help="when the inputs or settings differ from the work "
                       "directory's, delete exactly the artefacts they invalidate (the refusal without it lists them)")
        numbers = p.add_argument_group("prepare settings (default: the work directory's own, else the defaults)")
        add_arguments(numbers, LossGrid, only=_other_fields(LossGrid), notes={
            "noise": f"--recipe paper: {recipe_noise('paper')}"})
        add_arguments(numbers, FisherSettings)
        add_arguments(numbers, PrepareSettings, notes={
            "fisher_group": f"a new folder: --group's, else the recipe's, {recipe_group('paper')} for --recipe paper"})
        speed = p.add_argument_group("speed only (never the numbers; from the command, not the work directory)")
        add_arguments(speed, LossGrid, only=_speed_fields(LossGrid))
        p.add_argument("--threads", type=count_or_zero, default=0, help="torch CPU threads (0: torch's default)")
        device_argument(p)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")

    def query_arguments(p):
        from ..report.settings import ReportSettings
        from ..engine.unlearn_settings import UnlearnSettings
        from ..methods.abu.recipes import PAPER

        from ..models.sampling import SamplingSettings

        generated = p.add_argument_group("a query generated from its prompt (no --image)")
        add_arguments(generated, SamplingSettings, flags=SAMPLE_FLAGS, real_defaults=True)
        unlearning = p.add_argument_group("unlearning (METHOD.md §4)")
        unlearning.add_argument("--recipe", choices=("default", "paper"), default="default",
                                help="AbU's settings before the options below: the package's default or the paper's "
                                "(README, 'AbU variants')")
        add_arguments(unlearning, UnlearnSettings, notes={
            "step": f"--recipe paper: {PAPER['step']}", "group": "with --lora: lora; with --base-model: changed"})
        unlearning.add_argument("--alpha", action=RetiredFlag, help=argparse.SUPPRESS,
                                replacement="--step RULE:VALUE (fixed:7.5e-6, alpha/N:0.1 or rise:0.1)")
        add_arguments(p, ReportSettings)

    prepare = sub.add_parser("prepare", help="encode the training set, estimate the Fisher and the base losses")
    if wanted("prepare"):
        work_arguments(prepare)
    prepare.set_defaults(run=cmd_prepare)

    attribute = sub.add_parser("attribute", help="rank the training images behind a generated image")
    if wanted("attribute"):
        work_arguments(attribute)
    attribute.add_argument("--prompt", action="append", help="the query's prompt (repeatable: several queries)")
    attribute.add_argument("--image", action="append", help="the query image (one per --prompt); without it the "
                           "query is generated from the prompt and --seed")
    attribute.add_argument("--out", help="output folder (default WORK_DIR/attributions/<query id>/, listed in "
                           "WORK_DIR/attributions/index.json; WORK_DIR/attributions/latest is the newest)")
    attribute.add_argument("--mask", action="append", help="a PNG the query image's size (white = the region; L, "
                           "1-bit or RGB read as luminance), one per --prompt: unlearn the query's loss in that region "
                           "only (which training images made this object)")
    attribute.add_argument("--group-by", help="a metadata field (a metadata.jsonl key, a parquet column, a key of the "
                           "shards' .json): also rank the groups it forms (groups.csv, the report's group table)")
    attribute.add_argument("--candidates", type=candidate_spec, default="auto", help="two-stage query: rank every "
                           "image by AbU's linearisation (projected gradients, prepared once), then rescore exactly "
                           "the top C only: a count (2000) or a share (10%%); exact: rescore every image; auto "
                           "(default): exact below 20,000 images, 25%% above (benchmarks/README.md, two-stage)")
    attribute.add_argument("--methods", nargs="+", metavar="METHOD", help="compare methods on the same queries: "
                           "abu (the AbU the options below describe), dtrak, trak, pixel, latent, feature (needs "
                           "--encoder), random, or an AbU variant; writes one comparison report (each method's top k "
                           "side by side, each image's rank under every method, where they agree) beside each "
                           "method's own folder. AbU is then rescored exactly (--candidates does not apply)")
    attribute.add_argument("--encoder", help="--methods feature: a local CLIP or DINO folder saved with transformers")
    attribute.add_argument("--controls", action="store_true", help="also measure each answer's trust signals: its "
                           "specificity against reference queries, and how much of its top 10 the prompt alone (on an "
                           "unrelated image) and the image alone (under an unrelated prompt) recover (three more "
                           "unlearnings per query, and the reference queries once per work directory)")
    if wanted("attribute"):
        query_arguments(attribute)
    attribute.set_defaults(run=cmd_attribute)

    report = sub.add_parser("report", help="rewrite the report of an attribution folder (e.g. with another --top-k)")
    report.add_argument("attribution", help="folder written by attribute")
    report.add_argument("--out", help="where to write (default: the same folder)")
    if wanted("report"):
        from ..report.settings import ReportSettings

        add_arguments(report, ReportSettings)
    report.add_argument("--group-by", help="a metadata field to rank groups by (default: the attribution's own)")
    report.add_argument("--json", action="store_true")
    report.set_defaults(run=cmd_report)

    verify = sub.add_parser("verify", help="check every artefact of a work directory against the digests written "
                            "with it")
    verify.add_argument("work_dir", help="the work directory (--work-dir of prepare / attribute)")
    verify.add_argument("--repair", action="store_true", help="remove what is damaged (a file, a chunk's done-mark), "
                        "so that the next run recomputes only that")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=cmd_verify)

    demo = sub.add_parser("demo", help="the main job on the embedded default: generate, attribute, report")
    demo.add_argument("--model", default="default")
    variant_argument(demo)
    model_config_argument(demo)
    demo.add_argument("--out", default="unlearn-fast-demo")
    demo.add_argument("--prompt", default=DEMO_PROMPT, help=f"query prompt (default {DEMO_PROMPT!r})")
    demo.add_argument("--threads", type=count_or_zero, default=0)
    device_argument(demo)
    if wanted("demo"):
        from ..engine.loss_grid import LossGrid

        add_arguments(demo, LossGrid, only=("compile", "channels_last"))
    demo.add_argument("--quiet", action="store_true")
    demo.add_argument("--json", action="store_true")
    if wanted("demo"):
        query_arguments(demo)
    demo.set_defaults(run=cmd_demo)

    from .evaluate import add_evaluate_parser

    add_evaluate_parser(sub)

    export = sub.add_parser("export-data", help="write a training set (e.g. the embedded default) as an image folder")
    export.add_argument("--data", default="default")
    export.add_argument("--out", required=True)
    export.set_defaults(run=cmd_export_data)

    scores = sub.add_parser("export-scores", help="write an attribution's scores for dattri (.pt, train × test) or "
                            "TRAK (a save directory with scores/<experiment>.mmap)")
    scores.add_argument("attribution", help="folder written by attribute (or its scores.npy)")
    scores.add_argument("--format", choices=("dattri", "trak"), required=True)
    scores.add_argument("--out", required=True, help="dattri: the .pt file; trak: the save directory")
    scores.add_argument("--experiment", default="unlearn_fast", help="TRAK experiment name (default unlearn_fast)")
    scores.add_argument("--overwrite", action="store_true", help="replace an existing file or experiment")
    scores.set_defaults(run=cmd_export_scores)
    return parser


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = next((arg for arg in argv if not arg.startswith("-")), "")
    args = build_parser(verb).parse_args(argv)
    args.argv = argv  # recorded with what it produced (training.json)
    from ..errors import UserInputError
    from ..store import LockTimeout  # here, not at the top: `unlearn-fast --help` imports no torch

    quiet = libraries_silenced() if getattr(args, "quiet", False) else contextlib.nullcontext()
    try:
        with quiet:
            args.run(args)
    except (UserInputError, FloatingPointError, LockTimeout) as error:
        # The user's input or settings, not a bug: the message names the culprit; no traceback.
        raise SystemExit(f"unlearn-fast {args.verb}: {error}") from None
    except OSError as error:
        # The machine's fault (no space, read-only, permission, I/O): one line naming the path. Every artefact is
        # written atomically, so what was finished is kept and the lock was released on the way out.
        raise SystemExit(f"unlearn-fast {args.verb}: {os_error_line(error)}") from None


@contextlib.contextmanager
def libraries_silenced():
    """--quiet: diffusers' and transformers' own loading bars and notices off too, not only this package's, while the
    verb runs; their earlier state is put back after (main may be called in-process, by tests or other tools)."""
    import importlib
    import importlib.util

    loggers = [importlib.import_module(f"{library}.utils.logging") for library in ("diffusers", "transformers")
               if importlib.util.find_spec(library) is not None]
    before = [(logging.get_verbosity(), logging.is_progress_bar_enabled()) for logging in loggers]
    for logging in loggers:
        logging.disable_progress_bar()
        logging.set_verbosity_error()
    try:
        yield
    finally:
        for logging, (level, bars) in zip(loggers, before):
            logging.set_verbosity(level)
            (logging.enable_progress_bar if bars else logging.disable_progress_bar)()


def os_error_line(error: OSError) -> str:
    what = error.strerror or str(error)
    where = error.filename if error.filename is not None else "(no file named)"
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    hints = {errno.ENOSPC: "; free some space (or use a --work-dir on another disk) and run the command again: "
                           "finished work is kept",
             errno.EROFS: "; the folder is read-only", errno.EACCES: "; check the folder's permissions"}
    hint = hints.get(error.errno, "")
    return f"{where}: {what}{hint}"


if __name__ == "__main__":
    main()
