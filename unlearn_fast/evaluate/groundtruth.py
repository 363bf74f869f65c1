"""Known ground truth by construction (METHOD.md, "How attribution is judged" §2), for every method.

customisation: the base model is fine-tuned on a few exemplars of a new concept (exemplars.py) bound to a new token;
    images generated from ≥ 10 prompts with the token are attributed over (base training images + exemplars), and the
    exemplars are the answer: Recall@10 and average precision per query.
same-domain customisation ("customisation-domain"): the exemplars are a visual family of the data itself (the
    variants of one caption stem, e.g. "thumbs up" in its skin tones), the whole family held out of the base subset
    and bound to another new token: look-alikes of the base set, which is what makes it hard.
planted: one distinctive image repeated R times in the training set, the model fine-tuned on the result
    (planted.py); images generated from its caption (several seeds) must rank the R copies first. An easy control:
    a pattern unlike any training image, under new words, is found by every method.
same-domain planted ("domain<j>-<R>"): an image of the data's own domain, held out of the base subset, planted R
    times under its own caption. A query counts only if the fine-tuned model memorised it: the generated image is
    closer (pixel MSE) to the planted image than to every base image; other queries are reported as void, never
    dropped. Two controls per case say what a method follows: an unrelated held-out image under the planted caption
    ("caption only": a method that finds the copies here reads the caption, not the image) and the memorised query
    image under an ordinary caption ("image only"). The planted image's pixel nearest neighbour in the base set is
    reported: a look-alike is what makes a case hard.

Each scenario is a folder (data, model, work directory, results) whose stages are skipped when done.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ..engine.step_rules import GRID_FACTORS
from ..errors import SettingsError
from .exemplars import concept_exemplars
from ..ranking import rank_positions
from .metrics import average_precision, format_mean_se, mean_and_se, pixel_mse, recall_at_k
from .planted import AugmentedDataset, distinctive_image, seeded_indices, seeded_subset, top_r_share
from .method_setup import Workspaces, configured_method
from .output_files import write_json

logger = logging.getLogger(__name__)

PROMPT_TEMPLATES = ("{t}", "{t} face", "red {t}", "blue {t}", "green {t}", "yellow {t}", "{t} button", "{t} sign",
                    "{t} symbol", "black {t}", "white {t}", "purple {t}", "orange {t}", "{t} with star", "{t} heart",
                    "{t} flag")
PLANT_SPLITS = ("evaluation", "validation")
# How a customisation fine-tune learns the concept (TrainRequest fields): every UNet weight and the text encoder; the
# cross-attention K/V and the new token's embedding only (as Custom Diffusion, the paper's benchmark, trains); a LoRA
# adapter (rank 4 on the attention projections) and the new token's embedding. The concept lands in different weights
# under each, which is what decides whether unlearning a given group can reach it.
CUSTOM_STYLES = {"full": {"unet_parameters": "all", "train_text_encoder": True},
                 "custom-diffusion": {"unet_parameters": "kv", "train_text_encoder": False},
                 "lora": {"lora_rank": 4, "train_text_encoder": False}}
# Validation plants avoid the evaluation plants of every count of planted images the harnesses use (1–3 per run).
EVALUATION_PLANT_COUNTS = range(1, 4)


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
    custom_styles: tuple[str, ...] = ("full",)  # CUSTOM_STYLES: each style is its own pair of scenarios
    custom_with_base: bool = False  # fine-tune on base images + exemplars (prior preservation) instead of exemplars only
    planted_copies: tuple[int, ...] = (1, 3, 10)
    domain_images: int = 3  # held-out images of the data planted in the same-domain cases (0: none)
    domain_copies: tuple[int, ...] = (1, 3, 5)
    # "validation": plants disjoint from every evaluation plant (and its unrelated control image), to choose settings on
    plant_split: str = "evaluation"
    controls: bool = True  # score the caption-only and image-only controls of the same-domain cases
    customisation: bool = True  # the customisation scenarios (the exemplars, and the same-domain family)
    domain_customisation: bool = True  # also customise on a visual family of the data itself
    planted_caption: str = "zorblat quadrille"
    planted_queries: int = 3
    planted_steps: int = 400
    planted_batch_size: int = 64
    planted_lr: float = 5e-4
    scoring_timesteps: int = 4
    seed: int = 0
    query_steps: int = 50
    recall_k: int = 10
    abu_step_factors: tuple[float, ...] = GRID_FACTORS  # AbU's step validated at its value × these
    validation_prompts: int = 3
    method_options: dict = field(default_factory=dict)
    device: str = "cpu"  # where the fine-tunes train and the attributions run

    def __post_init__(self):
        if self.plant_split not in PLANT_SPLITS:
            raise SettingsError(f"plant_split must be one of {PLANT_SPLITS}, got {self.plant_split!r}")
        unknown = [style for style in self.custom_styles if style not in CUSTOM_STYLES]
        if unknown or not self.custom_styles:
            raise SettingsError(f"custom_styles must be among {sorted(CUSTOM_STYLES)}, got {list(self.custom_styles)}")
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
    plant: np.ndarray | None = None  # the planted image, for the memorisation rule (same-domain cases)
    exclude_from_base: tuple[int, ...] = ()  # indices of the full data kept out of the base subset
    info: dict = field(default_factory=dict)  # recorded with the result (e.g. the exemplars' family)
    controls: dict = field(default_factory=dict)  # name -> (image or None for the first query's, prompt)


def scenario_name(stem: str, style: str, with_base: bool) -> str:
    """customisation[-domain][-<style> unless full][-with-base]."""
    return stem + ("" if style == "full" else f"-{style}") + ("-with-base" if with_base else "")


def customisation_scenario(setup: GroundTruthSetup, resolution: int, known_words, token: str | None = None,
                           style: str = "full") -> Scenario:
    from ..models.text_encoder import split_words

    token = token or setup.token
    prompts = [t.format(t=token) for t in PROMPT_TEMPLATES
               if set(split_words(t.format(t=""))) <= set(known_words)][:setup.prompts]
    if len(prompts) < setup.prompts:
        raise SettingsError(f"only {len(prompts)} customisation prompts use words the model knows")
    # Validation customises on other exemplars than the evaluation's (another pattern seed).
    images = concept_exemplars(resolution, setup.exemplars, setup.seed + (setup.plant_split == "validation"))
    alone = not setup.custom_with_base
    finetune = {"steps": setup.custom_steps, "lr": setup.custom_lr, **CUSTOM_STYLES[style],
                "batch_size": len(images) if alone else setup.planted_batch_size}
    return Scenario(scenario_name("customisation", style, not alone), images, [token] * len(images), prompts,
                    list(range(len(prompts))), alone, finetune, info={"style": style, "with_base": not alone})


def planted_scenario(setup: GroundTruthSetup, resolution: int, copies: int) -> Scenario:
    image = distinctive_image(resolution, setup.seed)
    finetune = {"steps": setup.planted_steps, "lr": setup.planted_lr, "unet_parameters": "all",
                "batch_size": setup.planted_batch_size}
    return Scenario(f"planted-{copies}", [image] * copies, [setup.planted_caption] * copies,
                    [setup.planted_caption] * setup.planted_queries, list(range(setup.planted_queries)), False,
                    finetune)


def domain_customisation_scenario(setup: GroundTruthSetup, full, resolution: int, known_words,
                                  token: str = "<v2>", style: str = "full") -> Scenario:
    """Exemplars from the data's own domain: `exemplars` members of a seeded family of 'stem' / 'stem: variant'
    captions with between `exemplars` and 8 members, every member kept out of the base subset."""
    from ..data import load_pixels

    families: dict[str, list[int]] = {}
    for i in range(len(full)):
        families.setdefault(full.captions(i)[0].split(":")[0].strip(), []).append(i)
    eligible = sorted(stem for stem, members in families.items() if setup.exemplars <= len(members) <= 8
                      and any(":" in full.captions(m)[0] for m in members))
    if not eligible:
        raise SettingsError(f"no caption family of {setup.exemplars}–8 variants in {setup.data} for same-domain "
                            "customisation exemplars")
    chosen = eligible[int(np.random.default_rng([setup.seed, 2718]).integers(len(eligible)))]
    if setup.plant_split == "validation":  # another family, never the evaluation one
        others = [stem for stem in eligible if stem != chosen]
        if not others:
            raise SettingsError("only one caption family fits same-domain customisation: no validation family left")
        chosen = others[int(np.random.default_rng([setup.seed, 2718, 1]).integers(len(others)))]
    stem = chosen
    members = families[stem]
    images = list(load_pixels(full, resolution, members[:setup.exemplars]))
    base = customisation_scenario(setup, resolution, known_words, token, style)
    return Scenario(scenario_name("customisation-domain", style, not base.train_on_extra_only), images,
                    [token] * len(images), base.prompts, base.seeds, base.train_on_extra_only, base.finetune,
                    exclude_from_base=tuple(members), info={**base.info, "family": stem, "family_size": len(members)})


def domain_scenarios(setup: GroundTruthSetup, full, resolution: int) -> list[Scenario]:
    """Same-domain planted cases: `domain_images` held-out images of the data (seeded), each planted R times under
    its own caption, with the caption-only and image-only controls (module docstring)."""
    from ..data import load_pixels

    if not setup.domain_images or not setup.domain_copies:
        return []
    base = set(seeded_indices(len(full), setup.base_images, setup.seed).tolist())
    heldout = np.array([i for i in range(len(full)) if i not in base])
    base_captions = {c for i in base for c in full.captions(i)}
    # Held-out images whose caption no base image has (a shared caption would give the copies away to no one).
    eligible = [int(i) for i in heldout if full.captions(int(i))[0] not in base_captions]
    if len(eligible) < setup.domain_images + 1:
        raise SettingsError(f"only {len(eligible)} held-out images for {setup.domain_images} same-domain cases; "
                            "ask for fewer or use a smaller base subset")
    members = sorted(base)
    planted, unrelated, ordinary = _plants(eligible, setup.domain_images, members, setup.seed)
    prefix = "domain"
    if setup.plant_split == "validation":
        used = set()
        for count in EVALUATION_PLANT_COUNTS:
            if count + 1 <= len(eligible):
                chosen, control, _ = _plants(eligible, count, members, setup.seed)
                used.update(chosen + [control])
        eligible = [i for i in eligible if i not in used]
        if len(eligible) < setup.domain_images + 1:
            raise SettingsError(f"only {len(eligible)} held-out images left for {setup.domain_images} validation "
                                "plants once the evaluation plants are kept out; ask for fewer")
        planted, unrelated, ordinary = _plants(eligible, setup.domain_images, members, setup.seed, stream=1)
        prefix = "validation"
    ordinary = full.captions(ordinary)[0]
    unrelated_image = load_pixels(full, resolution, [unrelated])[0]
    finetune = {"steps": setup.planted_steps, "lr": setup.planted_lr, "unet_parameters": "all",
                "batch_size": setup.planted_batch_size}
    scenarios = []
    for j, index in enumerate(planted):
        image, caption = load_pixels(full, resolution, [int(index)])[0], full.captions(int(index))[0]
        for copies in setup.domain_copies:
            scenarios.append(Scenario(
                f"{prefix}{j}-{copies}", [image] * copies, [caption] * copies, [caption] * setup.planted_queries,
                list(range(setup.planted_queries)), False, finetune, plant=image,
                controls={"caption only": (unrelated_image, caption), "image only": (None, ordinary)}
                if setup.controls else {}))
    return scenarios


def _plants(eligible: list[int], count: int, base: list[int], seed: int, stream: int = 0) -> tuple:
    """(planted indices, the unrelated image of the caption-only control, the base image whose caption is the
    image-only control's), drawn from the seeded stream `stream` (0: the evaluation plants)."""
    rng = np.random.default_rng([seed, 31337] + ([stream] if stream else []))
    chosen = rng.choice(eligible, count + 1, replace=False)
    return [int(i) for i in chosen[:-1]], int(chosen[-1]), int(rng.choice(base))


def memorised(queries, plant: np.ndarray, base_pixels: np.ndarray) -> list[dict]:
    """Per query: its pixel MSE to the planted image and to the nearest base image; memorised iff the first is
    smaller (the rule a same-domain case must pass to count)."""
    out = []
    for query in queries:
        to_base = pixel_mse(query.image, base_pixels)
        nearest = int(to_base.argmin())
        to_plant = float(pixel_mse(query.image, plant[None])[0])
        out.append({"mse_to_plant": to_plant, "mse_to_nearest_base": float(to_base[nearest]),
                    "nearest_base": nearest, "memorised": to_plant < float(to_base[nearest])})
    return out


def _ranks(row: np.ndarray, relevant: list[int]) -> list[int]:
    position = rank_positions(row)
    return sorted(int(position[i]) for i in relevant)


def run_scenario(setup: GroundTruthSetup, scenario: Scenario, base_model, out_dir: str) -> dict:
    """base_model: the loaded setup.base_model (its vocabulary says which words the fine-tune adds)."""
    from ..workspace import PrepareSettings
    from ..data import open_dataset
    from ..data.dataset import SubsetDataset
    from ..data.export import export_imagefolder
    from ..methods import run_method
    from ..models.adapter import DiffusionModel
    from ..query import query_from_prompt
    from ..engine.loss_grid import LossGrid
    from ..training.run import TrainRequest, run_training

    folder = os.path.join(out_dir, scenario.name)
    data_dir, extra_dir, model_dir = (os.path.join(folder, n) for n in ("data", "extra", "model"))
    full = open_dataset(setup.data)
    base = seeded_subset(full, setup.base_images, setup.seed)
    if scenario.exclude_from_base:
        kept = [int(i) for i in seeded_indices(len(full), setup.base_images, setup.seed)
                if int(i) not in set(scenario.exclude_from_base)]
        base = SubsetDataset(full, kept)
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
    if scenario.finetune.get("lora_rank"):
        from ..models.lora import load_lora

        load_lora(model, os.path.join(model_dir, "lora"))
        # As `attribute --lora` does: unlearning and its Fisher cover the adapter where a variant would take K/V.
        setup = dataclasses.replace(setup, method_options=lora_options(setup))
    queries = [query_from_prompt(model, p, seed=s, steps=setup.query_steps)
               for p, s in zip(scenario.prompts, scenario.seeds)]
    settings = PrepareSettings(scoring=LossGrid(timesteps=setup.scoring_timesteps, flips=True, batch_size=256),
                               **({"fisher_group": "lora"} if getattr(model, "lora", None) else {}))
    workspaces = Workspaces(model, dataset, os.path.join(folder, "work"), settings)
    result = {"scenario": scenario.name, "num_train": len(dataset), "relevant": relevant,
              "prompts": scenario.prompts, "seeds": scenario.seeds, "methods": {}}
    counted = list(range(len(queries)))
    controls = []
    result.update(scenario.info)
    with open(os.path.join(model_dir, "training.json"), encoding="utf-8") as handle:
        result["finetune_final_loss"] = json.load(handle).get("final_loss")
    if scenario.plant is not None:
        from ..data import load_pixels
        from ..query import Query

        base_pixels = load_pixels(dataset, model.resolution, range(len(base)))
        checks = memorised(queries, scenario.plant, base_pixels)
        counted = [q for q, check in enumerate(checks) if check["memorised"]]
        to_base = pixel_mse(scenario.plant, base_pixels)
        nearest = int(to_base.argmin())
        result.update(memorisation=checks, void=len(counted) == 0, void_queries=len(queries) - len(counted),
                      plant_nearest_base={"index": nearest, "file": dataset.key(nearest),
                                          "caption": dataset.captions(nearest)[0], "mse": float(to_base[nearest])})
        for name, (image, prompt) in scenario.controls.items():
            controls.append((name, Query(queries[0].image if image is None else image, prompt, f"control: {name}")))
        logger.info(f"{scenario.name}: {len(counted)} of {len(queries)} queries memorised"
                    + (" (void case)" if not counted else ""))
    for name in setup.methods:
        method, workspace, options = configured_method(name, setup, workspaces, scenario.prompts, folder)
        attribution = run_method(method, workspace, queries + [query for _, query in controls])
        attribution.save(os.path.join(folder, "attributions", name), top_k=12)
        per_query = [{"recall": recall_at_k(row, relevant, setup.recall_k), "ap": average_precision(row, relevant),
                      "top_r_share": top_r_share(row, relevant), "ranks": _ranks(row, relevant),
                      "counted": q in counted} for q, row in enumerate(attribution.scores[:len(queries)])]
        result["methods"][name] = {"options": options, "settings": method.settings(), "per_query": per_query,
                                   **{m: dict(zip(("mean", "se"), mean_and_se([p[m] for p in per_query
                                                                               if p["counted"]])))
                                      for m in ("recall", "ap", "top_r_share")}}
        if controls:
            result["methods"][name]["controls"] = {
                control: {"ranks": _ranks(row, relevant), "top_r_share": top_r_share(row, relevant)}
                for (control, _), row in zip(controls, attribution.scores[len(queries):])}
        logger.info(f"{scenario.name}: {name} Recall@{setup.recall_k} {result['methods'][name]['recall']['mean']:.2f}, "
                    f"mAP {result['methods'][name]['ap']['mean']:.3f}")
    write_json(os.path.join(folder, "result.json"), result)
    return result


def lora_options(setup: GroundTruthSetup) -> dict:
    """setup.method_options with group "lora" for every AbU variant that would unlearn the K/V."""
    from ..methods.abu.recipes import VARIANTS

    options = {name: dict(values) for name, values in setup.method_options.items()}
    for name in setup.methods:
        if name in VARIANTS and options.get(name, {}).get("group", VARIANTS[name].get("group", "kv")) == "kv":
            options.setdefault(name, {})["group"] = "lora"
    return options


def run_groundtruth(setup: GroundTruthSetup, out_dir: str) -> dict:
    from ..data import open_dataset
    from ..models.adapter import DiffusionModel

    os.makedirs(out_dir, exist_ok=True)
    model = DiffusionModel.load(setup.base_model, device=setup.device)
    full = open_dataset(setup.data)
    scenarios = []
    for style in setup.custom_styles if setup.customisation else ():
        scenarios.append(customisation_scenario(setup, model.resolution, model.text.tokenizer.index, style=style))
        if setup.domain_customisation:
            scenarios.append(domain_customisation_scenario(setup, full, model.resolution, model.text.tokenizer.index,
                                                           style=style))
    scenarios += [planted_scenario(setup, model.resolution, r) for r in setup.planted_copies]
    scenarios += domain_scenarios(setup, full, model.resolution)
    results = [run_scenario(setup, s, model, out_dir) for s in scenarios]
    summary = {"setup": json.loads(json.dumps(asdict(setup))), "scenarios": results}
    write_json(os.path.join(out_dir, "results.json"), summary)
    return summary


def headline(summary: dict) -> dict:
    """{method: {metric: (mean, SE)}} of the headline numbers: the same-domain planted cases (each case's mean over
    its memorised queries, then mean ± SE over the cases that are not void; "top_r_share", "recall", "ap") and the
    customisation scenarios (mean ± SE over their queries; "<scenario> recall", "<scenario> ap")."""
    table: dict[str, dict] = {}
    planted = [r for r in summary["scenarios"] if "memorisation" in r and not r["void"]]
    for name in dict.fromkeys(n for r in planted for n in r["methods"]):
        cases = [r["methods"][name] for r in planted if name in r["methods"]]
        table.setdefault(name, {"cases": len(cases)})
        for metric in ("top_r_share", "recall", "ap"):
            table[name][metric] = mean_and_se([case[metric]["mean"] for case in cases])
        for control in ("image only", "caption only"):  # best copy rank: low under image only = follows the image
            best = [case["controls"][control]["ranks"][0] for case in cases if control in case.get("controls", {})]
            if best:
                table[name][f"{control} rank"] = mean_and_se(best)
    for result in summary["scenarios"]:
        if result["scenario"].startswith("customisation"):
            for name, values in result["methods"].items():
                for metric in ("recall", "ap"):
                    table.setdefault(name, {})[f"{result['scenario']} {metric}"] = (values[metric]["mean"],
                                                                                   values[metric]["se"])
    return table


def markdown_table(summary: dict, k: int) -> str:
    lines = []
    heads = headline(summary)
    if heads:
        custom = [f"{r['scenario']} {m}" for r in summary["scenarios"] if r["scenario"].startswith("customisation")
                  for m in ("recall", "ap")]
        columns = [c for c in ("top_r_share", "recall", "ap", "image only rank", "caption only rank", *custom)
                   if any(c in h for h in heads.values())]
        names = {"top_r_share": "planted: share of the top R", "recall": f"planted: Recall@{k}", "ap": "planted: mAP",
                 "image only rank": "image only: best copy rank", "caption only rank": "caption only: best copy rank"}
        lines += ["Headline (same-domain planted: mean ± SE over the cases that are not void; customisation: over "
                  "its queries)", "", "| method | " + " | ".join(names.get(c, c) for c in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for name, values in heads.items():
            cells = (format_mean_se(*values[c], 1 if c.endswith("rank") else 3) if c in values else "–"
                     for c in columns)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"| scenario | N | method | Recall@{k} | mAP | share of the top R |", "|---|---:|---|---|---|---|"]
    for result in summary["scenarios"]:
        checks = result.get("memorisation")
        queries = (f"{len(result['prompts'])} queries" if checks is None else
                   f"{sum(c['memorised'] for c in checks)} of {len(checks)} queries memorised"
                   + (", VOID" if result["void"] else ""))
        for name, values in result["methods"].items():
            cells = [format_mean_se(values[m]["mean"], values[m]["se"], 3) for m in ("recall", "ap", "top_r_share")]
            lines.append(f"| {result['scenario']} ({len(result['relevant'])} relevant, {queries}) | "
                         f"{result['num_train']} | {name} | " + " | ".join(cells) + " |")
    domain = [r for r in summary["scenarios"] if "memorisation" in r]
    if domain:
        lines += ["", "Same-domain planted cases: ranks of the copies (1 = first) per query, and the two controls",
                  "(caption only: an unrelated image under the planted caption; image only: the query image under an "
                  "ordinary caption).", "",
                  "| case | plant's nearest base image (pixel MSE) | method | copy ranks per query (void: ×) | "
                  "caption only | image only |", "|---|---|---|---|---|---|"]
        for result in domain:
            near = result["plant_nearest_base"]
            for name, values in result["methods"].items():
                ranks = "; ".join(",".join(map(str, p["ranks"])) + ("" if p["counted"] else " ×")
                                  for p in values["per_query"])
                controls = values.get("controls", {})
                lines.append(f"| {result['scenario']} | {near['caption']} ({near['mse']:.4f}) | {name} | {ranks} | "
                             + " | ".join(",".join(map(str, controls.get(c, {}).get("ranks", [])))
                                          for c in ("caption only", "image only")) + " |")
    return "\n".join(lines)
