"""The catalogue of project ideas: each one a question, the kit's notebook and technique it starts from, the
models it runs on, and a starter cell that runs offline as written.

    mikit projects                                 # every idea, one line each
    mikit projects --category "training dynamics" --difficulty 1
    mikit projects --show ioi-new-templates        # one idea in full, with its starter cell
    ideas(technique="circuits", model="smollm2-135m")

Categories follow the open problems list most courses start from (Nanda, "200 Concrete Open Problems in
Mechanistic Interpretability"). Difficulty: 1 = a few days with the notebook's tools, 2 = a week or two and
some new code, 3 = open-ended. Compute is on a 2-core laptop CPU unless it says GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES = (
    "toy language models", "circuits in the wild", "algorithmic problems", "polysemanticity and superposition",
    "training dynamics", "techniques and tooling", "image and multimodal models", "learned features",
)


@dataclass(frozen=True)
class Idea:
    """One project idea; `starter` is a code cell that runs offline in a fresh kernel."""

    id: str
    title: str
    question: str
    category: str
    techniques: tuple[str, ...]
    notebooks: tuple[str, ...]
    offline: tuple[str, ...]
    full: tuple[str, ...]
    difficulty: int
    compute: str
    starter: str
    paper: str = ""


LOAD_SMOLLM2 = "import mikit, torch\nmodel = mikit.load_model(\"smollm2-135m\")\n"
LOAD_TOY = "import mikit, torch\nmodel = mikit.load_model(\"attn-only-2l\")\n"

IDEAS = [
    # --- toy language models ------------------------------------------------------------------------------
    Idea("fuzzy-induction", "Do induction heads copy near-repeats?",
         "attn-only-2l's induction heads complete exact repeats. Change one token of the repeat, or swap two: "
         "does the model recover after the change, how many tokens does it take, and is it the same heads that "
         "do it? This says whether induction is string matching or something softer.",
         "toy language models", ("attention", "patching"), ("01", "03"), ("attn-only-2l",), ("gpt2-small",), 1,
         "minutes", LOAD_TOY + """from mikit import induction
tokens = induction.repeated_tokens(model, seq_len=20, batch=8)
edited = tokens.clone(); edited[:, 25] = (edited[:, 25] + 7) % model.cfg.d_vocab   # one token of the repeat changed
for name, t in (("exact", tokens), ("one change", edited)):
    logprobs = model(t).log_softmax(-1)[:, :-1].gather(-1, t[:, 1:, None])[..., 0]
    print(name, "loss on the repeat after the change:", -logprobs[:, 26:].mean().item())"""),
    Idea("previous-token-mechanism", "How does a previous-token head find the previous position?",
         "attn-only-2l's head L0H1 attends to the token before each position. Is that done by the positional "
         "embeddings alone, or do token embeddings help? Split the QK circuit into position-position, "
         "token-position and token-token parts and measure each one's share of the attention score.",
         "toy language models", ("attention",), ("01",), ("attn-only-2l",), ("gpt2-small",), 2, "minutes",
         LOAD_TOY + """W_pos, W_Q, W_K = model.W_pos[:40], model.W_Q[0, 1], model.W_K[0, 1]   # head L0H1, LNPre model
pos_pos = (W_pos @ W_Q) @ (W_pos @ W_K).T          # query position × key position scores
print("argmax key per query position:", pos_pos.argmax(-1)[1:12].tolist(), "(query - 1 means previous token)")"""),
    Idea("long-copies", "Where does induction break down?",
         "Induction needs the first copy inside the context window and a previous-token head that still works "
         "there. Measure the loss on the repeat as the repeated string grows towards the context length, and "
         "find which part of the circuit fails first.",
         "toy language models", ("attention",), ("01",), ("attn-only-2l",), ("gpt2-small",), 1, "minutes",
         LOAD_TOY + """from mikit import induction
for half in (8, 32, 63):
    tokens = induction.repeated_tokens(model, seq_len=half, batch=8)
    loss = -model(tokens).log_softmax(-1)[:, half:-1].gather(-1, tokens[:, half + 1:, None]).mean()
    print(f"repeat of {half} tokens: loss {loss.item():.3f}")"""),
    Idea("bracket-matching", "Does a 2-layer character model close brackets?",
         "attn-only-2l was trained on Python's documentation, full of parentheses. Does it predict ')' more "
         "after an open '(' than otherwise, and which heads carry the open bracket forward? Build prompts with "
         "and without an open bracket and patch.",
         "algorithmic problems", ("patching", "attention"), ("03",), ("attn-only-2l",), (), 2, "minutes",
         LOAD_TOY + """close = model.to_single_token(")")
