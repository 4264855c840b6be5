"""A tiny captioner (a LLaVA-style vision-language model) and how much its words attend to the image.

    model = TinyCaptioner(TinyCaptionerConfig())
    logits = model(images, caption_ids)                     # images (B, 3, 32, 32) in [0, 1] → (B, caption, vocab)
    words = greedy_caption(model, images)                   # [["a", "large", "red", "circle"], ...]
    _, cache = model.run_with_cache(images, caption_ids, names_filter=lambda n: n.endswith("hook_pattern"))
    cache["blocks.0.attn.hook_pattern"]                     # (B, head, query, key); keys = [64 image, caption]

Read it top to bottom: a 32×32 image is cut into 4×4 patches, each linearly embedded (64 image
tokens, as LLaVA projects vision features into the language model's input); the caption's words
follow them in one sequence. Every block attends jointly over that sequence with a prefix-LM mask:
image tokens see all image tokens, a word sees all image tokens and the words up to itself. The
model predicts the next word; VOCAB has no end token, so <pad> after the last word ends a caption.

The second half asks whether hallucinated words look less at the image, as reported for LLaVA-style
models: `label_words` marks each generated colour and shape word grounded or hallucinated against the
scene, `generated_word_shares` replays the captions with a cache of attention patterns and reads each
word's image attention share where the model chose the word (`word_image_shares`), and `attention_gap`
compares the two groups with a bootstrap interval, optionally within strata of like words. Compare
within caption positions: a word's image share falls with its position whatever it is, and
hallucinations gather late in long captions, so a raw gap can be position alone (in the shipped
captioner it mostly is: see `captioner_recipe.hallucination_study`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

from mikit.xattn.model import Attention, patchify, sincos_2d
from mikit.xattn.scenes import COLOURS, RADII, SHAPES, SIZE, VOCAB, SceneObject, tokenize

PAD, BOS = VOCAB.index("<pad>"), VOCAB.index("<bos>")
END = PAD  # the token that ends a caption (VOCAB is shared with the text-to-image model, so no <eos>)


@dataclass(frozen=True)
class TinyCaptionerConfig:
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 3
    patch: int = 4
    d_mlp: int = 128
    caption_length: int = 16  # <bos> + at most 15 words; the longest scene caption has 14
    d_vocab: int = len(VOCAB)

    @property
    def n_patches(self) -> int:
        return (SIZE // self.patch) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def prefix_lm_mask(n_image: int, n_text: int) -> Bool[Tensor, "q_pos k_pos"]:
    """True where a query may attend to a key: image→image, word→image, word→earlier words and itself."""
    n = n_image + n_text
    query, key = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (key < n_image) | ((query >= n_image) & (key <= query))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: masked joint attention, then an MLP."""

    def __init__(self, cfg: TinyCaptionerConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_mlp), nn.GELU(), nn.Linear(cfg.d_mlp, cfg.d_model))
        self.hook_resid_pre, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "pos pos"]) -> Float[Tensor, "batch pos d_model"]:
        x = self.hook_resid_pre(x)
        h = self.ln1(x)
        x = x + self.attn(h, h, mask=mask)
        return self.hook_resid_post(x + self.mlp(self.ln2(x)))


