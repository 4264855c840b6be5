"""`python -m mikit.xattn train|train-captioner [--out DIR] [--steps N]`: train a shipped model's recipe."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from mikit.xattn.captioner_recipe import RECIPE as CAPTIONER_RECIPE
from mikit.xattn.captioner_recipe import train_recipe as train_captioner_recipe
from mikit.xattn.recipes import RECIPE, XATTN_DIR, train_recipe


def main(argv: list[str] | None = None) -> int:
    """Run the recipes' command line: `train` the text-to-image model, `train-captioner` the captioner."""
    parser = argparse.ArgumentParser(prog="python -m mikit.xattn", description="Train the models mikit.xattn ships.")
    parser.add_argument("command", choices=["train", "train-captioner"])
    parser.add_argument("--out", type=Path, help=f"output folder (default: {XATTN_DIR}/<recipe name>)")
    parser.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe, train = (RECIPE, train_recipe) if args.command == "train" else (CAPTIONER_RECIPE, train_captioner_recipe)
    recipe = dataclasses.replace(recipe, steps=args.steps) if args.steps else recipe
    _, report = train(recipe, args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