for text in ("the value (of x", "the value of x"):
    tokens = model.to_tokens(text)
    print(repr(text), "P(')') next:", model(tokens)[0, -1].softmax(-1)[close].item())"""),
    Idea("max-of-k-tighter-proofs", "A proof of Max-of-K's accuracy between cubic and quadratic",
         "max-of-4 outputs the largest of 4 tokens; brute force finds it right on 99.976 % of all 16.8 M inputs "
         "(859 GFLOP). mikit.toys.max_of_k proves a lower bound from its circuits: the cubic proof certifies "
         "95.5 % for 74 MFLOP, the quadratic one 26.7 % for 7 MFLOP. Find out what the quadratic proof's worst "
         "cases throw away (which query tokens, which gaps) and write a proof that certifies most of the cubic "
         "one's share at a cost near the quadratic one's: the more of the mechanism a proof uses, the tighter "
         "and cheaper it gets. Check it stays below brute force on models of other seeds.",
         "algorithmic problems", ("attention", "circuits"), ("01",), ("max-of-4", "max-of-4-small"), (), 3,
         "minutes", """import mikit
from mikit.toys import max_of_k
model = mikit.load_model("max-of-4-small")             # 16 tokens: brute force takes a second
print("brute force:", max_of_k.brute_force_accuracy(model)[0])
for proof in (max_of_k.cubic_proof, max_of_k.quadratic_proof):
    bound = proof(model)
    print(f"{proof.__name__}: {bound.accuracy:.4f} for {bound.cost:,} flops")""",
         "Gross et al. 2024, Compact proofs of model performance via mechanistic interpretability"),
    # --- circuits in the wild ------------------------------------------------------------------------------
    Idea("ioi-new-templates", "Does SmolLM2's IOI circuit hold on new templates?",
         "Notebook 02 finds SmolLM2's IOI circuit on eight templates. Write templates it never saw (longer "
         "distractor clauses, three names, the names far apart) and test whether the same heads carry the "
         "behaviour: faithfulness of notebook 02's circuit, and which heads EAP-IG ranks first.",
         "circuits in the wild", ("circuits", "patching"), ("02", "06"), ("smollm2-135m",), ("gpt2-small",), 2,
         "an hour", LOAD_SMOLLM2 + """from mikit.datasets.ioi import IOIDataset
from mikit.ioi import logit_diff
template = "After the meeting at the [PLACE], [A] and [B] talked for hours, and then [B] handed a [OBJECT] to"
ds = IOIDataset(model, n_prompts=8, templates=[template])
print("logit difference on the new template:", logit_diff(model(ds.tokens), ds).mean().item())""",
         "Wang et al. 2022, Interpretability in the Wild"),
    Idea("successor-source", "Where does SmolLM2 get the next item from?",
         "The worked example projects/examples/smollm2-successor finds that SmolLM2 continues 'Monday, Tuesday, "
         "Wednesday,' without a successor head: L23H3 suppresses the last item, and L29H1 with the MLPs of layers "
         "22-29 raise the next one. Where do they get 'next' from? Path-patch L23H3 into L29H1, read the final "
         "comma's residual stream layer by layer (logit lens), and attribute the MLPs' effect to neurons: is "
         "there an increment neuron per family, or one shared ordinal direction?",
         "circuits in the wild", ("patching", "circuits"), ("03", "06"), ("smollm2-135m",), ("gpt2-small",), 2,
         "an hour", LOAD_SMOLLM2 + """tokens = model.to_tokens(" Monday, Tuesday, Wednesday,")
