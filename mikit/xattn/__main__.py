"""`python -m mikit.xattn train [--out DIR] [--steps N]`: train the shipped text-to-image model's recipe."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from mikit.xattn.recipes import RECIPE, XATTN_DIR, train_recipe


def main(argv: list[str] | None = None) -> int:
    """Run the text-to-image recipe's command line."""
    parser = argparse.ArgumentParser(prog="python -m mikit.xattn", description="Train the text-to-image model mikit ships.")
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--out", type=Path, help=f"output folder (default: {XATTN_DIR}/{RECIPE.name})")
    parser.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = dataclasses.replace(RECIPE, steps=args.steps) if args.steps else RECIPE
    _, report = train_recipe(recipe, args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
