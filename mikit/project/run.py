"""`mikit project check` and `mikit project report`: re-run a project from a clean kernel, and write its report.

    check("my-project")     # {result: "reproduced" | "differs: …" | "missing: …" | "new: …"}
    report("my-project")    # report/report.md and report/report.html (one file, figures inside)
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from mikit.project import NOTEBOOK, RESULTS, Project
from mikit.project.results import load_index

PLACEHOLDER = re.compile(r"\{\{\s*result:\s*([A-Za-z0-9_-]+)\s*\}\}")


def execute(folder: Path, timeout: int = 600) -> None:
    """Run `folder`'s notebook top to bottom in a fresh kernel with `folder` as the working directory."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = folder / NOTEBOOK
    nb = nbformat.read(path, as_version=4)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    except CellExecutionError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise RuntimeError(f"{path.name} stopped with an error in a fresh kernel ({first}); run it top to bottom "
                           "in Jupyter to see where.") from None
    finally:
        nbformat.write(nb, path)


def check(folder: str | Path, timeout: int = 600) -> dict[str, str]:
    """Re-run a copy of the project from a clean kernel and compare each saved result with the fresh one.

    The project itself is not changed: the copy runs in a temporary folder with an empty results/."""
    project = Project.read(folder)
    if not load_index(project.results):
        raise ValueError(f"{project.results} holds no saved results yet: run {NOTEBOOK} (it calls project.save) first.")
    with tempfile.TemporaryDirectory(prefix="mikit-check-") as scratch:
        copy = Path(scratch) / project.folder.name
        shutil.copytree(project.folder, copy, ignore=shutil.ignore_patterns(RESULTS, "report", ".ipynb_checkpoints"))
        (copy / RESULTS).mkdir()
        execute(copy, timeout)
        from mikit.project.results import compare

        return compare(project.results, copy / RESULTS)


def _table_markdown(data) -> str:
    """A saved table as Markdown: a dict as two columns, a list of dicts as rows, anything else as JSON."""
    def cell(value) -> str:
        return (f"{value:.4g}" if isinstance(value, float) else str(value)).replace("|", "\\|")

    if isinstance(data, dict) and "columns" in data and "rows" in data:
        header, rows = data["columns"], data["rows"]
    elif isinstance(data, dict) and all(not isinstance(v, (dict, list)) for v in data.values()):
        header, rows = ["", "value"], [[k, v] for k, v in data.items()]
    elif isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        header = list(data[0])
        rows = [[row.get(key, "") for key in header] for row in data]
    else:
        return f"```\n{json.dumps(data)[:2000]}\n```"
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _provenance(record: dict) -> str:
    return f"*seed {record['seed']}, code {record['code_version'] or '?'}, mikit {record['mikit_version']}*"


def report(folder: str | Path) -> tuple[Path, Path]:
    """Fill report.md with the saved results and export it: report/report.md and a self-contained report.html."""
    import nbformat
    from nbconvert import HTMLExporter

    project = Project.read(folder)
    index = load_index(project.results)
    template = (project.folder / "report.md").read_text()
    unknown = [name for name in PLACEHOLDER.findall(template) if name not in index]
    if unknown:
        raise ValueError(f"report.md places {', '.join(unknown)}, which results/ does not hold (saved: "
                         f"{', '.join(index) or 'nothing yet'}).")
    placed = set(PLACEHOLDER.findall(template))
    rest = [name for name in index if name not in placed]
    if rest:
        template += "\n## Other results\n\n" + "\n\n".join(f"{{{{result: {name}}}}}" for name in rest) + "\n"

    out = project.folder / "report"
    out.mkdir(exist_ok=True)
    markdown, cells, last = [], [], 0

    def text_cell(text: str) -> None:
        if text.strip():
            cells.append(nbformat.v4.new_markdown_cell(text))

    for match in PLACEHOLDER.finditer(template):
        name, record = match.group(1), index[match.group(1)]
        before = template[last:match.start()]
        markdown.append(before)
        caption = f"**{name}.** {record['caption']} {_provenance(record)}"
        if record["kind"] == "table":
            piece = _table_markdown(json.loads((project.results / f"{name}.json").read_text())) + f"\n\n{caption}"
            markdown.append(piece)
            text_cell(before + piece)
        else:
            link = f"{name}.png" if record["kind"] == "matplotlib" else f"{name}.html"
            shutil.copy(project.results / link, out / link)
            markdown.append(f"![{name}]({link})\n\n{caption}" if link.endswith(".png") else f"[{name} (interactive)]({link})\n\n{caption}")
            text_cell(before)
            cells.append(_figure_cell(project.results, name, record, with_js=not any(
                "text/html" in o.get("data", {}) for c in cells for o in c.get("outputs", []))))
            text_cell(caption)
        last = match.end()
    markdown.append(template[last:])
    text_cell(template[last:])
    md_path = out / "report.md"
    md_path.write_text("".join(markdown))
    if (project.results / "plotly.min.js").exists():
        shutil.copy(project.results / "plotly.min.js", out / "plotly.min.js")

    html, _ = HTMLExporter(exclude_input=True, embed_images=True).from_notebook_node(
        nbformat.v4.new_notebook(cells=cells, metadata={"title": project.name}))
    html_path = out / "report.html"
    html_path.write_text(html)
    return md_path, html_path


def _figure_cell(results: Path, name: str, record: dict, with_js: bool):
    """A code cell without source whose output is the figure: a PNG, or the plotly figure (plotly.js inlined in
    the first one only, so the HTML file works offline)."""
    import base64

    import nbformat

    if record["kind"] == "matplotlib":
        data = {"image/png": base64.b64encode((results / f"{name}.png").read_bytes()).decode()}
    else:
        import plotly.io

        figure = plotly.io.from_json((results / f"{name}.json").read_text())
        data = {"text/html": figure.to_html(full_html=False, include_plotlyjs=with_js)}
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("display_data", data=data)]
    return cell