logits, cache = model.run_with_cache(tokens)
nxt, last = model.to_single_token(" Thursday"), model.to_single_token(" Wednesday")
for layer in (16, 20, 22, 24, 26, 29):                  # the logit lens at the final comma
    resid = model.ln_final(cache["resid_post", layer][:, -1:])
    lens = (resid @ model.W_U)[0, -1]
    print(f"layer {layer}: next − last item {(lens[nxt] - lens[last]).item():+.2f}")""",
         "Gould et al. 2023, Successor Heads"),
    Idea("greater-than-digits", "How does SmolLM2 compare years digit by digit?",
         "GPT-2 reads '32' as one token and compares two-digit numbers in MLPs 8-11. SmolLM2 reads one digit "
         "at a time, so its next-token question is only about the tens digit. Find the heads and MLPs that "
         "carry the start year's tens digit to the answer, and whether the ones digit matters at all.",
         "circuits in the wild", ("circuits",), ("06",), ("smollm2-135m",), ("gpt2-small",), 2, "an hour",
         LOAD_SMOLLM2 + """from mikit.circuits import Graph, attribute, node_scores, tasks
task = tasks.greater_than(model, n_prompts=4)
graph = Graph.of(model)
nodes = node_scores(graph, attribute(model, graph, task.clean, task.corrupted, task.metric))
print("largest nodes:", [graph.sources[i] for i in nodes.abs().topk(8).indices])""",
         "Hanna et al. 2023, How does GPT-2 compute greater-than?"),
    Idea("negative-name-mover", "Is SmolLM2's negative name mover a copy suppressor?",
         "Head L24H4 lowers the IO name's logit in notebook 02. In GPT-2 such heads suppress any token that "
         "appears earlier in the context and is being predicted. Test it outside IOI: does L24H4 lower the "
         "logit of whatever earlier token the model is about to repeat?",
         "circuits in the wild", ("attention", "patching"), ("02",), ("smollm2-135m",), ("gpt2-small",), 2,
         "an hour", LOAD_SMOLLM2 + """tokens = model.to_tokens("The cat sat on the mat. The cat sat on the")
_, cache = model.run_with_cache(tokens, names_filter=lambda n: n == "blocks.24.attn.hook_pattern")
top = cache["pattern", 24][0, 4, -1].topk(3)
print("L24H4 attends from the last token to:", [model.to_string(tokens[0, i]) for i in top.indices])""",
         "McDougall et al. 2023, Copy Suppression"),
    Idea("gqa-head-groups", "Do query heads that share keys do related jobs?",
         "SmolLM2 has 9 query heads per layer sharing 3 key/value heads. Do the heads of one group attend to "
         "the same places and play the same role (name mover, induction...), or does sharing force nothing? "
         "Compare attention patterns and patching effects within and across groups.",
         "circuits in the wild", ("attention",), ("01", "02"), ("smollm2-135m",), (), 1, "minutes",
         LOAD_SMOLLM2 + """from mikit import induction
tokens = induction.repeated_tokens(model, seq_len=20, batch=4)
_, cache = model.run_with_cache(tokens, names_filter=lambda n: n == "blocks.17.attn.hook_pattern")
pattern = cache["pattern", 17].mean(0).flatten(1)                        # (head, q*k)
print("similarity of layer 17's heads (rows: heads; groups of 3):")
print(torch.corrcoef(pattern).round(decimals=2))"""),
    Idea("smollm2-induction-by-layer", "Where does SmolLM2 copy, and how early?",
         "SmolLM2's strongest induction heads sit at L17-18 of 30. Are there earlier heads that copy less "
         "exactly (fuzzy or semantic copying), and do the later ones depend on them? Score every head and "
         "patch along the way.",
         "circuits in the wild", ("attention", "patching"), ("01", "03"), ("smollm2-135m",), ("gpt2-small",), 1,
         "minutes", LOAD_SMOLLM2 + """from mikit import induction
scores = induction.model_induction_scores(model, seq_len=20, batch=4)
print("best induction heads:", induction.top_heads(scores, 5))"""),
    Idea("greater-than-paper", "Reproduce ACDC's Greater-Than circuit in GPT-2 small",
         "ACDC kept 68 edges of GPT-2 small on Greater-Than and found heads 5.1, 5.5, 6.1, 6.9, 7.10, 8.8, 8.11, "
         "9.1 and MLPs 8-11. Run notebook 06's methods in full mode and compare: which components, how many "
         "edges at equal faithfulness, and how the corruption changes the answer.",
         "circuits in the wild", ("circuits",), ("06",), (), ("gpt2-small",), 2, "an hour on a GPU",
         """from mikit.circuits import tasks
