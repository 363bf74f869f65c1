"""``unlearn-fast evaluate counterfactual|groundtruth|lds|groups|unlearning``: the evaluation harness from the command line."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

from .arguments import RetiredFlag, count_or_zero, device_argument, positive_float, positive_int, seed


def _setup(args, setup_class, profile: dict):
    import dataclasses

    from ..engine.device import resolve_device

    values = dict(profile)
    for field in dataclasses.fields(setup_class):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = tuple(given) if isinstance(given, list) else given
    values["device"] = str(resolve_device(args.device))
    if getattr(args, "set", None):
        values["method_options"] = _method_options(values.get("method_options", {}), args.set)
    return setup_class(**{k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(setup_class)}})


def _method_options(base: dict, assignments: list[str]) -> dict:
    """base method options with each METHOD.KEY=VALUE of `assignments` on top (VALUE read as JSON, else text)."""
    from ..errors import SettingsError

    options = {name: dict(values) for name, values in base.items()}
    for assignment in assignments:
        target, equals, text = assignment.partition("=")
        method, dot, key = target.partition(".")
        if not (equals and dot and method and key):
            raise SettingsError(f"--set {assignment!r}: expected METHOD.KEY=VALUE, e.g. abu.step=alpha/N:0.01")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        options.setdefault(method, {})[key] = value
    return options


def _header(kind: str, args, seconds: float) -> str:
    import torch

    return (f"# {kind} evaluation ({args.profile} profile)\n\n"
            f"- command: `unlearn-fast {' '.join(args.argv)}`\n"
            f"- machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}\n"
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall time {seconds / 60:.1f} min\n")


def _configure_logging(args) -> None:
    """The evaluation's progress lines (the unlearn_fast.evaluate loggers) on stderr: INFO by default, only warnings
    with --quiet, DEBUG with --verbose. Standard output keeps the tables and --json."""
    import logging

    logger = logging.getLogger("unlearn_fast")
    if not any(getattr(h, "_unlearn_fast", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[unlearn-fast] %(message)s"))
        handler._unlearn_fast = True
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)


def _write_results(args, markdown_name: str, text: str, json_name: str, summary: dict | None = None) -> None:
    """The markdown table into --out and --results; the JSON beside it (written now, or copied from --out)."""
    for folder in filter(None, (args.out, args.results)):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, markdown_name), "w", encoding="utf-8") as handle:
            handle.write(text)
        if summary is not None:
            with open(os.path.join(folder, json_name), "w", encoding="utf-8") as handle:
                json.dump(summary, handle, indent=1)
        elif os.path.abspath(folder) != os.path.abspath(args.out):
            shutil.copy(os.path.join(args.out, json_name), os.path.join(folder, json_name))


def cmd_counterfactual(args) -> None:
    from ..evaluate.counterfactual import CounterfactualSetup, run_counterfactual
    from ..evaluate.counterfactual_report import winner_lines, write_report
    from ..evaluate.profiles import PROFILES

    profile = PROFILES[args.profile]
    setup = _setup(args, CounterfactualSetup, profile["counterfactual"])
    started = time.perf_counter()
    summary = run_counterfactual(setup, args.out, workers=args.workers or profile["workers"],
                                 threads=args.threads or profile["threads"])
    header = _header("Counterfactual (leave-K-out retraining)", args, time.perf_counter() - started)
    header += "\n" + "\n".join(f"- {line}" for line in winner_lines(summary)) + "\n"
    paths = write_report(summary, args.out, args.results, header)
    if args.results:  # the numbers behind the table, beside it
        for name in ("results.json", "validation.json"):
            if os.path.isfile(os.path.join(args.out, name)):
                shutil.copy(os.path.join(args.out, name), os.path.join(args.results, name))
    print(json.dumps({"table": summary["table"], "files": paths}, indent=1 if not args.json else None))


def cmd_groundtruth(args) -> None:
    from ..evaluate.groundtruth import GroundTruthSetup, markdown_table, run_groundtruth
    from ..evaluate.profiles import PROFILES

    setup = _setup(args, GroundTruthSetup, PROFILES[args.profile]["groundtruth"])
    started = time.perf_counter()
    summary = run_groundtruth(setup, args.out)
    text = _header("Ground-truth", args, time.perf_counter() - started) + "\n" + markdown_table(summary,
                                                                                               setup.recall_k) + "\n"
    _write_results(args, "groundtruth.md", text, "groundtruth.json", summary)
    print(text if not args.json else json.dumps(summary))


def cmd_lds(args) -> None:
    from ..evaluate.lds import LDSSetup, markdown_table, run_lds
    from ..evaluate.profiles import PROFILES

    profile = PROFILES[args.profile]
    setup = _setup(args, LDSSetup, profile["lds"])
    started = time.perf_counter()
    summary = run_lds(setup, args.out, workers=args.workers or profile["workers"],
                      threads=args.threads or profile["threads"])
    runs = summary["training_runs"]
    text = (_header("Linear datamodeling score (LDS)", args, time.perf_counter() - started)
            + f"- N = {summary['num_train']} training images, M = {setup.subsets} subsets of "
              f"{setup.subset_fraction:g} N, {len(summary['queries'])} queries; {runs['distinct']} training runs "
              f"(full model, {runs['subsets']} subsets, {runs['ceiling']} second seeds), shared by every method\n\n"
            + markdown_table(summary) + "\n")
    _write_results(args, "lds.md", text, "results.json")
    print(text if not args.json else json.dumps({k: v for k, v in summary.items() if k != "subset_losses"}))


def cmd_groups(args) -> None:
    from ..evaluate.group_retraining import GroupRetrainingSetup, markdown_table, run_group_retraining
    from ..evaluate.profiles import PROFILES

    profile = PROFILES[args.profile]
    setup = _setup(args, GroupRetrainingSetup, profile["groups"])
    started = time.perf_counter()
    summary = run_group_retraining(setup, args.out, workers=args.workers or profile["workers"],
                                   threads=args.threads or profile["threads"])
    text = (_header("Groups against leave-one-group-out retraining", args, time.perf_counter() - started) + "\n"
            + markdown_table(summary))
    _write_results(args, "groups.md", text, "results.json")
    print(text if not args.json else json.dumps(summary["table"]))


def cmd_unlearning(args) -> None:
    from ..evaluate.profiles import PROFILES
    from ..evaluate.unlearning_quality import UnlearningQualitySetup, markdown_table, run_unlearning_quality

    setup = _setup(args, UnlearningQualitySetup, PROFILES[args.profile]["unlearning"])
    started = time.perf_counter()
    summary = run_unlearning_quality(setup, args.out)
    text = (_header("Unlearning quality", args, time.perf_counter() - started)
            + f"- model {setup.model}, {summary['num_train']} training images, {setup.queries} queries (training "
              f"captions), {setup.unrelated} unrelated prompts each, same seeds before and after; {setup.draws} draws, "
              f"group {setup.group}, Fisher over {setup.fisher_examples or 'all'} rows\n\n"
            + markdown_table(summary["table"]) + "\n")
    _write_results(args, "unlearning_quality.md", text, "unlearning_quality.json")
    print(text if not args.json else json.dumps(summary["table"]))


def add_evaluate_parser(sub) -> None:
    from ..evaluate.profiles import PROFILES

    evaluate = sub.add_parser("evaluate", help="judge attribution methods: leave-K-out retraining, ground truth, LDS")
    kinds = evaluate.add_subparsers(dest="kind", required=True)

    def verb(name: str, help: str, run, results: str):
        """A subcommand with what every evaluation takes: --profile, --out, --results, --device, --json."""
        parser = kinds.add_parser(name, help=help)
        parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                            help="run sizes: cpu (2 cores), gpu (one H200), tiny (a smoke test)")
        parser.add_argument("--out", default=f"evaluation/{name}", help="work folder (resumable)")
        parser.add_argument("--results", help=f"also write {results} here (e.g. benchmarks/results/...)")
        parser.add_argument("--data", help="training data (default: the embedded set)")
        device_argument(parser)
        parser.add_argument("--json", action="store_true")
        loudness = parser.add_mutually_exclusive_group()
        loudness.add_argument("--quiet", action="store_true", help="progress lines: warnings only")
        loudness.add_argument("--verbose", action="store_true", help="progress lines: every detail")
        parser.add_argument("--set", action="append", metavar="METHOD.KEY=VALUE",
                            help="a method's option, over the profile's (e.g. abu.step=fixed:2.4e-6: no step validation)")

        def logged(args):
            _configure_logging(args)
            return run(args)
        parser.set_defaults(run=logged)
        return parser

    def step_factors(parser) -> None:
        parser.add_argument("--abu-step-factors", type=positive_float, nargs="+",
                            help="AbU's step candidates as multiples of each variant's own step, in its rule's unit "
                                 "(validation picks; 1 alone: the variant's own step)")
        parser.add_argument("--abu-alphas", action=RetiredFlag, help=argparse.SUPPRESS,
                            replacement="--abu-step-factors (multiples of each variant's own step) or --set "
                                        "abu.step=RULE:VALUE")

    def retraining(parser) -> None:
        """What the verbs that train models from scratch on subsets share."""
        parser.add_argument("--base-model", help="model whose VAE every run shares (default: the embedded one)")
        parser.add_argument("--train-images", type=positive_int, help="N: size of the seeded training subset")
        parser.add_argument("--methods", nargs="+", help="abu dtrak trak pixel feature random")
        parser.add_argument("--steps", type=positive_int, help="training steps of every run")
        step_factors(parser)
        parser.add_argument("--encoder", help="local CLIP/DINO folder: the feature method (and ΔG's feature distance)")
        parser.add_argument("--workers", type=count_or_zero, default=0, help="training processes at once")
        parser.add_argument("--threads", type=count_or_zero, default=0, help="torch threads per process")

    counterfactual = verb("counterfactual", "retrain without each method's top-K; ΔL and ΔG", cmd_counterfactual,
                          "the table and plots")
    retraining(counterfactual)
    counterfactual.add_argument("--queries", type=positive_int, help="held-out prompts to attribute")
    counterfactual.add_argument("--fractions", type=float, nargs="+", help="K as shares of the training set")
    counterfactual.add_argument("--random-draws", type=positive_int)
    counterfactual.add_argument("--noise-seeds", type=seed, nargs="+", help="seeds of the full-set noise-floor runs")
    counterfactual.add_argument("--batch-size", type=positive_int)

    groundtruth = verb("groundtruth", "customisation exemplars and planted duplicates: Recall@10, mAP",
                       cmd_groundtruth, "groundtruth.md/.json")
    groundtruth.add_argument("--base-model", help="model to customise (default: the embedded one)")
    groundtruth.add_argument("--base-images", type=positive_int, help="seeded subset of the base data to rank among")
    groundtruth.add_argument("--methods", nargs="+", help="abu dtrak trak pixel feature random")
    groundtruth.add_argument("--prompts", type=positive_int, help="customisation prompts with the new token (≥ 10)")
    groundtruth.add_argument("--planted-copies", type=positive_int, nargs="*", help="repetition counts R (none: skip)")
    groundtruth.add_argument("--domain-images", type=positive_int, help="held-out images planted in same-domain cases")
    groundtruth.add_argument("--domain-copies", type=positive_int, nargs="*", help="repetition counts of the same-domain cases")
    groundtruth.add_argument("--no-customisation", dest="customisation", action="store_false", default=None,
                             help="skip the two customisation scenarios")
    groundtruth.add_argument("--custom-styles", nargs="+", choices=("full", "custom-diffusion", "lora"),
                             help="how the customisation fine-tunes learn the concept (default: full): every weight; "
                                  "K/V and the token (Custom Diffusion); a LoRA and the token")
    groundtruth.add_argument("--custom-with-base", action="store_true", default=None,
                             help="customise on base images + exemplars (prior preservation), not exemplars only")
    groundtruth.add_argument("--plant-split", choices=("evaluation", "validation"),
                             help="same-domain plants to use: the evaluation ones, or validation plants disjoint "
                                  "from them (to choose settings on)")
    groundtruth.add_argument("--no-controls", dest="controls", action="store_false", default=None,
                             help="skip the caption-only and image-only controls of the same-domain cases")

    lds = verb("lds", "linear datamodeling score over models trained on random half subsets", cmd_lds,
               "lds.md and results.json")
    retraining(lds)
    lds.add_argument("--subsets", type=positive_int, help="M: subset models")
    lds.add_argument("--ceiling-subsets", type=positive_int, help="subsets trained again with a second seed (the ceiling)")
    lds.add_argument("--generated-queries", type=positive_int, help="queries generated from held-out prompts")
    lds.add_argument("--heldout-queries", type=positive_int, help="held-out real images with their captions")
    lds.add_argument("--validation-queries", type=positive_int,
                     help="more held-out queries (half generated) kept for choosing settings, never evaluated on")
    lds.add_argument("--selection", choices=("mrr", "lds"),
                     help="what chooses AbU's α: MRR on training captions, or LDS on the validation queries")

    groups = verb("groups", "group attribution (every --group-by rule) against retraining without each group: "
                  "Top-1, NDCG@3", cmd_groups, "groups.md and results.json")
    groups.add_argument("--base-model", help="model whose VAE every run shares (default: the embedded one)")
    groups.add_argument("--methods", nargs="+", help="abu dtrak trak pixel feature random")
    groups.add_argument("--groups", type=positive_int, help="families removed one at a time (half of them large)")
    groups.add_argument("--queries-per-group", type=positive_int, help="held-out members of each family: the queries")
    groups.add_argument("--other-images", type=count_or_zero, help="training images from outside the families")
    groups.add_argument("--steps", type=positive_int, help="training steps of every run")
    step_factors(groups)
    groups.add_argument("--workers", type=count_or_zero, default=0, help="training processes at once")
    groups.add_argument("--threads", type=count_or_zero, default=0, help="torch threads per process")

    unlearning = verb("unlearning", "per α: how much unlearning changes the query's regeneration and loss against "
                      "unrelated prompts", cmd_unlearning, "unlearning_quality.md/.json")
    unlearning.add_argument("--model", help="model folder (default: the embedded one)")
    unlearning.add_argument("--queries", type=positive_int)
    unlearning.add_argument("--unrelated", type=positive_int, help="unrelated prompts per query (≥ 10 in the cpu profile)")
    unlearning.add_argument("--alphas", type=float, nargs="*", help="α of the α/N step rule (the paper's; none: only variants)")
    unlearning.add_argument("--variants", nargs="+", help="AbU variants too, at their own step or --set NAME.step=…")
    unlearning.add_argument("--group", help="weights to unlearn (default kv)")
