"""`python -m mikit.circuits train-planted` / `train-sparse`: retrain the shipped planted and sparse-attention models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mikit.circuits.planted import PLANTED_DIR, train_planted
from mikit.circuits.sparse import SPARSE_DIR, train_sparse
from mikit.storage import read_config


def main(argv: list[str] | None = None) -> int:
    """Run the circuits command line."""
    parser = argparse.ArgumentParser(prog="python -m mikit.circuits", description="Train the models mikit.circuits ships.")
    parser.add_argument("--threads", type=int, default=2)
    commands = parser.add_subparsers(dest="command", required=True)
    trainer = commands.add_parser("train-planted", help="train the model with a planted induction circuit")
    trainer.add_argument("--out", type=Path, default=PLANTED_DIR, help=f"output folder (default: {PLANTED_DIR})")
    trainer.add_argument("--steps", type=int, default=1500)
    sparse = commands.add_parser("train-sparse", help="post-train attn-only-2l for sparse attention")
    sparse.add_argument("--out", type=Path, default=SPARSE_DIR, help=f"output folder (default: {SPARSE_DIR})")
    sparse.add_argument("--steps", type=int, default=400)
    sparse.add_argument("--tolerance", type=float, default=0.03, help="loss increase allowed, nats per token")
    sparse.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "train-planted":
        train_planted(args.out, steps=args.steps)
    else:
        train_sparse(args.out, steps=args.steps, tolerance=args.tolerance, seed=args.seed)
    print(json.dumps(read_config(args.out)["metrics"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