print("in full mode: model = mikit.load_model('gpt2-small'); task = tasks.greater_than(model, n_prompts=50)")
print("tasks available offline:", list(tasks.TASKS))""",
         "Conmy et al. 2023, Towards Automated Circuit Discovery (ACDC)"),
    Idea("bos-sink", "What does attention to the first token do?",
         "Many of SmolLM2's heads put most of their attention on the first token. Is that a no-op (a place to "
         "park attention) or does the first token's value carry something? Replace the first token's value "
         "vectors with their mean and measure the loss.",
         "circuits in the wild", ("attention", "patching"), ("01", "03"), ("smollm2-135m",), ("gpt2-small",), 1,
         "minutes", LOAD_SMOLLM2 + """tokens = model.to_tokens("The quick brown fox jumps over the lazy dog because it was")
_, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
share = torch.stack([cache["pattern", l][0, :, 5:, 0].mean() for l in range(model.cfg.n_layers)])
print("mean attention to the first token, by layer:", share.round(decimals=2).tolist())"""),
    # --- techniques and tooling ----------------------------------------------------------------------------
    Idea("acdc-vs-eap-ig", "ACDC or EAP-IG: which circuit is more faithful per edge?",
         "On the planted model both recover the truth; on SmolLM2 nobody knows it. Compare the two on IOI and "
         "Greater-Than at equal circuit size: faithfulness, overlap of edges, and time. Where they disagree, "
         "patch the disputed edges exactly.",
         "techniques and tooling", ("circuits",), ("06",), ("smollm2-135m", "attn-only-2l"), ("gpt2-small",), 2,
         "a few hours", LOAD_TOY + """from mikit.circuits import Graph, ablated_outputs, acdc, attribute, tasks
task, graph = tasks.induction(model, n_prompts=8), Graph.of(model)
kept = acdc(model, graph, task.clean, ablated_outputs(model, graph, task.corrupted), task.kl(model), 0.05)
scores = attribute(model, graph, task.clean, task.corrupted, task.metric, steps=5)
print("ACDC keeps", int(kept.sum()), "edges; EAP-IG's top", int(kept.sum()), "overlap:",
      int(kept[scores.abs().topk(int(kept.sum())).indices].sum()))""",
         "Conmy et al. 2023 (ACDC); Hanna et al. 2024 (EAP-IG)"),
    Idea("corruption-decides", "How much does the corruption decide the circuit?",
         "IOI can be corrupted with three new names (ABC) or by making the subject the last name (ABA). Find "
         "circuits with both and compare: which edges only one of them needs, and what each corruption asks "
         "the model to stop doing.",
         "techniques and tooling", ("circuits",), ("06", "02"), ("smollm2-135m",), ("gpt2-small",), 1,
         "an hour", LOAD_SMOLLM2 + """from mikit.circuits import tasks
for corruption in ("ABC", "ABA"):
    task = tasks.ioi(model, n_prompts=8, corruption=corruption)
    print(corruption, "corrupted metric:", task.metric(model(task.corrupted)).item())"""),
    Idea("ablation-kinds", "Zero, mean or resample: does the ablation change the circuit?",
         "A removed edge can carry zero, the mean over prompts, or another prompt's value. Zero ablation puts "
         "the model off its usual inputs. Measure the faithfulness of the same circuits under the three and "
         "find where they disagree.",
         "techniques and tooling", ("circuits",), ("06",), ("attn-only-2l", "smollm2-135m"), ("gpt2-small",), 1,
         "minutes", LOAD_TOY + """from mikit.circuits import Graph, ablated_outputs, attribute, faithfulness, tasks
task, graph = tasks.induction(model, n_prompts=8), Graph.of(model)
top = attribute(model, graph, task.clean, task.corrupted, task.metric).abs().topk(20).indices
circuit = torch.zeros(graph.n_edges, dtype=torch.bool); circuit[top] = True
for kind in ("patch", "mean", "zero"):
    print(kind, faithfulness(model, graph, circuit, task.clean, ablated_outputs(model, graph, task.corrupted, kind), task.metric))"""),
    Idea("attribution-patching-failures", "Where does attribution patching go wrong?",
         "Attribution patching is a first-order estimate of activation patching. It fails where the metric "
         "saturates or attention patterns move. Map, over SmolLM2's heads and layers, where the estimate and "
         "the real patch disagree, and explain the worst cases.",
         "techniques and tooling", ("patching",), ("03",), ("smollm2-135m",), ("gpt2-small",), 1, "minutes",
         LOAD_SMOLLM2 + """from mikit import patching