class TinyCaptioner(HookedRootModule):
    """Image + caption ids so far → logits for each next word."""

    def __init__(self, cfg: TinyCaptionerConfig):
        super().__init__()
        if cfg.d_model % 4 or cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model must be a multiple of 4 (for the 2D positions) and of n_heads ({cfg.n_heads}), "
                             f"not {cfg.d_model}.")
        self.cfg = cfg
        self.embed_patches = nn.Linear(3 * cfg.patch**2, cfg.d_model)
        # Patch positions start as a 2D sine-cosine grid (as in MAE) so that where-questions ("left of",
        # shape outlines) need not wait for positions to be learned from scratch; they stay trainable.
        self.pos_image = nn.Parameter(sincos_2d(SIZE // cfg.patch, cfg.d_model) * 0.5)
        self.embed_words = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_words = nn.Parameter(torch.randn(cfg.caption_length, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab)
        self.hook_image = HookPoint()  # (B, 64, d): the image tokens, as the first block reads them
        self.setup()  # names every HookPoint after its module path (TransformerLens)

    def patchify(self, images: Float[Tensor, "batch 3 h w"]) -> Float[Tensor, "batch patch d_patch"]:
        return patchify(images, self.cfg.patch)

    def forward(self, images: Float[Tensor, "batch 3 h w"], caption_ids: Int[Tensor, "batch word"]) -> Float[Tensor, "batch word d_vocab"]:
        n_image, n_text = self.cfg.n_patches, caption_ids.shape[1]
        if n_text > self.cfg.caption_length:
            raise ValueError(f"captions hold at most {self.cfg.caption_length} tokens, not {n_text}.")
        image = self.hook_image(self.embed_patches(self.patchify(images)) + self.pos_image)
        words = self.embed_words(caption_ids) + self.pos_words[:n_text]
        x = torch.cat([image, words], dim=1)  # (B, 64 + c, d)
        mask = prefix_lm_mask(n_image, n_text).to(images.device)
        for block in self.blocks:
            x = block(x, mask)
        return self.unembed(self.ln_final(x[:, n_image:]))  # only words predict words


@torch.inference_mode()
def greedy_caption(model: TinyCaptioner, images: Float[Tensor, "batch 3 h w"],
                   max_len: int | None = None) -> list[list[str]]:
    """Each image's caption by greedy decoding, as words, up to the end token or `max_len` words."""
    max_len = model.cfg.caption_length - 1 if max_len is None else max_len
    if not 0 <= max_len < model.cfg.caption_length:
        raise ValueError(f"max_len must be between 0 and {model.cfg.caption_length - 1} (the positions after <bos>), "
                         f"not {max_len}.")
    ids = torch.full((images.shape[0], 1), BOS, device=images.device)
    done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
    for _ in range(max_len):
        logits = model(images, ids)[:, -1]
        logits[:, BOS] = float("-inf")  # <bos> only starts a caption
        next_id = logits.argmax(-1).masked_fill(done, END)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        done |= next_id == END
        if done.all():
            break
    captions = []
    for row in ids[:, 1:].tolist():
        end = row.index(END) if END in row else len(row)
        captions.append([VOCAB[i] for i in row[:end]])
    return captions


# ---------------------------------------------------------------- attention vs hallucination

def image_attention_share(pattern: Float[Tensor, "batch head q_pos k_pos"],
                          n_image: int) -> Float[Tensor, "batch head q_pos"]:
    """Each query's attention mass on the first `n_image` keys (the image tokens)."""
    if not 0 <= n_image <= pattern.shape[-1]:
        raise ValueError(f"n_image must be between 0 and the number of keys ({pattern.shape[-1]}), not {n_image}.")
    return pattern[..., :n_image].sum(-1)


def word_image_shares(patterns: Float[Tensor, "layer batch head pos pos"], n_image: int,
                      caption: Int[Tensor, "word"], position: Int[Tensor, "word"]) -> Float[Tensor, "word layer"]:
    """Each word's image attention share per layer, read at the query that predicted it, mean over heads.

    `patterns` are every layer's attention over the sequence [n_image image tokens, <bos>, word 0, word 1, ...]
    (queries and keys alike). Word `position[i]` of caption `caption[i]` sits at token n_image + 1 + position[i];
    the model chose it at the token before, query n_image + position[i] (<bos> predicts word 0).
    """
    if caption.shape != position.shape:
        raise ValueError(f"caption and position need one entry per word: shapes {tuple(caption.shape)} and "
                         f"{tuple(position.shape)}.")
    n_text = patterns.shape[-2] - n_image
    if position.numel() and not (0 <= int(position.min()) and int(position.max()) < n_text - 1):
        raise ValueError(f"word positions must be between 0 and {n_text - 2} (the sequence holds {n_text} caption "
                         f"tokens, <bos> first), not {int(position.min())} to {int(position.max())}.")
    shares = image_attention_share(patterns, n_image).mean(2)  # (layer, batch, query), mean over heads
    return shares[:, caption, n_image + position].transpose(0, 1)


OBJECT_WORDS = {*RADII, *COLOURS, *SHAPES}


def object_phrases(words: list[str]) -> list[tuple[int, int]]:
    """The (start, end) spans of maximal runs of size, colour and shape words: "large red circle"."""
    spans, start = [], None
    for i, word in enumerate([*words, ""]):
        if word in OBJECT_WORDS and start is None:
            start = i
        elif word not in OBJECT_WORDS and start is not None:
            spans.append((start, i))
            start = None
    return spans


def phrase_matches(phrase: list[str], obj: SceneObject) -> bool:
    """Whether `obj` has every colour and every shape the phrase names."""
    return all(w == obj.colour for w in phrase if w in COLOURS) and all(w == obj.shape for w in phrase if w in SHAPES)


def label_words(words: list[str], objects: list[SceneObject]) -> list[str | None]:
    """Per word: "grounded" or "hallucinated" for colour and shape words, None for every other word.

    A phrase is a maximal run of size, colour and shape words ("large red circle"). It is grounded when
    one scene object has every colour and every shape it names; then its colour and shape words are
    grounded, otherwise all of them are hallucinated. So a swapped binding ("red square" for a red
    circle and a blue square) is a hallucination of both words, though each exists somewhere in the
    scene. Size words are not judged (None): the question is which object is named, not how big it is.
    """
    labels: list[str | None] = [None] * len(words)
    for start, end in object_phrases(words):
        grounded = any(phrase_matches(words[start:end], o) for o in objects)
        for j in range(start, end):
            if words[j] in COLOURS or words[j] in SHAPES:
                labels[j] = "grounded" if grounded else "hallucinated"
    return labels


@dataclass
class WordShares:
    """Every judged word of a set of generated captions, with its image attention share per layer."""

    caption: Int[Tensor, "batch"]  # which caption (and image) the word is from
    position: Int[Tensor, "batch"]  # the word's index in its caption
    words: list[str]
    hallucinated: Bool[Tensor, "batch"]
    shares: Float[Tensor, "batch layer"]  # image share at the query that predicted the word, mean over heads

    @property
    def is_colour(self) -> Bool[Tensor, "batch"]:
        return torch.tensor([w in COLOURS for w in self.words], dtype=torch.bool)


@torch.inference_mode()
def generated_word_shares(model: TinyCaptioner, images: Float[Tensor, "batch 3 h w"], captions: list[list[str]],
                          scenes_objects: list[list[SceneObject]], batch_size: int = 200) -> WordShares:
    """Teacher-force each caption through `model` and read each colour/shape word's image attention share.

    A word's share is taken at the query that predicted it (the token before it), i.e. where the model
    decided to write it, averaged over heads; one value per layer.
    """
    if not len(captions) == len(scenes_objects) == images.shape[0]:
        raise ValueError(f"need one caption and one scene per image: {images.shape[0]} images, "
                         f"{len(captions)} captions, {len(scenes_objects)} scenes.")
    n_image, n_layers = model.cfg.n_patches, model.cfg.n_layers
    names = [get_act_name("pattern", layer) for layer in range(n_layers)]
    rows: dict[str, list] = {"caption": [], "position": [], "words": [], "hallucinated": [], "shares": []}
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        ids = torch.stack([tokenize(words, model.cfg.caption_length) for words in chunk]).to(images.device)
        _, cache = model.run_with_cache(images[start : start + batch_size], ids, names_filter=lambda n: n in names)
        in_chunk, positions = [], []
        for b, words in enumerate(chunk):
            for position, label in enumerate(label_words(words, scenes_objects[start + b])):
                if label is None:
                    continue
                in_chunk.append(b)
                positions.append(position)
                rows["words"].append(words[position])
                rows["hallucinated"].append(label == "hallucinated")
        in_chunk, positions = torch.tensor(in_chunk, dtype=torch.long), torch.tensor(positions, dtype=torch.long)
        patterns = torch.stack([cache[n] for n in names])  # (layer, B, head, query, key)
        rows["caption"].append(start + in_chunk)
        rows["position"].append(positions)
        rows["shares"].append(word_image_shares(patterns, n_image, in_chunk.to(patterns.device),
                                                positions.to(patterns.device)).cpu())
    if not rows["shares"]:
        rows.update(caption=[torch.empty(0, dtype=torch.long)], position=[torch.empty(0, dtype=torch.long)],
                    shares=[torch.empty(0, n_layers)])
    return WordShares(torch.cat(rows["caption"]), torch.cat(rows["position"]), rows["words"],
                      torch.tensor(rows["hallucinated"], dtype=torch.bool), torch.cat(rows["shares"]))


@dataclass(frozen=True)
class Gap:
    """mean(hallucinated) − mean(grounded), with a bootstrap 95 % interval; tensors of the inputs' trailing shape."""

    gap: Tensor
    low: Tensor
    high: Tensor


def attention_gap(shares_hallucinated: Float[Tensor, "n_h *rest"], shares_grounded: Float[Tensor, "n_g *rest"],
                  n_boot: int = 1000, seed: int = 0,
                  strata: tuple[Int[Tensor, "n_h"], Int[Tensor, "n_g"]] | None = None) -> Gap:
    """Difference of mean image shares (hallucinated − grounded) and its percentile bootstrap 95 % interval.

    Each group is resampled with replacement on its own; words are treated as independent, which
    words of one caption are not, so read the interval as a lower bound on the real uncertainty.
    Trailing dimensions (e.g. layers) get one gap each. With `strata` (a label per word of each group,
    e.g. its position in the caption) the gap is taken within each stratum and averaged with weights
    from the hallucinated words, so that only like is compared with like; hallucinated words in a
    stratum without grounded ones are left out.
    """
    h, g = shares_hallucinated.double(), shares_grounded.double()
    if strata is None:
        strata = (torch.zeros(h.shape[0], dtype=torch.long), torch.zeros(g.shape[0], dtype=torch.long))
    if strata[0].shape[0] != h.shape[0] or strata[1].shape[0] != g.shape[0]:
        raise ValueError(f"strata need one label per word: {h.shape[0]} and {g.shape[0]} words, "
                         f"{strata[0].shape[0]} and {strata[1].shape[0]} labels.")
    shared = [s for s in strata[0].unique().tolist() if (strata[1] == s).any()]
    n_shared = sum(int((strata[0] == s).sum()) for s in shared)
    if n_shared < 2 or g.shape[0] < 2:
        raise ValueError(f"each group needs at least 2 words (in shared strata); got {n_shared} hallucinated "
                         f"and {g.shape[0]} grounded.")
    generator = torch.Generator().manual_seed(seed)
    gap = torch.zeros(h.shape[1:], dtype=torch.double)
    boots = torch.zeros((n_boot, *h.shape[1:]), dtype=torch.double)
    for s in shared:
        hs, gs = h[strata[0] == s], g[strata[1] == s]
        weight = hs.shape[0] / n_shared
        gap += weight * (hs.mean(0) - gs.mean(0))
        pick_h = torch.randint(0, hs.shape[0], (n_boot, hs.shape[0]), generator=generator)
        pick_g = torch.randint(0, gs.shape[0], (n_boot, gs.shape[0]), generator=generator)
        boots += weight * (hs[pick_h].mean(1) - gs[pick_g].mean(1))  # (n_boot, *rest)
    low, high = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.double), dim=0)
    return Gap(gap.float(), low.float(), high.float())
