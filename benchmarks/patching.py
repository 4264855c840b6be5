"""Head × position activation patching on SmolLM2-135M IOI prompts: mikit.patching vs transformer_lens.patching.

    python benchmarks/patching.py                    # layers 0, 10, 20, 29 (a spread sample; minutes)
    python benchmarks/patching.py --layers all       # every layer (TransformerLens takes about an hour on 2 cores)

Both sweeps patch the clean output of one head at one position into the ABC-corrupted run and read
the mean logit difference. The results must agree to 1e-4; the line printed is `name  ours  peer  ratio`.
mikit skips patches that copy identical values: here the 2 positions before the first name
(`<bos>`, "When"), 2 of 15, at every layer; the rest of the ratio is batching and starting late.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's sweep draws a progress bar per patch

import pandas as pd
import torch
from transformer_lens import patching as tl_patching

import mikit
from mikit import patching
from mikit.datasets.ioi import TEMPLATES, IOIDataset
from mikit.ioi import logit_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="0,10,20,29", help="comma-separated layers, or 'all'")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = mikit.load_model("smollm2-135m", device="cpu")
    layers = list(range(model.cfg.n_layers)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    # One template: every prompt has the same length, as TransformerLens's by-position patching needs.
    ds = IOIDataset(model, n_prompts=args.prompts, templates=[TEMPLATES[0]], seed=0)
    abc = ds.corrupted("ABC")
    metric = lambda logits: logit_diff(logits, ds).mean()  # noqa: E731
    n_pos, n_heads = ds.tokens.shape[1], model.cfg.n_heads
    print(f"{len(ds)} prompts x {n_pos} positions; layers {layers}: {len(layers) * n_pos * n_heads} patches")

    start = time.perf_counter()
    ours = patching.patch_head_out(model, ds.tokens, abc.tokens, metric, by_position=True, layers=layers,
                                   batch_size=args.batch_size, progress=False)
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    with torch.inference_mode():
        _, clean_cache = model.run_with_cache(ds.tokens)
        index = pd.DataFrame(
            [(layer, pos, head) for layer in layers for pos in range(n_pos) for head in range(n_heads)],
            columns=["layer", "pos", "head"],
        )
        peer = tl_patching.generic_activation_patch(
            model, abc.tokens, clean_cache, metric, tl_patching.layer_pos_head_vector_patch_setter, "z",
            index_df=index,
        )
    peer_s = time.perf_counter() - start

    diff = (ours[layers].flatten() - peer.float()).abs().max().item()
    print(f"max |ours - peer| = {diff:.1e}")
    assert diff <= 1e-4, "mikit and TransformerLens disagree"
    print(f"{'name':<34}{'ours':>9}{'peer':>9}{'ratio':>8}")
    print(f"{'head x position patching (s)':<34}{ours_s:>9.1f}{peer_s:>9.1f}{peer_s / ours_s:>7.1f}x")


if __name__ == "__main__":
    main()