from mikit.circuits import tasks
task = tasks.ioi(model, n_prompts=4)
estimate = patching.attribution_patch(model, task.clean, task.corrupted, task.metric)
print("heads with the largest estimated effect:", estimate.abs().flatten().topk(5).indices.tolist())""",
         "Nanda 2023, Attribution Patching"),
    Idea("acdc-metric", "KL or the task metric: which should ACDC minimise?",
         "ACDC measures the damage of removing an edge with the KL divergence to the model, or with the task's "
         "own metric. KL keeps everything that changes any output; the task metric only what the task needs. "
         "Compare the circuits both give on the planted model and on SmolLM2.",
         "techniques and tooling", ("circuits",), ("06",), ("attn-only-2l", "smollm2-135m"), ("gpt2-small",), 1,
         "minutes", LOAD_TOY + """from mikit.circuits import Graph, ablated_outputs, acdc, tasks
task, graph = tasks.induction(model, n_prompts=4), Graph.of(model)
removed = ablated_outputs(model, graph, task.corrupted)
clean_value = task.metric(model(task.clean)).detach()
by_kl = acdc(model, graph, task.clean, removed, task.kl(model), 0.05)
by_task = acdc(model, graph, task.clean, removed, lambda logits: (clean_value - task.metric(logits)).abs(), 0.05)
print("edges kept: KL", int(by_kl.sum()), "| task metric", int(by_task.sum()))""",
         "Conmy et al. 2023 (ACDC)"),
    Idea("scrubbing-finer-hypotheses", "Causal scrubbing of a finer induction hypothesis",
         "Notebook 06 scrubs 'only these edges matter'. A finer hypothesis says what flows along them: e.g. the "
         "previous-token head carries only the previous token's identity. Resample its input among prompts "
         "that share that token and compare the loss recovered with the coarse hypothesis.",
         "techniques and tooling", ("circuits",), ("06",), ("attn-only-2l",), (), 3, "a few hours",
         LOAD_TOY + """from mikit.circuits import Graph, scrub, tasks
task, graph = tasks.induction(model, n_prompts=8), Graph.of(model)
everything = torch.ones(graph.n_edges, dtype=torch.bool)
print("scrubbing with every edge kept (the model):", scrub(model, graph, task.clean, everything, task.metric))""",
         "Chan et al. 2022, Causal Scrubbing"),
    Idea("logit-lens-ioi", "At which layer does SmolLM2 know the answer?",
         "Read the residual stream after every layer through the unembedding (the logit lens) on IOI prompts: "
         "where does the IO name overtake the subject, and does that match the layers where patching finds the "
         "name movers?",
         "techniques and tooling", ("patching",), ("02", "03"), ("smollm2-135m",), ("gpt2-small",), 1, "minutes",
         LOAD_SMOLLM2 + """from mikit.circuits import tasks
task = tasks.ioi(model, n_prompts=8)
_, cache = model.run_with_cache(task.clean)
resid = cache.accumulated_resid(apply_ln=True)                       # (layer, batch, pos, d_model)
rows = torch.arange(len(task.clean))
ends = resid[:, rows, task.positions]                                 # each prompt's last token
ds = task.dataset
diff = (ends @ model.W_U)[..., ds.io_tokens][:, rows, rows] - (ends @ model.W_U)[..., ds.s_tokens][:, rows, rows]
print("IO − S logit by layer:", diff.mean(-1).round(decimals=1).tolist())""",
         "nostalgebraist 2020, the logit lens"),
    Idea("sparse-attention-tradeoff", "How sparse can attention get before the loss gives way?",
         "Sparse attention post-training trades attention edges for loss under a tolerance. Sweep the "
         "tolerance, plot density against loss, and ask whether the circuits of the sparser models are "
         "smaller on induction and on bracket matching.",
         "techniques and tooling", ("circuits",), ("06",), ("attn-only-2l",), (), 2, "an hour",
         """from mikit.circuits import attention_density, load_sparse, tasks
