"""`mikit project new`: a project folder whose notebook runs offline as created.

The notebook follows the research workflow, one section each: question and hypothesis, task dataset and
metric, baseline, main experiment, controls and ablations, results, limitations. The code in it is a working
first experiment for the chosen model and technique, on the task's prompts; the student replaces the parts
that are about someone else's question.
"""

from __future__ import annotations

import re
from inspect import cleandoc
from pathlib import Path
from textwrap import dedent

from mikit.project import CONFIG, NOTEBOOK, RESULTS

# The techniques a project can start from, each with the notebook it builds on.
TECHNIQUES = {
    "attention": "attention patterns and head detectors (notebook 01)",
    "patching": "activation patching of the residual stream and of heads (notebook 03)",
    "circuits": "edge attribution (EAP-IG) and the faithfulness of the circuits it ranks (notebook 06)",
    "sae": "sparse autoencoder latents that separate clean from corrupted prompts, tested causally (notebook 04)",
}
LANGUAGE_MODELS = ("smollm2-135m", "gpt2-small")


TIMESERIES_MODEL = "timeseries-classifier"


def default_task(model: str) -> str:
    """The task a new project on `model` studies first: IOI for a real LM, induction for the zoo's character models,
    the deciding late dip for the time-series classifier."""
    from mikit.zoo import RECIPES

    if model == TIMESERIES_MODEL:
        return "timeseries"
    return "induction" if model in RECIPES else "ioi"


def make_task(name: str, model, **options):
    """A task by name (mikit.circuits.tasks), with the project's prompt count and seed."""
    from mikit.circuits import tasks

    if name == "induction":  # its prompts are random strings: the count and seed carry over, the half length stays
        options = {key: value for key, value in options.items() if key in ("n_prompts", "seed", "half")}
    return tasks.make(name, model, **options)


def _check(name: str, model: str, technique: str, task: str) -> None:
    from mikit.circuits.tasks import TASKS
    from mikit.zoo import RECIPES  # the zoo's character models (its toys have tasks of their own)

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ValueError(f"a project name becomes a folder name: letters, digits, - and _ only, not {name!r}.")
    if technique not in TECHNIQUES:
        raise ValueError(f"unknown technique {technique!r}; choose one of {', '.join(TECHNIQUES)}.")
    models = [*RECIPES, TIMESERIES_MODEL, *LANGUAGE_MODELS]
    if model not in models:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(models)} "
                         "(`mikit.list_models()` says what each is good for).")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    if (model == TIMESERIES_MODEL) != (task == "timeseries"):
        raise ValueError("the timeseries task and the time-series classifier go together: the classifier reads "
                         "quantised series, not text.")
    if model == TIMESERIES_MODEL and technique == "attention":
        raise ValueError("the attention technique's head detectors read text (repeated tokens); on the time-series "
                         "classifier start from patching, circuits or sae.")
    if model in RECIPES and task != "induction":
        raise ValueError(f"{model} reads characters, so only the induction task fits it; IOI and Greater-Than need "
                         f"a word-level LM ({', '.join(LANGUAGE_MODELS)}).")


def new(name: str, model: str = "smollm2-135m", technique: str = "patching", task: str | None = None,
        parent: str | Path = ".", seeds: tuple[int, ...] = (0, 1, 2), n_prompts: int = 8) -> Path:
    """Create the project folder `parent/name`: project.toml, project.ipynb, report.md and results/."""
    task = task or default_task(model)
    _check(name, model, technique, task)
    folder = Path(parent) / name
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty: pick another name, or remove it first.")
    (folder / RESULTS).mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(dedent(f"""\
        # The settings project.ipynb reads (Project.here()): change them here, not in the notebook.
        name = "{name}"
        model = "{model}"          # mikit.list_models() lists the others
        technique = "{technique}"  # {TECHNIQUES[technique]}
        task = "{task}"            # greater-than, ioi, induction or timeseries (mikit.circuits.tasks), or your own
        seeds = {list(seeds)}            # project.seed(i) uses the i-th; every saved result records its seed
        device = "auto"            # "auto": CUDA when there is a GPU, else the CPU; or "cpu", "cuda"
        n_prompts = {n_prompts}

        [data]
        # Files your project reads, relative to this folder, e.g. prompts = "data/prompts.txt"
        """))
    import nbformat

    nbformat.write(notebook(name, model, technique, task), folder / NOTEBOOK)
    (folder / "report.md").write_text(REPORT.format(name=name, model=model, technique=TECHNIQUES[technique], task=task))
    return folder


