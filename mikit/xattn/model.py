"""A tiny text-to-image model: a diffusion transformer whose image patches cross-attend to caption words.

    model = TinyT2I(TinyT2IConfig())
    velocity = model(noisy_images, t, caption_ids)          # flow matching: predict (image - noise)
    _, cache = model.run_with_cache(noisy_images, t, caption_ids, names_filter=lambda n: "cross_attn.hook_pattern" in n)
    cache["blocks.0.cross_attn.hook_pattern"]                # (batch, head, image patch, caption token)

Read it top to bottom: a 32×32 image is cut into 4×4 patches (64 image tokens); each block lets the
patches attend to each other (self-attention), then to the caption's words (cross-attention: queries
from patches, keys and values from words), then applies an MLP; the diffusion time enters every block
through adaptive LayerNorm (scale and shift from t), as in DiT (Peebles & Xie 2023). Every attention
has TransformerLens HookPoints (`hook_q`, `hook_k`, `hook_pattern`, `hook_z`), so TL-style hooks,
`run_with_cache` and nnsight all reach the cross-attention probabilities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookedRootModule, HookPoint

from mikit.xattn.scenes import SIZE, VOCAB


@dataclass(frozen=True)
class TinyT2IConfig:
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    patch: int = 4
    d_mlp: int = 256
    caption_length: int = 16
    d_vocab: int = len(VOCAB)
    causal_text: bool = False  # the caption encoder's mask: bidirectional, or causal as CLIP's

    @property
    def n_patches(self) -> int:
        return (SIZE // self.patch) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def sincos_2d(side: int, d_model: int) -> Float[Tensor, "patch d_model"]:
    """Fixed sin-cos position vectors for a side × side grid: half the dimensions code the row, half the column."""
    quarter = d_model // 4
    freqs = torch.exp(-math.log(100.0) * torch.arange(quarter) / quarter)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    angles = [axis.flatten()[:, None].float() * freqs[None] for axis in (rows, cols)]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=-1)


def patchify(images: Float[Tensor, "batch 3 h w"], patch: int) -> Float[Tensor, "batch patch d_patch"]:
    """Cut images into patch × patch squares, row by row: (B, n_patches, 3 · patch²)."""
    p = patch
    return images.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(images.shape[0], -1, 3 * p * p)


class Attention(nn.Module):
    """Multi-head attention; queries from `x`, keys and values from `context` (itself for self-attention)."""

    def __init__(self, cfg: TinyT2IConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.W_Q, self.W_K, self.W_V = (nn.Linear(cfg.d_model, cfg.d_model) for _ in range(3))
        self.W_O = nn.Linear(cfg.d_model, cfg.d_model)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()  # (B, T, H, d_head)
        self.hook_attn_scores = HookPoint()  # (B, H, query, key), before the softmax
        self.hook_pattern = HookPoint()  # (B, H, query, key), rows sum to 1 over keys
        self.hook_z = HookPoint()  # (B, query, H, d_head): the heads' outputs before W_O

    def forward(self, x: Float[Tensor, "batch q_pos d_model"], context: Float[Tensor, "batch k_pos d_model"],
                key_padding: Tensor | None = None, mask: Tensor | None = None) -> Float[Tensor, "batch q_pos d_model"]:
        """`key_padding` (B, k): True where a key is padding; `mask` (q, k): True where a query may attend."""
        split = lambda t: t.view(*t.shape[:2], self.n_heads, self.d_head)  # noqa: E731
        q = self.hook_q(split(self.W_Q(x)))
        k = self.hook_k(split(self.W_K(context)))
        v = self.hook_v(split(self.W_V(context)))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.d_head)
        if key_padding is not None:  # (B, k) True where the key is padding
            scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        pattern = self.hook_pattern(self.hook_attn_scores(scores).softmax(dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        return self.W_O(z.flatten(2))


class Block(nn.Module):
    """Self-attention over patches, cross-attention to the caption, MLP; each modulated by the time."""

    def __init__(self, cfg: TinyT2IConfig):
        super().__init__()
        self.self_attn, self.cross_attn = Attention(cfg), Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_mlp), nn.GELU(), nn.Linear(cfg.d_mlp, cfg.d_model))
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.d_model, elementwise_affine=False) for _ in range(3))
        # adaLN-Zero: from the time embedding, a shift, a scale and a gate per sub-layer; gates start at 0,
        # so every block starts as the identity.
        self.modulation = nn.Linear(cfg.d_model, 9 * cfg.d_model)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.hook_resid_pre, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor, time: Tensor, words: Tensor, padding: Tensor) -> Tensor:
        x = self.hook_resid_pre(x)
        mods = self.modulation(time)[:, None].chunk(9, dim=-1)
        shift, scale, gate = mods[0::3], mods[1::3], mods[2::3]  # one each per sub-layer
        h = self.norms[0](x) * (1 + scale[0]) + shift[0]
        x = x + gate[0] * self.self_attn(h, h)
        h = self.norms[1](x) * (1 + scale[1]) + shift[1]
        x = x + gate[1] * self.cross_attn(h, words, key_padding=padding)
        h = self.norms[2](x) * (1 + scale[2]) + shift[2]
        return self.hook_resid_post(x + gate[2] * self.mlp(h))


class TinyT2I(HookedRootModule):
    """Caption ids + noisy image + time → the flow-matching velocity (image − noise)."""

    def __init__(self, cfg: TinyT2IConfig):
        super().__init__()
        self.cfg = cfg
        patch_dim = 3 * cfg.patch**2
        self.embed_patches = nn.Linear(patch_dim, cfg.d_model)
        # Fixed 2-D sin-cos positions (as DiT): neighbouring patches know they are neighbours from step 0.
        self.register_buffer("pos_image", sincos_2d(SIZE // cfg.patch, cfg.d_model), persistent=False)
        self.embed_words = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_words = nn.Parameter(torch.randn(cfg.caption_length, cfg.d_model) * 0.02)
        self.caption_encoder = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_mlp, dropout=0.0,
                                                          batch_first=True, norm_first=True)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.SiLU(), nn.Linear(cfg.d_model, cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_out = nn.LayerNorm(cfg.d_model)
        self.unembed_patches = nn.Linear(cfg.d_model, patch_dim)
        nn.init.zeros_(self.unembed_patches.weight)
        nn.init.zeros_(self.unembed_patches.bias)
        # A 3×3 convolution over the reassembled image smooths the seams between patches (as U-ViT does);
        # it starts as the identity.
        self.refine = nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            self.refine.weight.zero_()
            self.refine.weight[range(3), range(3), 1, 1] = 1.0
            self.refine.bias.zero_()
        self.hook_words = HookPoint()  # (B, caption, d): the encoded caption every cross-attention reads
        self.setup()  # names every HookPoint after its module path (TransformerLens)

    def time_embedding(self, t: Float[Tensor, "batch"]) -> Float[Tensor, "batch d_model"]:
        half = self.cfg.d_model // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
        angles = 1000.0 * t[:, None] * freqs[None]
        return self.time_mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))

    def patchify(self, images: Float[Tensor, "batch 3 h w"]) -> Float[Tensor, "batch patch d_patch"]:
        return patchify(images, self.cfg.patch)

    def unpatchify(self, patches: Float[Tensor, "batch patch d_patch"]) -> Float[Tensor, "batch 3 h w"]:
        p, side = self.cfg.patch, SIZE // self.cfg.patch
        b = patches.shape[0]
        return patches.view(b, side, side, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, SIZE, SIZE)

    def encode_caption(self, caption_ids: Int[Tensor, "batch word"]) -> tuple[Tensor, Tensor]:
        """The caption's word vectors (B, c, d) and its padding mask (B, c)."""
        padding = caption_ids == VOCAB.index("<pad>")
        words = self.embed_words(caption_ids) + self.pos_words[: caption_ids.shape[1]]
        # Bidirectional by default. Causal, as CLIP's text encoder, a word sees only the words before it:
        # "circle" in "a large red circle" carries its whole phrase, "large" knows nothing of the circle
        # yet. The shipped recipe is causal, and trained on captions that sometimes omit attributes
        # (training.omit_words): the shape word then becomes what an object's patches look up.
        n = caption_ids.shape[1]
        if self.cfg.causal_text:
            causal = torch.ones(n, n, dtype=torch.bool, device=caption_ids.device).triu(1)  # True: may not attend
            encoded = self.caption_encoder(words, src_mask=causal, is_causal=True, src_key_padding_mask=padding)
        else:
            encoded = self.caption_encoder(words, src_key_padding_mask=padding)
        return self.hook_words(encoded), padding

    def forward(self, images: Float[Tensor, "batch 3 h w"], t: Float[Tensor, "batch"],
                caption_ids: Int[Tensor, "batch word"]) -> Float[Tensor, "batch 3 h w"]:
        words, padding = self.encode_caption(caption_ids)
        time = self.time_embedding(t)
        x = self.embed_patches(self.patchify(images)) + self.pos_image
        for block in self.blocks:
            x = block(x, time, words, padding)
        return self.refine(self.unpatchify(self.unembed_patches(self.norm_out(x))))