import mikit
dense, sparse = mikit.load_model("attn-only-2l"), load_sparse()
task = tasks.induction(dense, n_prompts=8)
print("attention density (weights > 0.01): dense", attention_density(dense, task.clean),
      "sparse", attention_density(sparse, task.clean))""",
         "Draye et al. 2025, Sparse Attention Post-Training"),
    # --- learned features ----------------------------------------------------------------------------------
    Idea("sae-width-splitting", "Do SAE latents split as the SAE grows?",
         "Train SAEs of several widths on the same activations (notebook 04's trainer) and follow one concept: "
         "does a latent of the small SAE become several in the large one, and are the pieces more specific? "
         "Match latents by decoder cosine similarity.",
         "learned features", ("sae",), ("04",), ("smollm2-135m", "attn-only-2l"), ("gpt2-small",), 2,
         "an hour", """from mikit import sae
from mikit.paths import SAE_DIR
shipped = sae.load(SAE_DIR / "smollm2-135m-l15-topk64")
print(shipped.d_sae, "latents; train narrower ones with mikit.sae.training.train_sae and compare W_dec rows")""",
         "Bricken et al. 2023, Towards Monosemanticity"),
    Idea("topk-vs-batchtopk", "TopK or BatchTopK at equal sparsity?",
         "BatchTopK lets busy tokens use more latents and quiet ones fewer, at the same average L0. Train both "
         "(and a ReLU SAE) on one layer and compare reconstruction, dead latents and how interpretable the top "
         "latents look.",
         "learned features", ("sae",), ("04",), ("attn-only-2l", "smollm2-135m"), ("gpt2-small",), 2, "an hour",
         """import torch
from mikit import sae
x = torch.randn(512, 64)
for cls in (sae.TopKSAE, sae.BatchTopKSAE):
    out = cls(d_in=64, d_sae=256, k=8).forward_with_loss(x)
    print(cls.__name__, "L0", sae.metrics.l0(out.latents), "explained variance", sae.metrics.explained_variance(x, out.x_hat))""",
         "Gao et al. 2024 (TopK SAEs); TopK vs Ordered SAEs in the course reading"),
    Idea("sae-latents-for-names", "Which SAE latents carry IOI's names?",
         "Run notebook 04's SAE on IOI prompts at layer 15: which latents fire on the names, does one of them "
         "say 'this name appeared twice', and does clamping it to its corrupted value move the logit difference?",
         "learned features", ("sae", "patching"), ("04", "02"), ("smollm2-135m",), (), 2, "an hour",
         LOAD_SMOLLM2 + """from mikit import sae
from mikit.circuits import tasks
from mikit.paths import SAE_DIR
shipped, task = sae.load(SAE_DIR / "smollm2-135m-l15-topk64"), tasks.ioi(model, n_prompts=4)
_, cache = model.run_with_cache(task.clean, names_filter=shipped.metadata["hook_name"])
latents = shipped.encode(cache[shipped.metadata["hook_name"]])
print("latents firing most at the last token:", latents[:, -1].mean(0).topk(5).indices.tolist())"""),
    Idea("steering-vs-logit-effects", "Does a latent's logit effect predict what steering does?",
         "A latent's decoder direction times the unembedding lists the tokens it promotes. Steer with it and "
         "see: are the generated words those tokens, or does steering act through later layers? Compare for "
         "latents of different layers and strengths.",
         "learned features", ("sae",), ("04",), ("smollm2-135m",), ("gpt2-small",), 1, "minutes",
         LOAD_SMOLLM2 + """from mikit import sae
from mikit.paths import SAE_DIR
from mikit.sae.latents import logit_effects
shipped = sae.load(SAE_DIR / "smollm2-135m-l15-topk64")
print(logit_effects(model, shipped, 42))""",
         "Templeton et al. 2024, Scaling Monosemanticity"),
    # --- polysemanticity and superposition -----------------------------------------------------------------
    Idea("character-superposition", "How does a 128-dimensional residual stream hold 98 characters?",
         "attn-only-2l embeds 98 characters in 128 dimensions, but its heads read only parts of that space. "
         "Measure how orthogonal the embeddings are, which characters share directions, and whether those "
         "overlaps cost the model loss.",
         "polysemanticity and superposition", ("attention",), ("01",), ("attn-only-2l",), (), 1, "minutes",
         LOAD_TOY + """W_E = model.W_E / model.W_E.norm(dim=-1, keepdim=True)
