"""Known ground truth by construction (METHOD.md, "How attribution is judged" §2), for every method.

customisation: the base model is fine-tuned on a few exemplars of a new concept (exemplars.py) bound to a new token;
    images generated from ≥ 10 prompts with the token are attributed over (base training images + exemplars), and the
    exemplars are the answer: Recall@10 and average precision per query.
planted: one distinctive image repeated R times in the training set, the model fine-tuned on the result
    (planted.py); images generated from its caption (several seeds) must rank the R copies first.

Each scenario is a folder (data, model, work directory, results) whose stages are skipped when done.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from ..errors import SettingsError
from .exemplars import concept_exemplars
from .metrics import average_precision, format_mean_se, mean_and_se, recall_at_k
from .planted import AugmentedDataset, distinctive_image, seeded_subset, top_r_share
from .validation import choose_alpha

PROMPT_TEMPLATES = ("{t}", "{t} face", "red {t}", "blue {t}", "green {t}", "yellow {t}", "{t} button", "{t} sign",
                    "{t} symbol", "black {t}", "white {t}", "purple {t}", "orange {t}", "{t} with star", "{t} heart",
                    "{t} flag")


@dataclass
class GroundTruthSetup:
    """base_images: seeded subset of the base data the attribution ranks over (None: all of it)."""

    data: str = "default"
    base_model: str = "default"
    base_images: int | None = 1000
    methods: tuple[str, ...] = ("abu", "dtrak", "pixel", "random")
    token: str = "<v1>"
    exemplars: int = 4
    prompts: int = 10
    # The customisation fine-tune trains the whole UNet and the text encoder on the exemplars: a Custom-Diffusion-like
    # cross-attention-only run (200 steps, lr 5e-4) left this tiny model's loss at 0.18 (from 0.26) and samples
    # that did not show the concept, so the benchmark had no ground truth; this one reaches 0.04 and does.
    custom_steps: int = 400
    custom_lr: float = 1e-3
    custom_parameters: str = "all"
    custom_with_base: bool = False  # fine-tune on base images + exemplars (prior preservation) instead of exemplars only
    planted_copies: tuple[int, ...] = (1, 3, 10)
    planted_caption: str = "zorblat quadrille"
    planted_queries: int = 3
    planted_steps: int = 400
    planted_batch_size: int = 64
    planted_lr: float = 5e-4
    scoring_timesteps: int = 4
    seed: int = 0
    query_steps: int = 50
    recall_k: int = 10
    abu_alphas: tuple[float, ...] = (0.01, 0.03, 0.1)
    validation_prompts: int = 3
    method_options: dict = field(default_factory=dict)
    device: str = "cpu"  # where the fine-tunes train and the attributions run

    def __post_init__(self):
        if not 3 <= self.exemplars <= 8 or self.prompts < 1:
            raise SettingsError(f"customisation needs 3–8 exemplars and at least one prompt, got {self.exemplars}, "
                                f"{self.prompts}")


@dataclass
class Scenario:
    name: str
    extra_images: list
    extra_captions: list[str]
    prompts: list[str]  # one query per (prompt, seed)
    seeds: list[int]
    train_on_extra_only: bool  # fine-tune on the extra images alone (customisation) or on base + extra
    finetune: dict  # TrainRequest fields of the fine-tune: steps, batch_size, lr, unet_parameters


def customisation_scenario(setup: GroundTruthSetup, resolution: int, known_words) -> Scenario:
    from ..models.text_encoder import split_words

    prompts = [t.format(t=setup.token) for t in PROMPT_TEMPLATES
               if set(split_words(t.format(t=""))) <= set(known_words)][:setup.prompts]
    if len(prompts) < setup.prompts:
        raise SettingsError(f"only {len(prompts)} customisation prompts use words the model knows")
    images = concept_exemplars(resolution, setup.exemplars, setup.seed)
    alone = not setup.custom_with_base
    finetune = {"steps": setup.custom_steps, "lr": setup.custom_lr, "unet_parameters": setup.custom_parameters,
                "batch_size": len(images) if alone else setup.planted_batch_size}
    return Scenario("customisation", images, [setup.token] * len(images), prompts, list(range(len(prompts))), alone,
                    finetune)


def planted_scenario(setup: GroundTruthSetup, resolution: int, copies: int) -> Scenario:
    image = distinctive_image(resolution, setup.seed)
    finetune = {"steps": setup.planted_steps, "lr": setup.planted_lr, "unet_parameters": "all",
                "batch_size": setup.planted_batch_size}
    return Scenario(f"planted-{copies}", [image] * copies, [setup.planted_caption] * copies,
                    [setup.planted_caption] * setup.planted_queries, list(range(setup.planted_queries)), False,
                    finetune)


def run_scenario(setup: GroundTruthSetup, scenario: Scenario, base_model, out_dir: str, log=print) -> dict:
    """base_model: the loaded setup.base_model (its vocabulary says which words the fine-tune adds)."""
    from ..attributor import Attributor, PrepareSettings
    from ..data import open_dataset
    from ..data.dataset import SubsetDataset
    from ..data.export import export_imagefolder
    from ..methods import build_method, run_method
    from ..models.adapter import DiffusionModel
    from ..query import query_from_prompt
    from ..scoring import LossGrid
    from ..training_run import TrainRequest, run_training

    folder = os.path.join(out_dir, scenario.name)
    data_dir, extra_dir, model_dir = (os.path.join(folder, n) for n in ("data", "extra", "model"))
    base = seeded_subset(open_dataset(setup.data), setup.base_images, setup.seed)
    augmented = AugmentedDataset(base, scenario.extra_images, scenario.extra_captions, scenario.name.split("-")[0])
    if not os.path.isfile(os.path.join(data_dir, "metadata.jsonl")):
        export_imagefolder(augmented, data_dir)
    dataset = open_dataset(data_dir)
    relevant = list(range(len(base), len(dataset)))
    if not os.path.isfile(os.path.join(model_dir, "training.json")):
        train_data = data_dir
        if scenario.train_on_extra_only:
            if not os.path.isfile(os.path.join(extra_dir, "metadata.jsonl")):
                export_imagefolder(SubsetDataset(dataset, relevant), extra_dir)
            train_data = extra_dir
        words = base_model.text.tokenizer.unknown_words(" ".join(scenario.extra_captions + scenario.prompts))
        run_training(TrainRequest(data=train_data, out=model_dir, init_from=setup.base_model,
                                  add_tokens=sorted(set(words)), warmup_steps=10, seed=setup.seed,
                                  command=f"evaluate groundtruth {scenario.name}", device=setup.device,
                                  **scenario.finetune), quiet=True)
    model = DiffusionModel.load(model_dir, device=setup.device)
    queries = [query_from_prompt(model, p, seed=s, steps=setup.query_steps)
               for p, s in zip(scenario.prompts, scenario.seeds)]
    settings = PrepareSettings(scoring=LossGrid(timesteps=setup.scoring_timesteps, flips=True, batch_size=256))
    attributor = Attributor(model, dataset, os.path.join(folder, "work"), settings, progress=False)
    result = {"scenario": scenario.name, "num_train": len(dataset), "relevant": relevant,
              "prompts": scenario.prompts, "seeds": scenario.seeds, "methods": {}}
    for name in setup.methods:
        options = dict(setup.method_options.get(name, {}))
        if name == "abu" and "alpha" not in options and len(setup.abu_alphas) > 1:
            options["alpha"] = choose_alpha(attributor, setup.abu_alphas, setup.validation_prompts, options,
                                            scenario.prompts, os.path.join(folder, "validation.json"),
                                            setup.query_steps, log)
        attribution = run_method(build_method(name, **options), attributor, queries)
        attribution.save(os.path.join(folder, "attributions", name), top_k=12)
        per_query = [{"recall": recall_at_k(row, relevant, setup.recall_k), "ap": average_precision(row, relevant),
                      "top_r_share": top_r_share(row, relevant)} for row in attribution.scores]
        result["methods"][name] = {"options": options, "per_query": per_query,
                                   **{m: dict(zip(("mean", "se"), mean_and_se([p[m] for p in per_query])))
                                      for m in ("recall", "ap", "top_r_share")}}
        log(f"{scenario.name}: {name} Recall@{setup.recall_k} {result['methods'][name]['recall']['mean']:.2f}, "
            f"mAP {result['methods'][name]['ap']['mean']:.3f}")
    with open(os.path.join(folder, "result.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    return result


def run_groundtruth(setup: GroundTruthSetup, out_dir: str, log=print) -> dict:
    from ..models.adapter import DiffusionModel

    os.makedirs(out_dir, exist_ok=True)
    model = DiffusionModel.load(setup.base_model, device=setup.device)
    scenarios = [customisation_scenario(setup, model.resolution, model.text.tokenizer.index)]
    scenarios += [planted_scenario(setup, model.resolution, r) for r in setup.planted_copies]
    results = [run_scenario(setup, s, model, out_dir, log) for s in scenarios]
    summary = {"setup": json.loads(json.dumps(asdict(setup))), "scenarios": results}
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=1)
    return summary


def markdown_table(summary: dict, k: int) -> str:
    lines = [f"| scenario | N | method | Recall@{k} | mAP | share of the top R |", "|---|---:|---|---|---|---|"]
    for result in summary["scenarios"]:
        for name, values in result["methods"].items():
            cells = [format_mean_se(values[m]["mean"], values[m]["se"], 3) for m in ("recall", "ap", "top_r_share")]
            lines.append(f"| {result['scenario']} ({len(result['relevant'])} relevant, {len(result['prompts'])} "
                         f"queries) | {result['num_train']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
