"""`python -m mikit.zoo list` and `python -m mikit.zoo train NAME [--out DIR] [--steps N] [--seed S] [--checkpoints [DIR]]`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from mikit.induction import summarize_model
from mikit.zoo import CHECKPOINTS_SUFFIX, RECIPES, TOY_MODELS, ZOO_MODELS, read_config, train, zoo_dir


def _list(args: argparse.Namespace) -> int:
    """Print each zoo model, whether its files are in the zoo folder, and what it is; then its checkpoints, if any."""
    for name, description in ZOO_MODELS.items():
        shipped = "shipped" if (zoo_dir() / name / "config.json").exists() else "not trained"
        print(f"{name:16} [{shipped}] {description}")
        series = zoo_dir() / f"{name}{CHECKPOINTS_SUFFIX}"
        if (series / "config.json").exists():
            steps = read_config(series)["steps"]
            print(f"{series.name:16} [shipped] {len(steps)} training checkpoints of {name}, steps {steps[0]}-{steps[-1]}")
    return 0


def _checkpoint_folder(args: argparse.Namespace, out: Path) -> Path | None:
    """Where `--checkpoints` asks the checkpoints of a model trained into `out` to go (None without it)."""
    if not args.checkpoints:
        return None
    return out.parent / f"{out.name}{CHECKPOINTS_SUFFIX}" if args.checkpoints is True else args.checkpoints


def _train(args: argparse.Namespace) -> int:
    """Train a recipe, with any overrides from the command line, and print its final metrics."""
    if args.name in TOY_MODELS:
        return _train_toy(args)
    overrides = {"steps": args.steps, "seed": args.seed, "batch_size": args.batch_size}
    recipe = dataclasses.replace(RECIPES[args.name], **{k: v for k, v in overrides.items() if v is not None})
    # The recipes are sized for, and their timings recorded on, a 2-core CPU; the recipe's threads reproduce its weights.
    torch.set_num_threads(args.threads or recipe.threads)
    out = args.out or zoo_dir() / args.name
    checkpoints = _checkpoint_folder(args, out)
    measure = lambda model, text: summarize_model(model, text, seq_len=recipe.eval_repeat_len)  # noqa: E731
    train(recipe, out, measure=measure, checkpoints=checkpoints)
    record = read_config(out)
    print(f"wrote {out} in {record['recipe']['train_seconds']} s")
    if checkpoints:
        print(f"wrote checkpoints at steps {read_config(checkpoints)['steps']} into {checkpoints}")
    print(json.dumps(record["metrics"], indent=2))
    return 0


def _train_toy(args: argparse.Namespace) -> int:
    """Train a toy task's model with its own recipe (`mikit.toys.zoo_models`) and print its figures."""
    from mikit.toys.zoo_models import train_toy

    if args.batch_size is not None:
        raise ValueError(f"{args.name} trains with its recipe's batch; --batch-size is for the character models.")
    torch.set_num_threads(args.threads or 1)  # the toys' recipes were timed on one thread of a shared 2-core CPU
    out = args.out or zoo_dir() / args.name
    checkpoints = _checkpoint_folder(args, out)
    record = train_toy(args.name, out, checkpoints=checkpoints, steps=args.steps, seed=args.seed)
    print(f"wrote {out} in {record['recipe']['train_seconds']} s")
    if checkpoints:
        print(f"wrote checkpoints at steps {read_config(checkpoints)['steps']} into {checkpoints}")
    print(json.dumps(record["metrics"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the zoo command line."""
    parser = argparse.ArgumentParser(prog="python -m mikit.zoo", description="mikit's zoo of tiny trained models.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the zoo's models").set_defaults(func=_list)
    trainer = commands.add_parser("train", help="train a zoo model from scratch")
    trainer.add_argument("name", choices=sorted(ZOO_MODELS))
    trainer.add_argument("--out", type=Path, help="output folder (default: the zoo folder)")
    trainer.add_argument("--steps", type=int)
    trainer.add_argument("--seed", type=int)
    trainer.add_argument("--batch-size", type=int)
    trainer.add_argument("--threads", type=int, help="torch threads (default: the recipe's, which reproduce its weights)")
    trainer.add_argument(
        "--checkpoints", nargs="?", const=True, type=Path, metavar="DIR",
        help=f"also save log-spaced training checkpoints (default folder: the model's folder + {CHECKPOINTS_SUFFIX!r})",
    )
    trainer.set_defaults(func=_train)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