overlap = (W_E @ W_E.T).fill_diagonal_(0)
print("largest |cosine| between two characters' embeddings:", overlap.abs().max().item())""",
         "Elhage et al. 2022, Toy Models of Superposition"),
    Idea("polysemantic-heads", "Is a head one thing or several?",
         "Score every head of SmolLM2 with several detectors (previous-token, duplicate, induction, first-token). "
         "How many heads score high on more than one, and do they do both jobs on the same prompts or on "
         "different ones?",
         "polysemanticity and superposition", ("attention",), ("01",), ("smollm2-135m", "attn-only-2l"),
         ("gpt2-small",), 1, "minutes", LOAD_SMOLLM2 + """from mikit import induction
tokens = induction.repeated_tokens(model, seq_len=20, batch=2)
prev = induction.pattern_scores(model, tokens, induction.previous_token_scores)
ind = induction.pattern_scores(model, tokens, lambda p: induction.induction_scores(p, 20))
print("heads above 0.3 on both:", ((prev > 0.3) & (ind > 0.3)).nonzero().tolist())"""),
    # --- image and multimodal models -----------------------------------------------------------------------
    Idea("binding-heads", "Which cross-attention heads bind colour to shape?",
         "The tiny text-to-image model sometimes paints the right shapes in swapped colours. Find the "
         "cross-attention heads whose maps put the colour word on the wrong object when that happens, and "
         "test by reweighting them (notebook 05).",
         "image and multimodal models", ("attention",), ("05",), ("tiny-t2i",), ("sd-turbo",), 2, "an hour",
         """from mikit.xattn.recipes import load_t2i
model = load_t2i()
print(type(model).__name__, sum(p.numel() for p in model.parameters()), "parameters; see notebook 05 for the attention store")""",
         "Chefer et al. 2023, Attend-and-Excite"),
    Idea("hallucination-attention", "Do hallucinated words look at the image less?",
         "The tiny captioner names objects that are not there more often on noisy images. Is the attention "
         "from a hallucinated word to image patches lower than from a grounded one, at every layer, and does "
         "boosting image attention fix it?",
         "image and multimodal models", ("attention",), ("05",), ("tiny-captioner",), (), 2, "an hour",
         """from mikit.xattn.captioner import greedy_caption
from mikit.xattn.captioner_recipe import caption_data, load_captioner
model = load_captioner()
images, _, scenes = caption_data(4, seed=0)
for words, scene in zip(greedy_caption(model, images), scenes):
    print(" ".join(words), "| truth:", scene.caption)""",
         "Cross-attention and VLM hallucination, in the course reading"),
    Idea("daam-layers-timesteps", "Which layers and steps make the best heatmaps?",
         "DAAM averages cross-attention over layers and denoising steps. On scenes with exact masks, measure "
         "the heatmap IoU per layer and per step: is the average better than the best single layer, and why?",
         "image and multimodal models", ("attention",), ("05",), ("tiny-t2i",), ("sd-turbo",), 1, "minutes",
         """from mikit.xattn import make_scenes
scenes = make_scenes(4, seed=0)
print([scene.caption for scene in scenes])""",
         "Tang et al. 2023, DAAM"),
    # --- training dynamics ---------------------------------------------------------------------------------
    Idea("sparse-training-dynamics", "When does sparse-attention training give up a head?",
         "Retrain the sparse model with `python -m mikit.circuits train-sparse` and save the attention density "
         "per head along the way: which heads go sparse first, and does the induction circuit survive intact "
         "while the rest thins out?",
         "training dynamics", ("attention", "circuits"), ("06",), ("attn-only-2l",), (), 2, "an hour",
         """from mikit import induction
from mikit.circuits import attention_density, load_sparse
model = load_sparse()
tokens = induction.repeated_tokens(model, seq_len=20, batch=4)
print("density of the shipped sparse model:", attention_density(model, tokens))""",
         "Draye et al. 2025, Sparse Attention Post-Training"),
    Idea("induction-phase-change", "When do induction heads form, and what forms first?",
         "attn-only-2l ships with training checkpoints from initialisation to the end. Find the step where the "
         "loss on repeated tokens drops, and check the story of Olsson et al.: does the previous-token head "
         "appear before the induction head, and does the drop coincide with K-composition between them?",
         "training dynamics", ("attention",), ("01",), ("attn-only-2l-checkpoints",), (), 1, "minutes",
         """from mikit import zoo
