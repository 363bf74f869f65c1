"""The ``unlearn-fast`` command. Each verb is a thin layer over the Python API; ``unlearn-fast VERB --help`` explains it."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time


def _read_indices(spec: str | None) -> list[int]:
    """Indices from '3,17,42', a text file (one per line / comma-separated), a .json list or a .npy array."""
    if not spec:
        return []
    if os.path.isfile(spec):
        if spec.endswith(".npy"):
            import numpy as np

            return [int(i) for i in np.load(spec).ravel()]
        with open(spec, encoding="utf-8") as handle:
            text = handle.read()
        if spec.endswith(".json"):
            return [int(i) for i in json.loads(text)]
        spec = text.replace("\n", ",")
    try:
        return [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--exclude {spec[:80]!r}: expected comma-separated integers or a file of them") from None


def cmd_train(args) -> None:
    import torch

    from .training_run import TrainRequest, run_training

    torch.set_num_threads(args.threads or torch.get_num_threads())
    request = TrainRequest(
        data=args.data, out=args.out, init_from=args.init_from, vae_from=args.vae_from, exclude=_read_indices(args.exclude),
        add_tokens=args.add_token or [], steps=args.steps, vae_steps=args.vae_steps, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, ema_decay=args.ema_decay, caption_dropout=args.caption_dropout,
        unet_parameters=args.unet_parameters, train_text_encoder=not args.freeze_text_encoder,
        caption_column=args.caption_column, command="unlearn-fast " + " ".join(shlex.quote(a) for a in args.argv),
    )
    summary = run_training(request, quiet=args.quiet)
    print(json.dumps(summary, indent=None if args.json else 2))


def cmd_generate(args) -> None:
    import numpy as np
    from PIL import Image

    from .models.adapter import DiffusionModel

    model = DiffusionModel.load(args.model)
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
    from .models.adapter import DiffusionModel
    from .report.grid import sample_grid

    model = DiffusionModel.load(args.model)
    path = sample_grid(model, args.prompt, args.out, seeds=range(args.seed, args.seed + args.per_prompt),
                       steps=args.steps, guidance=args.guidance)
    print(json.dumps({"out": os.path.abspath(path)}))


DEMO_PROMPTS = ("red apple", "grinning face", "cat face", "flag: Japan", "thumbs up")


def cmd_demo(args) -> None:
    """The shipped model on the embedded default: generate the demo prompts and write a labelled grid."""
    from .models.adapter import DiffusionModel
    from .report.grid import sample_grid

    started = time.perf_counter()
    model = DiffusionModel.load(args.model)
    os.makedirs(args.out, exist_ok=True)
    path = sample_grid(model, list(args.prompt or DEMO_PROMPTS), os.path.join(args.out, "samples.png"),
                       seeds=range(args.seed, args.seed + 4), steps=args.steps, guidance=args.guidance)
    summary = {"samples": os.path.abspath(path), "model": args.model, "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary) if args.json else f"unlearn-fast demo: wrote {summary['samples']} "
          f"({summary['seconds']} s)")


def cmd_export_data(args) -> None:
    from .data import export_imagefolder, open_dataset

    dataset = open_dataset(args.data)
    export_imagefolder(dataset, args.out)
    print(json.dumps({"out": os.path.abspath(args.out), "images": len(dataset)}))


def _sampling_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--model", default="default", help="model folder ('default': the shipped emoji model)")
    parser.add_argument("--out", default=out)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearn-fast", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)

    train = sub.add_parser("train", help="train the VAE and the diffusion model (or fine-tune one) on a captioned set")
    train.add_argument("--data", default="default", help="'default', an image folder with metadata.jsonl, a .parquet "
                       "file or webdataset shards")
    train.add_argument("--caption-column", default="text")
    train.add_argument("--out", required=True, help="model folder to write (diffusers layout)")
    train.add_argument("--init-from", help="model folder to fine-tune from (all weights)")
    train.add_argument("--vae-from", help="model folder whose VAE to reuse (no VAE training): leave-K-out retraining")
    train.add_argument("--exclude", help="training indices never to show the model: '3,17,42' or a file")
    train.add_argument("--add-token", action="append", help="new word for the vocabulary, e.g. '<v1>' (repeatable)")
    train.add_argument("--steps", type=int, default=4000, help="diffusion training steps")
    train.add_argument("--vae-steps", type=int, default=1500, help="VAE training steps (ignored with --vae-from / "
                       "--init-from)")
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--ema-decay", type=float, default=0.999)
    train.add_argument("--caption-dropout", type=float, default=0.1)
    train.add_argument("--unet-parameters", default="all", help="UNet parameter group to train: all, kv, "
                       "cross-attention, attention or a regex")
    train.add_argument("--freeze-text-encoder", action="store_true")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
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
    grid.add_argument("--per-prompt", type=int, default=4)
    grid.set_defaults(run=cmd_grid)

    demo = sub.add_parser("demo", help="run the main job on the embedded default model and data")
    _sampling_arguments(demo, out="unlearn-fast-demo")
    demo.add_argument("--prompt", action="append", help="prompt to use instead of the defaults (repeatable)")
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(run=cmd_demo)

    export = sub.add_parser("export-data", help="write a training set (e.g. the embedded default) as an image folder")
    export.add_argument("--data", default="default")
    export.add_argument("--out", required=True)
    export.set_defaults(run=cmd_export_data)
    return parser


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded with what it produced (training.json)
    args.run(args)


if __name__ == "__main__":
    main()
