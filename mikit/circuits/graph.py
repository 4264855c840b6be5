"""The computational graph of a HookedTransformer, as circuit discovery sees it.

Nodes that write into the residual stream (*sources*): the input (token + position embeddings), every
attention head and every MLP. Nodes that read from it (*receivers*): each head's query, key and value
inputs, each MLP's input, and the logits. Every source in an earlier position of the forward pass feeds
every receiver after it, through the residual stream: that is an *edge*.

Grouped-query attention (SmolLM2: 9 query heads share 3 key/value heads per layer) has one key and one
value receiver per key/value head, since those heads read the residual stream once for their whole
group; a model without grouping has one per head.

    graph = Graph.of(model)
    graph.n_edges                      # 81 for attn-only-2l (2 layers × 4 heads)
    graph.edge_names[:2]               # ['input->a0.h0<q>', 'input->a0.h1<q>']
    graph.edge_index("a0.h1", "a1.h2<k>")

Edges are numbered once, in a fixed order: receivers in forward order, and for each receiver its
sources in forward order. Every per-edge tensor in `mikit.circuits` (scores, masks) uses that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import torch
from torch import Tensor
from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class Receiver:
    """The receivers that one hook point feeds: `n` of them side by side on its head axis (1 for an MLP or the
    logits), each reading the first `n_sources` sources. `names[i]` is the i-th receiver's name."""

    hook: str
    names: tuple[str, ...]
    n_sources: int
    head_axis: bool
    first_edge: int

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def edges(self) -> slice:
        """This hook's edges in the graph's edge order: `n_sources × n` of them, source-major."""
        return slice(self.first_edge, self.first_edge + self.n_sources * self.n)


@dataclass
class Graph:
    """Sources, receivers and edges of one model's computational graph (see the module's docstring)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    attn_only: bool
    sources: list[str] = field(init=False)
    receivers: list[Receiver] = field(init=False)

    def __post_init__(self) -> None:
        self.sources, self.receivers = ["input"], []
        first = 0

        def receive(hook: str, names: list[str], head_axis: bool) -> None:
            nonlocal first
            self.receivers.append(Receiver(hook, tuple(names), len(self.sources), head_axis, first))
            first += len(self.sources) * len(names)

        grouped = self.n_kv_heads != self.n_heads
        for layer in range(self.n_layers):
            receive(f"blocks.{layer}.hook_q_input", [f"a{layer}.h{h}<q>" for h in range(self.n_heads)], True)
            kv = [f"a{layer}.kv{g}" if grouped else f"a{layer}.h{g}" for g in range(self.n_kv_heads)]
            receive(f"blocks.{layer}.hook_k_input", [f"{name}<k>" for name in kv], True)
            receive(f"blocks.{layer}.hook_v_input", [f"{name}<v>" for name in kv], True)
            self.sources += [f"a{layer}.h{h}" for h in range(self.n_heads)]
            if not self.attn_only:
                receive(f"blocks.{layer}.hook_mlp_in", [f"m{layer}"], False)
                self.sources.append(f"m{layer}")
        receive(f"blocks.{self.n_layers - 1}.hook_resid_post", ["logits"], False)
        self.n_edges = first

    @classmethod
    def of(cls, model: HookedTransformer) -> Graph:
        """The graph of `model` (attention-only or with MLPs; grouped-query attention or not)."""
        cfg = model.cfg
        if cfg.parallel_attn_mlp:
            raise ValueError("models whose attention and MLP read the same residual stream (parallel_attn_mlp) "
                             "are not supported yet: their MLP does not read the heads of its own layer.")
        return cls(cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads or cfg.n_heads, cfg.attn_only)

    def __repr__(self) -> str:
        kv = f" sharing {self.n_kv_heads} key/value heads" if self.n_kv_heads != self.n_heads else ""
        return (f"Graph({self.n_layers} layers × {self.n_heads} heads{kv}{'' if self.attn_only else ' + MLPs'}: "
                f"{len(self.sources)} sources, {len(self.receiver_names)} receivers, {self.n_edges} edges)")

    @cached_property
    def edge_names(self) -> list[str]:
        """`source->receiver` for every edge, in edge order."""
        return [f"{self.sources[s]}->{name}" for r in self.receivers for s in range(r.n_sources) for name in r.names]

    @cached_property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.edge_names)}

    def edge_index(self, source: str, receiver: str) -> int:
        """The position of edge `source -> receiver` in edge order."""
        try:
            return self._index[f"{source}->{receiver}"]
        except KeyError:
            raise ValueError(f"there is no edge {source} -> {receiver}: a receiver reads only the sources "
                             "before it in the forward pass (see graph.edge_names).") from None

    def source_of(self, edges: Tensor) -> Tensor:
        """The source index of each edge index."""
        return self._edge_table[0][edges]

    @cached_property
    def _edge_table(self) -> tuple[Tensor, Tensor]:
        """(source index, receiver name index) of every edge."""
        src, rec, k = [], [], 0
        for r in self.receivers:
            for s in range(r.n_sources):
                src += [s] * r.n
                rec += range(k, k + r.n)
            k += r.n
        return torch.tensor(src), torch.tensor(rec)

    @cached_property
    def source_hooks(self) -> dict[str, slice]:
        """The hook point each source's output is read at, with the sources it holds: the input at the first
        block's resid_pre, a layer's heads at its hook_z (times W_O, head by head), an MLP at its hook_mlp_out."""
        hooks, start = {"blocks.0.hook_resid_pre": slice(0, 1)}, 1
        for layer in range(self.n_layers):
            hooks[f"blocks.{layer}.attn.hook_z"] = slice(start, start + self.n_heads)
            start += self.n_heads
            if not self.attn_only:
                hooks[f"blocks.{layer}.hook_mlp_out"] = slice(start, start + 1)
                start += 1
        return hooks

    @cached_property
    def receiver_names(self) -> list[str]:
        return [name for r in self.receivers for name in r.names]

    def per_hook(self, values: Tensor) -> dict[str, Tensor]:
        """A per-edge tensor `(..., n_edges)` split by receiver hook into `(..., n_sources, n)` pieces."""
        if values.shape[-1] != self.n_edges:
            raise ValueError(f"expected {self.n_edges} values per edge set (one per edge), got {values.shape[-1]}.")
        return {r.hook: values[..., r.edges].unflatten(-1, (r.n_sources, r.n)) for r in self.receivers}

    def edges_from(self, sources: Sequence[str]) -> Tensor:
        """A boolean edge mask: True for every edge out of the named sources (what removing those nodes removes)."""
        unknown = [name for name in sources if name not in self.sources]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a source of this graph; sources are named like "
                             f"{', '.join(self.sources[:3])} (see graph.sources).")
        return torch.isin(self._edge_table[0], torch.tensor([self.sources.index(name) for name in sources],
                                                            dtype=torch.long))

    def mask(self, edges: list[tuple[str, str]] | None = None) -> Tensor:
        """A boolean edge mask: True for the edges listed as (source, receiver); every edge when None."""
        if edges is None:
            return torch.ones(self.n_edges, dtype=torch.bool)
        mask = torch.zeros(self.n_edges, dtype=torch.bool)
        mask[[self.edge_index(s, r) for s, r in edges]] = True
        return mask