for row in zoo.checkpoint_metrics("attn-only-2l")[::4]:
    print(row["step"], "induction", round(row["induction_score"], 2), "prev-token", round(row["prev_token_score"], 2),
          "repeat loss", round(row["repeat_loss_second_half"], 2))""",
         "Olsson et al. 2022, In-context Learning and Induction Heads"),
    Idea("gelu-1l-neurons", "What do the neurons of a one-layer model read and write?",
         "gelu-1l has one attention layer and one MLP on the same character data as attn-only-2l. Take its "
         "neurons one at a time: which characters and contexts make each fire, which next characters it "
         "promotes (its output weights times the unembedding), and how many do one recognisable thing.",
         "polysemanticity and superposition", ("attention", "patching"), ("01",), ("gelu-1l", "gelu-2l"), (), 1,
         "minutes", """import mikit, torch
model = mikit.load_model("gelu-1l")
effects = model.W_out[0] @ model.W_U                                 # (neuron, character): direct logit effect
for neuron in range(3):
    print(neuron, "promotes", [model.to_string(i) for i in effects[neuron].topk(5).indices])"""),
    Idea("timeseries-known-features", "Do interpretability methods find features we planted in time series?",
         "The time-series classifier decides from an early upward spike and a late dip, among distractor spikes; "
         "for every series the deciding time steps are known. Test activation patching over time steps, "
         "attention saliency and an SAE on the residual stream against that truth: which methods point at the "
         "right steps, and where does attention from the last position mislead?",
         "algorithmic problems", ("patching", "attention", "sae"), ("03", "04"), ("timeseries-classifier",), (), 2,
         "an hour", """from mikit.datasets.timeseries import make_timeseries
from mikit.zoo.timeseries import accuracy, load_timeseries_classifier
model, ds = load_timeseries_classifier(), make_timeseries(200, seed=1)
print("accuracy:", accuracy(model, ds), "| deciding steps of series 0:", ds.decisive_steps[0].nonzero().flatten().tolist())""",
         "Kalnāre et al. 2025, interpretability of time-series transformers"),
    Idea("planted-circuit-distractors", "Can the methods tell a planted circuit from a mimic?",
         "The planted model's circuit is known by construction. Fine-tune a copy so that an idle head learns a "
         "weak imitation of it, and test which discovery method (EAP, EAP-IG, ACDC) still separates the real "
         "circuit from the mimic.",
         "algorithmic problems", ("circuits",), ("06",), ("planted-induction",), (), 3, "a few hours",
         """from mikit.circuits.planted import TRUTH, load_planted
model = load_planted()
print("planted truth edges:", TRUTH)"""),
]


def ideas(category: str | None = None, technique: str | None = None, model: str | None = None,
          difficulty: int | None = None) -> list[Idea]:
    """The ideas matching every filter given (a model matches if the idea runs on it offline or in full mode)."""
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; the categories are: {', '.join(CATEGORIES)}.")
    return [idea for idea in IDEAS
            if (category is None or idea.category == category)
            and (technique is None or technique in idea.techniques)
            and (model is None or model in idea.offline + idea.full)
            and (difficulty is None or idea.difficulty == difficulty)]


def find(idea_id: str) -> Idea:
    """The idea called `idea_id`."""
    for idea in IDEAS:
        if idea.id == idea_id:
            return idea
    raise ValueError(f"no idea {idea_id!r}; `mikit projects` lists them all.")


def markdown(selected: list[Idea] | None = None) -> str:
    """The catalogue (or `selected` ideas) as a Markdown page, grouped by category."""
    selected = IDEAS if selected is None else selected
    lines = ["# Project ideas", "",
             "Generated from `mikit/project/catalogue.py` by `mikit projects --markdown`; every starter cell runs "
             "offline (tested). Start one with `mikit project new NAME --model M --technique T`.", ""]
    for category in CATEGORIES:
        members = [idea for idea in selected if idea.category == category]
        if not members:
            continue
        lines += [f"## {category.capitalize()}", ""]
        for idea in members:
            models = ", ".join(idea.offline) or "none"
            lines += [f"### {idea.title} (`{idea.id}`)", "", idea.question, "",
                      f"- **Technique:** {', '.join(idea.techniques)} · **notebooks:** {', '.join(idea.notebooks)} · "
                      f"**difficulty:** {idea.difficulty} · **compute:** {idea.compute}",
                      f"- **Models:** offline {models}; full mode {', '.join(idea.full) or '—'}"]
            if idea.paper:
                lines.append(f"- **Extends:** {idea.paper}")
            lines += ["", "```python", idea.starter.strip(), "```", ""]
    return "\n".join(lines)