def _md(text: str):
    import nbformat

    # cleandoc, not dedent: a text that starts on the line of its opening quotes has an unindented first line
    return nbformat.v4.new_markdown_cell(cleandoc(text))


def _code(text: str):
    import nbformat

    return nbformat.v4.new_code_cell(cleandoc(text))


def notebook(name: str, model: str, technique: str, task: str):
    """The project notebook: the workflow's sections, with working code for `technique`."""
    import nbformat

    main, controls = MAIN[technique], CONTROLS[technique]
    cells = [
        _md(f"""
            # {name}

            A mikit research project on **{model}** with **{TECHNIQUES[technique]}**, starting from the
            **{task}** task. Every section below runs as created; replace what is about someone else's question
            with yours. Settings live in `project.toml`; every figure and table you `project.save(...)` lands in
            `results/` with the seed and code version that made it. When you are done: `mikit project check .`
            re-runs this notebook from a clean kernel and says whether your results reproduce, and
            `mikit project report .` fills `report.md` with them."""),
        _code("""
            import torch

            from mikit.project import Project

            project = Project.here()   # project.toml in this folder
            project.seed(0)            # the first of project.toml's seeds
            model = project.model()
            print(project.name, "|", project.model_name, "|", model.cfg.n_layers, "layers ×", model.cfg.n_heads, "heads")"""),
        _md("""
            ## 1. Question and hypothesis

            Write them before you run anything (then you cannot fit the question to the answer):

            - **Question.** What behaviour, in which model, and what do you want to know about how it is computed?
            - **Hypothesis.** What do you expect to find, and what result would show you wrong?
            - **Why it matters.** Which paper or open problem does it extend (`mikit projects` lists ideas)?"""),
        _md(f"""
            ## 2. Task dataset and metric

            `project.task(model)` gives clean prompts, corrupted prompts that differ only in what the behaviour
            needs, and a metric that is higher when the model shows the behaviour (here: **{task}**, see
            `mikit.circuits.tasks`). For your own task, make a `Task` with your prompts and metric; keep clean
            and corrupted prompts token-aligned (same length, differences only where they matter)."""),
        _code("""
            task = project.task(model)
            print(task)
            if model.tokenizer is not None:
                print("clean:    ", repr(model.to_string(task.clean[0])))
                print("corrupted:", repr(model.to_string(task.corrupted[0])))"""),
        _md("""
            ## 3. Baseline

            Does the model do the task at all? Everything later is measured against these two numbers: the
            metric on the clean prompts and on the corrupted ones."""),
        _code("""
            with torch.no_grad():
                baseline = {"clean": task.metric(model(task.clean)).item(),
                            "corrupted": task.metric(model(task.corrupted)).item()}
            project.save("baseline", baseline, caption="The task metric on clean and on corrupted prompts.")
            baseline"""),
        _md("## 4. Main experiment\n\n" + cleandoc(main[0])),
        *[_code(code) for code in main[1:]],
        _md("## 5. Controls and ablations\n\n" + cleandoc(controls[0])),
        *[_code(code) for code in controls[1:]],
        _md("""
            ## 6. Results

            Every result saved so far, with its seed and the version of this notebook's code that made it. Run
            the main experiment on the other seeds in project.toml (`project.seed(1)`, …) before you trust a
            number; report the spread."""),
        _code("""
            from mikit.project.results import load_index

            for result, record in load_index(project.results).items():
                print(f"{result:28s} seed {record['seed']}  code {record['code_version']}  {record['caption']}")"""),
        _md("""
            ## 7. Limitations

            What does this not show? Think of: other prompts and templates, other seeds, a larger model, what the
            corruption leaves out, and whether the control rules out the boring explanation."""),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["mikit"] = {"project": name, "model": model, "technique": technique, "task": task}
    return nb


# Per technique: the markdown that opens the section, then its code cells.
MAIN = {
    "attention": (
        """Which heads do what? Three detectors from notebook 01 score every head on repeated random tokens
        `[BOS, r, r]`: attention to the previous token, to the earlier copy of the current token (duplicate), and
        to the token after that copy (induction). Then: where each head looks from the answer position of the
        task's own prompts.""",
        """
        from mikit import induction, viz

        half = 20
        repeated = induction.repeated_tokens(model, seq_len=half, batch=8, seed=project.current_seed)
        detectors = {
            "previous-token": induction.previous_token_scores,
            "duplicate-token": lambda pattern: induction.duplicate_token_scores(pattern, half),
            "induction": lambda pattern: induction.induction_scores(pattern, half),
        }
        scores = {name: induction.pattern_scores(model, repeated, detect) for name, detect in detectors.items()}
        for name, score in scores.items():
            print(f"{name:16s} best heads:", ", ".join(f"L{l}H{h}" for l, h in induction.top_heads(score, 3)))
        fig = viz.heads_heatmap(scores["induction"], "Induction score of each head")
        project.save("induction-scores", fig, caption="Induction score of each head on repeated random tokens.")
        fig.show()""",
        """
        # Where each head attends from the position the task reads its answer at (mean over prompts).
        _, cache = model.run_with_cache(task.clean, names_filter=lambda name: name.endswith("hook_pattern"))
        rows = torch.arange(len(task.clean))
        answer_at = torch.as_tensor(task.positions).expand(len(task.clean))
        from_answer = torch.stack([cache["pattern", layer][rows, :, answer_at].mean(0)
                                   for layer in range(model.cfg.n_layers)])  # (layer, head, key position)
        focus = from_answer.max(-1).values  # how peaked each head's attention is
        project.save("attention-focus", focus, caption="Largest attention weight from the answer position, per head.")
        viz.heads_heatmap(focus, "How peaked each head's attention is at the answer position").show()""",
    ),
    "patching": (
        """Which activations carry what the task needs? Activation patching (notebook 03) runs the corrupted
        prompts with one activation taken from the clean run and measures how much of the metric comes back:
        0 is the corrupted run, 1 the clean one. First the residual stream at each layer and position, then
        each head's output. On a deep model a sweep takes minutes on a CPU, so it starts coarse (every k-th
        layer): narrow `layers` to where the effect appears, then look closer.""",
        """
        import plotly.express as px

        from mikit import patching, viz

        def restored(logits):
            \"\"\"The share of the metric a patch restores: 0 = corrupted run, 1 = clean run.\"\"\"
            return (task.metric(logits) - baseline["corrupted"]) / (baseline["clean"] - baseline["corrupted"])

        layers = list(range(0, model.cfg.n_layers, max(1, model.cfg.n_layers // 8)))  # all of a small model's
        by_position = patching.patch_residual(model, task.clean, task.corrupted, restored, layers=layers,
                                              progress=False)[layers]
        labels = [f"{i}:{t}" for i, t in enumerate(model.to_str_tokens(task.clean[0]))] if model.tokenizer else None
        fig = px.imshow(by_position.cpu(), x=labels, y=[str(layer) for layer in layers], color_continuous_scale="RdBu",
                        color_continuous_midpoint=0, title="Residual stream patched at one layer and position",
                        labels={"x": "position (first prompt's tokens)", "y": "layer", "color": "restored"})
        project.save("resid-patching", fig, caption="Share of the metric restored by patching resid_pre.")
        fig.show()""",
        """
        heads = patching.patch_head_out(model, task.clean, task.corrupted, restored, layers=layers,
                                        progress=False)[layers]
        fig = viz.heads_heatmap(heads, "Head output patched (all positions)", zmid=0, label="restored", layers=layers)
        project.save("head-patching", fig, caption="Share of the metric restored by patching one head's output.")
        fig.show()
        best = heads.abs().flatten().topk(5).indices
        print("largest:", ", ".join(f"L{layers[i // model.cfg.n_heads]}H{i % model.cfg.n_heads} "
                                    f"{heads.flatten()[i]:+.2f}" for i in best))""",
    ),
    "circuits": (
        """Which edges of the computational graph does the task use? EAP-IG (notebook 06) scores every edge
        from a few forward and backward passes; the circuits made of the k best edges are then run with every
        other edge patched from the corrupted prompts, and their faithfulness measured: 0 = every edge patched,
        1 = the whole model.""",
        """
        from mikit.circuits import Graph, attribute, node_scores, run_with_edges, source_outputs

        graph = Graph.of(model)
        scores = attribute(model, graph, task.clean, task.corrupted, task.metric, steps=5)
        print(graph)
        print("largest edges:", ", ".join(f"{graph.edge_names[i]} {scores[i]:+.3f}" for i in scores.abs().topk(5).indices))
        nodes = node_scores(graph, scores)  # each node's edges summed: a head's or MLP's own estimate
        print("largest nodes:", ", ".join(f"{graph.sources[i]} {nodes[i]:+.3f}" for i in nodes.abs().topk(5).indices))""",
        """
        import plotly.express as px

        corrupted_out = source_outputs(model, graph, task.corrupted)
        sizes = sorted({max(1, round(graph.n_edges ** f)) for f in (0.2, 0.4, 0.6, 0.8)})  # spread on a log scale

        def faithfulness(order):
            \"\"\"Normalised metric of the circuits of the first k edges of `order`, for k in sizes (every other
            edge patched): 0 = the corrupted run (no edge kept), 1 = the clean one (every edge kept).\"\"\"
            present = torch.zeros(len(sizes), graph.n_edges, dtype=torch.bool)
            for row, k in enumerate(sizes):
                present[row, order[:k]] = True
            values = run_with_edges(model, graph, task.clean, corrupted_out, present, task.metric, chunk=8)
            return ((values - baseline["corrupted"]) / (baseline["clean"] - baseline["corrupted"])).tolist()

        curve = {"edges": sizes, "EAP-IG order": faithfulness(scores.abs().argsort(descending=True))}
        fig = px.line(curve, x="edges", y="EAP-IG order", log_x=True, markers=True,
                      title="Faithfulness of the circuit of the k best edges")
        project.save("faithfulness", fig, caption="Faithfulness against circuit size, edges ranked by |EAP-IG|.")
        fig.show()""",
    ),
    "sae": (
        """Which learned features carry the task? A sparse autoencoder (notebook 04) rewrites an activation as a
        sparse sum of latents. On SmolLM2 the kit's SAE on layer 15 is used; on another model a small TopK SAE
        is trained here first, on the task's prompts (a starting point: train it on more text for real work).
        The latents whose activations differ most between clean and corrupted prompts are candidates; the
        causal test sets them to their corrupted values in the clean run, at every position.""",
        """
        from mikit import sae
        from mikit.paths import SAE_DIR
        from mikit.sae.training import ActivationBuffer, train_sae

        if project.model_name == "smollm2-135m":
            autoencoder = sae.load(SAE_DIR / "smollm2-135m-l15-topk64")
            hook = autoencoder.metadata["hook_name"]
        else:
            hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"
            rows = torch.cat([project.task(model, seed=100 + i).clean for i in range(16)])
            autoencoder = sae.TopKSAE(model.cfg.d_model, 4 * model.cfg.d_model, k=8)
            history = train_sae(autoencoder, ActivationBuffer(model, hook, rows, batch_size=256), n_tokens=30_000,
                                progress=False)
            print(f"trained an SAE on {hook}: explained variance {history['explained_variance'][-1]:.2f}")

        with torch.no_grad():
            latents = {}
            for name, tokens in (("clean", task.clean), ("corrupted", task.corrupted)):
                _, cache = model.run_with_cache(tokens, names_filter=hook)
                latents[name] = autoencoder.encode(cache[hook])  # (prompt, position, latent)
        difference = (latents["clean"] - latents["corrupted"]).abs().mean((0, 1))
        candidates = difference.topk(10).indices
        project.save("latent-differences", {f"latent {i}": float(difference[i]) for i in candidates},
                     caption="Mean |clean − corrupted| activation over prompts and positions, top 10 latents.")
        print("latents that differ most:", candidates.tolist())""",
        """
        def with_latents_corrupted(chosen):
            \"\"\"The metric of the clean run with the `chosen` latents moved to their corrupted values (the
            reconstruction error and every other latent left as they were).\"\"\"
            shift = (latents["corrupted"] - latents["clean"])[..., chosen] @ autoencoder.W_dec[chosen]

            def patch(activation, hook):
                return activation + shift.to(activation.dtype)

            with torch.no_grad():
                return task.metric(model.run_with_hooks(task.clean, fwd_hooks=[(hook, patch)])).item()

        effect = {"clean": baseline["clean"], "top-10 latents corrupted": with_latents_corrupted(candidates),
                  "corrupted": baseline["corrupted"]}
        project.save("latent-patching", effect, caption="The metric with the top-10 latents set to corrupted values.")
        effect""",
    ),
}

CONTROLS = {
    "attention": (
        """A detector's score means something only against what a head gets by chance. Control: the same
        detectors on a model with this architecture and random weights.""",
        """
        from transformer_lens import HookedTransformer

        untrained = HookedTransformer(model.cfg).to(model.cfg.device).eval()  # seeded by project.seed
        table = []
        for name, detect in detectors.items():
            chance = induction.pattern_scores(untrained, repeated, detect)
            table.append({"detector": name, "best trained head": float(scores[name].max()),
                          "best untrained head": float(chance.max())})
        project.save("detectors-vs-untrained", table, caption="Best detector score, trained vs random weights.")
        table""",
    ),
    "patching": (
        """A patching map can reflect the particular prompts. Control: the same head patching on prompts drawn
        with the next seed; a finding should hold on both (their correlation is reported).""",
        """
        other = project.task(model, seed=project.seeds[1])
        with torch.no_grad():
            other_base = {"clean": other.metric(model(other.clean)).item(), "corrupted": other.metric(model(other.corrupted)).item()}

        def other_restored(logits):
            return (other.metric(logits) - other_base["corrupted"]) / (other_base["clean"] - other_base["corrupted"])

        heads_again = patching.patch_head_out(model, other.clean, other.corrupted, other_restored, layers=layers,
                                              progress=False)[layers]
        agreement = torch.corrcoef(torch.stack([heads.flatten(), heads_again.flatten()]))[0, 1].item()
        project.save("head-patching-other-prompts", {"correlation": agreement, "seed": project.seeds[1]},
                     caption="Correlation of the head patching maps on two prompt sets.")
        print(f"head patching on other prompts: correlation {agreement:.3f}")""",
    ),
    "circuits": (
        """Is the ranking better than chance? Control: circuits of the same sizes made of random edges.""",
        """
        generator = torch.Generator().manual_seed(project.current_seed)
        curve["random order"] = faithfulness(torch.randperm(graph.n_edges, generator=generator))
        fig = px.line(curve, x="edges", y=["EAP-IG order", "random order"], log_x=True, markers=True,
                      title="Faithfulness: edges ranked by EAP-IG vs random edges")
        project.save("faithfulness-vs-random", fig, caption="Faithfulness against size, EAP-IG vs random edges.")
        fig.show()""",
    ),
    "sae": (
        """Do the chosen latents matter more than any ten active latents? Control: ten latents drawn at random
        among those active on the clean prompts, moved to their corrupted values the same way.""",
        """
        active = (latents["clean"] != 0).flatten(0, 1).any(0).nonzero().flatten()
        generator = torch.Generator().manual_seed(project.current_seed)
        random_ten = active[torch.randperm(len(active), generator=generator)[:10]]
        control = {"top-10 latents": effect["top-10 latents corrupted"],
                   "10 random active latents": with_latents_corrupted(random_ten.to(candidates.device))}
        project.save("latent-patching-vs-random", control, caption="Top-10 latents vs 10 random active ones.")
        control""",
    ),
}

REPORT = """\
# {name}

*Model: {model} · technique: {technique} · task: {task}.* `mikit project report` replaces each
`{{{{result: …}}}}` below with the result of that name in results/ (a figure or a table), and lists the results
this text does not place under "Other results".

## Question and hypothesis

State the question, the hypothesis, and what result would have shown it wrong.

## Method

The task (prompts, corruption, metric), the model, and the technique, with the settings you used.

## Results

{{{{result: baseline}}}}

Describe what you found, with numbers and their spread over seeds.

## Controls

Which boring explanation does each control rule out?

## Limitations and next steps

## Reproducibility

`mikit project check` re-runs project.ipynb from a clean kernel and compares every saved result.
"""
