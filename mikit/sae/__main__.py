"""`python -m mikit.sae cache|train NAME ...`: compute a recipe's training activations, train a shipped SAE."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mikit.sae.recipes import RECIPES, SAE_DIR, recipe_activations, train_recipe


def main(argv: list[str] | None = None) -> int:
    """Run the SAE recipes' command line."""
    parser = argparse.ArgumentParser(prog="python -m mikit.sae", description="Train the SAEs mikit ships.")
    parser.add_argument("--threads", type=int, default=2)
    commands = parser.add_subparsers(dest="command", required=True)
    cache = commands.add_parser("cache", help="run the model over the recipe's training rows; save the activations")
    cache.add_argument("name", choices=sorted(RECIPES))
    cache.add_argument("file", type=Path, help="a .safetensors file to write")
    trainer = commands.add_parser("train", help="train an SAE recipe, evaluate it on held-out text, index its latents")
    trainer.add_argument("name", choices=sorted(RECIPES))
    trainer.add_argument("--out", type=Path, help=f"output folder (default: {SAE_DIR}/NAME)")
    trainer.add_argument("--activations", type=Path, help="activations written by `cache` (skips the model run)")
    trainer.add_argument("--train-rows", type=int, help="fewer training rows than the recipe's (a quick trial)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = RECIPES[args.name]
    if args.command == "cache":
        save_file({"activations": recipe_activations(recipe).contiguous()}, str(args.file))
        print(f"wrote {args.file}")
        return 0
    if args.train_rows:
        recipe = dataclasses.replace(recipe, train_rows=args.train_rows)
    activations = None
    if args.activations:
        activations = load_file(str(args.activations))["activations"][: recipe.train_rows * (recipe.context - 1)]
    _, report = train_recipe(recipe, args.out, activations)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
