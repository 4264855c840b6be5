"""Student projects: `mikit project new|check|report`, the results folder, and the catalogue of ideas."""

import contextlib
import io
import json
from pathlib import Path

import matplotlib
import nbformat
import plotly.express as px
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mikit import cli  # noqa: E402
from mikit.project import Project, catalogue, results, run, starter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# --- the results folder ------------------------------------------------------------------------------------
def test_a_table_is_saved_with_its_provenance_and_compared_number_by_number(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    record = results.save(a, "baseline", {"clean": 4.8, "corrupted": torch.tensor(0.1)}, caption="c", seed=3,
                          code_version="abc")
    assert record["seed"] == 3 and record["code_version"] == "abc" and record["files"] == ["baseline.json"]
    assert json.loads((a / "baseline.json").read_text()) == {"clean": 4.8, "corrupted": pytest.approx(0.1)}
    results.save(b, "baseline", {"clean": 4.8 * (1 + 1e-5), "corrupted": 0.1}, seed=3, code_version="abc")
    assert results.compare(a, b) == {"baseline": "reproduced"}
    results.save(b, "baseline", {"clean": 5.2, "corrupted": 0.1}, seed=3, code_version="xyz")
    assert results.compare(a, b) == {"baseline": "differs: 1 of 2 numbers changed, the largest from 4.8 to 5.2 "
                                                  "(saved from another version of the notebook's code)"}
    results.save(b, "extra", [1, 2])
    (b / "index.json").write_text(json.dumps({"extra": results.load_index(b)["extra"]}))
    assert results.compare(a, b) == {"baseline": "missing: the notebook no longer saves it",
                                     "extra": "new: not saved before"}


def test_figures_are_compared_on_their_data(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    results.save(a, "curve", px.line(x=[1, 2, 3], y=[0.1, 0.5, 0.9], title="one"))
    results.save(b, "curve", px.line(x=[1, 2, 3], y=[0.1, 0.5, 0.9], title="a new title"))
    assert (a / "curve.html").exists() and (a / "plotly.min.js").exists()  # one copy of plotly.js, offline
    assert results.compare(a, b)["curve"] == "reproduced"  # the layout is not the result
    results.save(b, "curve", px.line(x=[1, 2, 3], y=[0.1, 0.6, 0.9]))
    assert results.compare(a, b)["curve"].startswith("differs: 1 of")
    for folder, y in ((a, [1, 2]), (b, [1, 2])):
        fig, ax = plt.subplots()
        ax.plot(y)
        results.save(folder, "mpl", fig)
        plt.close(fig)
    assert results.compare(a, b)["mpl"] == "reproduced"
    fig, ax = plt.subplots()
    ax.plot([2, 1], linewidth=8)
    results.save(b, "mpl", fig)
    assert results.compare(a, b)["mpl"].startswith("differs: pixels differ")


def test_what_cannot_be_saved_is_named(tmp_path):
    with pytest.raises(ValueError, match="cannot save a set: save a number, a dict"):
        results.save(tmp_path, "x", {1, 2})
    with pytest.raises(ValueError, match="letters, digits, - and _ only"):
        results.save(tmp_path, "my result", 1)


# --- mikit project new -------------------------------------------------------------------------------------
def test_new_writes_a_project_and_bad_input_is_one_sentence(tmp_path):
    folder = starter.new("p1", model="attn-only-2l", technique="attention", parent=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["project.ipynb", "project.toml", "report.md", "results"]
    project = Project.read(folder)
    assert (project.model_name, project.technique, project.task_name, project.seeds) == (
        "attn-only-2l", "attention", "induction", [0, 1, 2])
    nb = nbformat.read(folder / "project.ipynb", as_version=4)
    headings = [c.source.split("\n")[0] for c in nb.cells if c.cell_type == "markdown"]
    assert [h for h in headings if h.startswith("## ")] == [
        "## 1. Question and hypothesis", "## 2. Task dataset and metric", "## 3. Baseline", "## 4. Main experiment",
        "## 5. Controls and ablations", "## 6. Results", "## 7. Limitations"]
    assert Project.read(starter.new("p2", parent=tmp_path)).task_name == "ioi"  # a real LM starts on IOI
    for technique in starter.TECHNIQUES:  # an indented markdown line would render as a code block
        text = "\n".join(c.source for c in starter.notebook("p", "attn-only-2l", technique, "induction").cells
                         if c.cell_type == "markdown")
        assert not [line for line in text.splitlines() if line.startswith("    ")], technique
    for kwargs, message in (
        ({"name": "my project"}, "letters, digits, - and _ only"),
        ({"name": "p3", "technique": "probing"}, "unknown technique 'probing'; choose one of attention, patching"),
        ({"name": "p3", "model": "gpt5"}, "unknown model 'gpt5'"),
        ({"name": "p3", "model": "max-of-4"}, "unknown model 'max-of-4'"),  # a toy of notebook 07: no text task
        ({"name": "p3", "task": "sorting"}, "unknown task 'sorting'"),
        ({"name": "p3", "model": "attn-only-2l", "task": "ioi"}, "reads characters, so only the induction task"),
        ({"name": "p3", "model": "smollm2-135m", "task": "timeseries"}, "go together: the classifier reads"),
        ({"name": "p3", "model": "timeseries-classifier", "technique": "attention"}, "head detectors read text"),
    ):
        with pytest.raises(ValueError, match=message):
            starter.new(parent=tmp_path, **kwargs)
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        starter.new("p1", parent=tmp_path)


def test_a_broken_project_toml_is_one_sentence(tmp_path):
    folder = starter.new("p", model="attn-only-2l", parent=tmp_path)
    (folder / "project.toml").write_text('name = "p"\nmodel = "attn-only-2l"\n')
    with pytest.raises(ValueError, match="lacks technique, task, seeds"):
        Project.read(folder)
    with pytest.raises(FileNotFoundError, match="no project.toml in"):
        Project.here(tmp_path)


# Every technique on the zoo's model, and the real LM with its shipped SAE (its patching and circuits take
# minutes on a CPU).
EXECUTED = [("attn-only-2l", technique) for technique in starter.TECHNIQUES] + [
    ("smollm2-135m", "sae"), ("gelu-2l", "circuits"), ("timeseries-classifier", "patching")]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """A project per technique on attn-only-2l and one on SmolLM2, each run top to bottom in a fresh kernel."""
    parent = tmp_path_factory.mktemp("projects")
    made = {}
    for model, technique in EXECUTED:
        folder = starter.new(f"{model}-{technique}", model=model, technique=technique, parent=parent, n_prompts=8)
        run.execute(folder)
        made[model, technique] = folder
    return made


@pytest.mark.parametrize("model, technique", EXECUTED)
def test_a_new_project_runs_offline_as_created_and_saves_its_results(executed, model, technique):
    index = results.load_index(executed[model, technique] / "results")
    baseline = json.loads((executed[model, technique] / "results" / "baseline.json").read_text())
    assert baseline["clean"] > baseline["corrupted"] + 1  # the task works in this model
    assert len(index) >= 3 and all(record["seed"] == 0 and len(record["code_version"]) == 12
                                   for record in index.values())


def test_check_reproduces_an_untouched_project_and_names_a_tampered_result(executed, capsys):
    folder = executed["attn-only-2l", "attention"]
    assert set(run.check(folder).values()) == {"reproduced"}
    saved = folder / "results" / "detectors-vs-untrained.json"
    rows = json.loads(saved.read_text())
    rows[0]["best trained head"] += 0.5
    saved.write_text(json.dumps(rows))
    assert cli.main(["project", "check", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "detectors-vs-untrained  differs: 1 of" in out and "baseline                reproduced" in out


def test_report_fills_the_template_and_exports_one_offline_html_file(executed):
    folder = executed["attn-only-2l", "circuits"]
    md, html = run.report(folder)
    text = md.read_text()
    assert not run.PLACEHOLDER.search(text) and "| clean |" in text and "## Other results" in text
    assert "[faithfulness (interactive)](faithfulness.html)" in text and "*seed 0, code " in text
    page = html.read_text()
    assert page.count("Plotly.newPlot") == 2 and page.count("plotly.js v") == 1  # plotly.js inlined once
    (folder / "report.md").write_text("{{result: nothing-saved}}")
    with pytest.raises(ValueError, match="report.md places nothing-saved, which results/ does not hold"):
        run.report(folder)


def test_check_without_results_and_a_failing_notebook_are_one_sentence(tmp_path):
    folder = starter.new("p", model="attn-only-2l", parent=tmp_path)
    with pytest.raises(ValueError, match="holds no saved results yet"):
        run.check(folder)
    nb = json.loads((folder / "project.ipynb").read_text())
    nb["cells"][1]["source"] = "raise SystemError('boom')"
    (folder / "project.ipynb").write_text(json.dumps(nb))
    with pytest.raises(RuntimeError, match="stopped with an error in a fresh kernel"):
        run.execute(folder)


# --- the catalogue -----------------------------------------------------------------------------------------
def test_the_catalogue_has_thirty_ideas_every_field_filled_and_known():
    assert len(catalogue.IDEAS) >= 30 and len({i.id for i in catalogue.IDEAS}) == len(catalogue.IDEAS)
    for idea in catalogue.IDEAS:
        assert idea.category in catalogue.CATEGORIES and idea.difficulty in (1, 2, 3), idea.id
        assert len(idea.question.split()) >= 30 and idea.offline + idea.full and idea.techniques, idea.id
    assert {i.category for i in catalogue.IDEAS} == set(catalogue.CATEGORIES)
    assert [i.id for i in catalogue.ideas(technique="sae", model="smollm2-135m", difficulty=1)] == [
        "steering-vs-logit-effects"]
    with pytest.raises(ValueError, match="unknown category"):
        catalogue.ideas(category="vision")


@pytest.mark.parametrize("idea", catalogue.IDEAS, ids=lambda idea: idea.id)
def test_every_starter_cell_runs_offline(idea):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(idea.starter, idea.id, "exec"), {})
    assert out.getvalue().strip(), "a starter cell should print what it found"


def test_the_catalogue_page_is_generated_from_the_catalogue():
    page = ROOT / "docs" / "projects.md"
    assert page.read_text() == catalogue.markdown() + "\n", "run `mikit projects --markdown > docs/projects.md`"


def test_projects_command_filters_and_shows(capsys):
    assert cli.main(["projects", "--category", "training dynamics"]) == 0
    assert "sparse-training-dynamics" in capsys.readouterr().out
    assert cli.main(["projects", "--show", "bos-sink"]) == 0
    assert "```python" in capsys.readouterr().out
    assert cli.main(["projects", "--show", "nope"]) == 2
    assert "no idea 'nope'" in capsys.readouterr().err


# --- the worked examples ------------------------------------------------------------------------------------
EXAMPLES = sorted(path.parent for path in (ROOT / "projects" / "examples").glob("*/project.toml"))


@pytest.mark.parametrize("folder", EXAMPLES, ids=lambda folder: folder.name)
def test_a_worked_example_reproduces_from_a_clean_kernel(folder):
    verdicts = run.check(folder)
    assert verdicts and set(verdicts.values()) == {"reproduced"}, verdicts


def test_a_table_cell_with_a_pipe_stays_one_cell():
    assert run._table_markdown({"a|b": 1.0}).splitlines()[-1] == "| a\\|b | 1 |"
