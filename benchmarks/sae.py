"""TopK SAE training on cached activations on CPU: mikit.sae.train_sae vs SAELens's SAETrainer.

    python -m mikit.sae cache smollm2-135m-l15-topk64 acts.safetensors   # the shipped SAE's activations, once
    python benchmarks/sae.py --activations acts.safetensors
    python benchmarks/sae.py --tokens 65536          # caches that recipe's first rows itself (SmolLM2-135M, layer 15)

Both libraries train a TopK SAE of the same size (d_sae, k) with Adam at the same lr, on the same batches in
the same order (one `CachedActivations`), for the same number of steps. The peer is SAELens's own loop,
`SAETrainer.fit()` fed a plain iterator of batches, so its per-step work counts. Each keeps its own TopK
recipe: mikit starts b_dec at the geometric median, keeps unit decoder rows and uses AuxK at 1/32
(normalised MSE); SAELens starts b_dec at 0 and the decoder rows at norm 0.1, scales latents by the decoder
norms and uses AuxK at 1.0 (plain MSE). Both count a latent dead after 1000 steps without firing, so short
runs never reach AuxK. The lr falls linearly to 0 over the last 20 % of steps in both. Before either sees
them, activations are rescaled so their mean squared norm is d; SAELens gets normalize_activations="none".
Tokens with norms over 10x the median (SmolLM2's massive activations, 0.05 %) are dropped, and the
last 10 % of the rest are held out. The lines printed are `name  ours  peer  ratio`, then FVU and L0 on
those held-out tokens. Target: a ratio of at least 1.0x with an FVU no worse than the peer's.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # SAETrainer.fit always draws a progress bar

import torch
from safetensors.torch import load_file
from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig

from mikit.sae import TopKSAE
from mikit.sae.metrics import fvu, l0
from mikit.sae.recipes import RECIPES, recipe_activations
from mikit.sae.training import CachedActivations, input_scale, train_sae


def cache_activations(n_tokens: int) -> torch.Tensor:
    recipe = RECIPES["smollm2-135m-l15-topk64"]
    return recipe_activations(dataclasses.replace(recipe, train_rows=math.ceil(n_tokens / (recipe.context - 1))))


def train_ours(data: CachedActivations, n_steps: int, args: argparse.Namespace) -> TopKSAE:
    torch.manual_seed(args.seed)
    sae = TopKSAE(data.activations.shape[1], args.d_sae, k=args.k)
    train_sae(sae, data, n_tokens=n_steps * data.batch_size, lr=args.lr, progress=False)
    return sae


def train_peer(data: CachedActivations, n_steps: int, args: argparse.Namespace) -> TopKTrainingSAE:
    torch.manual_seed(args.seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(
        d_in=data.activations.shape[1], d_sae=args.d_sae, k=args.k, normalize_activations="none",
    ))
    cfg = SAETrainerConfig(
        total_training_samples=n_steps * data.batch_size, train_batch_size_samples=data.batch_size,
        lr=args.lr, lr_end=args.lr, lr_decay_steps=n_steps - int(n_steps * 0.8), device="cpu",
    )

    def batches():  # SAELens's data provider: an endless iterator of batches
        while True:
            yield from data

    return SAETrainer(cfg, sae, batches()).fit()


def timed(train, data: CachedActivations, n_steps: int, args: argparse.Namespace):
    start = time.perf_counter()
    sae = train(data, n_steps, args)
    return sae, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activations", help="activations written by `python -m mikit.sae cache`; default: cache them")
    parser.add_argument("--tokens", type=int, default=262_144, help="training tokens (repeats epochs if needed)")
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    acts = load_file(args.activations)["activations"] if args.activations else cache_activations(math.ceil(args.tokens / 0.9))
    # SmolLM2's "massive activations" (Sun et al. 2024): a few tokens at the start of rows with norms
    # ~100x the median. They would set the input scale and most of the FVU's variance, so both SAEs
    # train and are measured without them.
    norms = acts.norm(dim=-1)
    massive = norms > 10 * norms.median()
    acts = acts[~massive]
    n_train = int(acts.shape[0] * 0.9)
    acts = acts.float() * input_scale(acts[:n_train])
    train, held_out = acts[:n_train], acts[n_train:]
    n_steps = max(1, args.tokens // args.batch_size)
    print(f"{acts.shape[0]} tokens x d={acts.shape[1]} ({held_out.shape[0]} held out; {int(massive.sum())} massive dropped); "
          f"{n_steps} steps of {args.batch_size}; d_sae={args.d_sae}, k={args.k}, {args.threads} threads")

    for train_fn in (train_ours, train_peer):  # warm-up: two steps each, untimed
        train_fn(CachedActivations(train, args.batch_size, args.seed), 2, args)
    ours, ours_s = timed(train_ours, CachedActivations(train, args.batch_size, args.seed), n_steps, args)
    peer, peer_s = timed(train_peer, CachedActivations(train, args.batch_size, args.seed), n_steps, args)

    with torch.no_grad():
        ours.eval(), peer.eval()
        ours_latents, peer_latents = ours.encode(held_out), peer.encode(held_out)
        ours_fvu, peer_fvu = fvu(held_out, ours.decode(ours_latents)), fvu(held_out, peer.decode(peer_latents))
        ours_l0, peer_l0 = l0(ours_latents), l0(peer_latents)

    ours_rate, peer_rate = n_steps * args.batch_size / ours_s, n_steps * args.batch_size / peer_s
    print(f"{'name':<20}{'ours':>10}{'peer':>10}{'ratio':>8}")
    print(f"{'train tokens/s':<20}{ours_rate:>10.0f}{peer_rate:>10.0f}{ours_rate / peer_rate:>7.2f}x")
    print(f"{'held-out FVU':<20}{ours_fvu:>10.4f}{peer_fvu:>10.4f}")
    print(f"{'held-out L0':<20}{ours_l0:>10.2f}{peer_l0:>10.2f}")
    if abs(ours_l0 - peer_l0) > 0.01 * args.k:
        sys.exit(f"WARNING: L0 differs (ours {ours_l0:.2f}, peer {peer_l0:.2f}): the FVUs are not comparable")


if __name__ == "__main__":
    main()
