"""Open the solution notebooks in JupyterLab inside headless Chromium (Playwright) and read the page.

Used by tests/test_browser.py. The server and the browser are started here and stopped by the
test module's fixtures; nothing here touches `solutions/`: notebooks open from copies, either with
their saved outputs (signed, so that JupyterLab trusts their scripts) or stripped, to run live.
`cells_needed` finds which cells a live run needs: the widget cells and the cells they read from.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO_ROOT / "solutions"

# Debian's chromium (Playwright's own browser download needs network); $MIKIT_CHROMIUM overrides.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage",
]

# JupyterLab settings for a test run: every cell stays in the DOM (the default windowing skips
# rendering off-screen cells), nothing is saved behind our back, and no news or update toasts.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True,
    },
}

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def find_chromium() -> str | None:
    """The Chromium executable to drive, or None."""
    override = os.environ.get("MIKIT_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


def missing_reason() -> str | None:
    """One sentence naming what the browser tests lack (Playwright or Chromium), or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the browser tests need the Python package playwright (pip install playwright)."
    if find_chromium() is None:
        return ("the browser tests need Chromium at /usr/bin/chromium (apt-get install chromium) "
                "or $MIKIT_CHROMIUM pointing at one.")
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def strip_outputs(source: Path, target: Path) -> None:
    """Copy a notebook without outputs, execution counts or saved widget state."""
    notebook = json.loads(source.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    notebook.get("metadata", {}).pop("widgets", None)
    target.write_text(json.dumps(notebook, indent=1))


def saved_outputs(notebook: Path, cells: list[int] | None = None) -> list[dict]:
    """The kept outputs of a notebook's code cells (of `cells` only, when given)."""
    found = json.loads(notebook.read_text())["cells"]
    return [output for i, cell in enumerate(found) if cells is None or i in cells for output in cell.get("outputs", [])]


def saved_count(notebook: Path, mime: str, cells: list[int] | None = None, contains: str | None = None) -> int:
    """How many kept outputs carry `mime` (and, when given, whose text contains `contains`)."""
    return sum(mime in output.get("data", {}) and (contains is None or contains in "".join(output["data"][mime]))
               for output in saved_outputs(notebook, cells))


def saved_plotly_count(notebook: Path, cells: list[int] | None = None) -> int:
    """How many plotly figures the saved solution shows (its kept outputs)."""
    return saved_count(notebook, PLOTLY_MIME, cells)


def code_cells(notebook: Path) -> dict[int, str]:
    """Index (among all cells) -> source of every code cell."""
    cells = json.loads(notebook.read_text())["cells"]
    return {i: "".join(c["source"]) for i, c in enumerate(cells) if c["cell_type"] == "code"}


def cell_index(notebook: Path, snippet: str) -> int:
    """Index of the only code cell whose source contains `snippet`."""
    found = [i for i, source in code_cells(notebook).items() if snippet in source]
    if len(found) != 1:
        raise LookupError(f"{notebook.name}: {len(found)} code cells contain {snippet!r}; expected exactly one.")
    return found[0]


class CellNames(ast.NodeVisitor):
    """The names one cell reads, binds at module level (surely, or only on some paths) and changes in place."""

    def __init__(self, depth: int = 0, conditional: int = 0):
        self.reads: set[str] = set()
        self.late_reads: set[str] = set()  # read inside a function body: looked up when it is called
        self.binds: set[str] = set()     # bound whichever way the cell runs
        self.maybe: set[str] = set()     # bound inside a loop, a try or one branch of an if
        self.changes: set[str] = set()   # x[i] = ..., x.a = ..., x.method(...) as a statement
        self.imports: set[str] = set()   # names bound by import (plt.show() does not change what plt is)
        self._depth = depth              # > 0 inside a function, class, lambda or comprehension (own scope)
        self._late = 0                   # > 0 inside a function or lambda body
        self._conditional = conditional  # > 0 inside a loop or try at module level

    def _bind(self, names) -> None:
        if not self._depth:
            (self.maybe if self._conditional else self.binds).update(names)

    def _changed(self, node) -> None:
        while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
            node = node.value
        if isinstance(node, ast.Name) and not self._depth:
            self.changes.add(node.id)

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load):
            (self.late_reads if self._late else self.reads).add(node.id)
        else:
            self._bind({node.id})

    def _scope(self, node):
        """A function, class, lambda or comprehension: what it binds is its own; what else it reads counts."""
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self._bind({node.name})
        inner = CellNames(depth=1)
        inner._late = self._late or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        inner.generic_visit(node)
        local = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        local |= {a.arg for n in ast.walk(node) if isinstance(n, ast.arguments)
                  for a in (*n.posonlyargs, *n.args, *n.kwonlyargs, n.vararg, n.kwarg) if a}
        self.reads |= inner.reads - local
        self.late_reads |= inner.late_reads - local

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _scope
    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _scope

    def visit_Import(self, node):
        names = {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        self._bind(names)
        self.imports |= names

    visit_ImportFrom = visit_Import

    def visit_Assign(self, node):
        for target in node.targets:
            for element in ast.walk(target):
                if isinstance(element, (ast.Attribute, ast.Subscript)):
                    self._changed(element)
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._changed(node.target)
        if isinstance(node.target, ast.Name):
            self.reads.add(node.target.id)
        self.generic_visit(node)

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute):
            self._changed(node.value.func.value)
        self.generic_visit(node)

    def _conditional_block(self, node):
        self._conditional += 1
        self.generic_visit(node)
        self._conditional -= 1

    visit_For = visit_AsyncFor = visit_While = visit_Try = _conditional_block

    def visit_If(self, node):
        self.visit(node.test)
        branches = []
        for body in (node.body, node.orelse):
            branch = CellNames(self._depth, self._conditional)
            branch._late = self._late
            for statement in body:
                branch.visit(statement)
            self.reads |= branch.reads
            self.late_reads |= branch.late_reads
            self.changes |= branch.changes
            self.maybe |= branch.maybe
            branches.append(branch)
        both = branches[0].binds & branches[1].binds  # bound whichever branch runs
        self._bind(both)
        if not self._depth:
            self.maybe |= (branches[0].binds | branches[1].binds) - both


def cell_names(source: str) -> CellNames:
    """CellNames of one cell; the Python inside magics (%time f(x), %%capture bodies) counts too."""
    from IPython.core.inputtransformer2 import TransformerManager

    names = CellNames()
    tree = ast.parse(TransformerManager().transform_cell(source))
    names.visit(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("run_line_magic", "run_cell_magic"):
            for argument in node.args[1:]:
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    try:
                        names.visit(ast.parse(argument.value))
                    except SyntaxError:  # a shell command (%pip install ...), not Python
                        pass
    return names


def cells_needed(notebook: Path, snippets, always=()) -> list[int]:
    """The code cells to run, in order, so that the cells containing `snippets` run as in the full notebook.

    A cell needs, for each name it reads, the cells before it that bind that name or change it in place,
    back to the last one that surely binds it; and so on for those. A name read inside a function body is
    looked up when the function is called: before the cell and before the last target as well. Cells
    containing an `always` snippet (the setup cell) run too. A static reading of the source: a dependency
    it missed fails the run with a NameError in the page, which the browser tests report.
    """
    names = {i: cell_names(source) for i, source in code_cells(notebook).items()}
    targets = [cell_index(notebook, snippet) for snippet in (*snippets, *always)]
    last = max(targets)
    todo, needed = list(targets), set()
    modules = set().union(*(cell.imports for cell in names.values()))

    def writers(name: str, before: int):
        for j in sorted((j for j in names if j < before), reverse=True):
            changes = name in names[j].changes and name not in modules
            if name in names[j].binds or name in names[j].maybe or changes:
                yield j
            if name in names[j].binds:
                return

    while todo:
        i = todo.pop()
        if i in needed:
            continue
        needed.add(i)
        for name in names[i].reads | names[i].late_reads:
            todo.extend(writers(name, i))
        for name in names[i].late_reads:
            todo.extend(j for j in writers(name, last) if j != i)
    return sorted(needed)


class LabServer:
    """JupyterLab on 127.0.0.1 (random free port, random token), rooted at the repository."""

    def __init__(self, root: Path = REPO_ROOT):
        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.home = Path(tempfile.mkdtemp(prefix="mikit-lab-"))
        # Notebooks run from copies in a folder under the server root (same depth as solutions/).
        self.workdir = Path(tempfile.mkdtemp(prefix="browser-run-", dir=root))
        self.log = (self.home / "server.log").open("w")
        # Signatures of the saved-output copies: the server trusts what the tests sign here.
        self.notary_dir = self.home / "notary"
        self.notary_dir.mkdir()
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        settings = self.home / "settings"
        for name, values in LAB_SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = dict(
            os.environ, HF_HUB_OFFLINE="1", MIKIT_MODE="offline",
            JUPYTER_CONFIG_DIR=str(self.home / "config"), JUPYTER_RUNTIME_DIR=str(self.home / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(self.home / "workspaces"),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
            f"--port={self.port}", "--port-retries=0", f"--ServerApp.root_dir={self.root}",
            f"--IdentityProvider.token={self.token}", "--LabApp.expose_app_in_browser=True",
            f"--NotebookNotary.data_dir={self.notary_dir}",
            "--LabApp.news_url=None", "--ServerApp.open_browser=False",
        ]
        self.process = subprocess.Popen(command, cwd=self.root, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def api(self, method: str, path: str):
        request = urllib.request.Request(f"{self.base_url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")
        for kernel in self.api("GET", "/api/kernels"):
            self.api("DELETE", f"/api/kernels/{kernel['id']}")

    def copy_solution(self, name: str) -> Path:
        """A copy of the solution without outputs, to run live."""
        target = self.workdir / name
        strip_outputs(SOLUTIONS / name, target)
        return target

    def copy_with_outputs(self, name: str) -> Path:
        """A copy of the solution with its saved outputs, signed so that JupyterLab runs their scripts."""
        import nbformat
        from nbformat.sign import NotebookNotary

        notebook = nbformat.read(SOLUTIONS / name, as_version=4)
        notary = NotebookNotary(data_dir=str(self.notary_dir))
        notary.sign(notebook)
        notary.store.close()
        target = self.workdir / f"saved-{name}"
        nbformat.write(notebook, target)
        return target

    def lab_url(self, notebook: Path) -> str:
        # A workspace of its own per notebook: the default one would reopen (and start kernels for) earlier tabs.
        path = notebook.relative_to(self.root).as_posix()
        return f"{self.base_url}/lab/workspaces/{notebook.stem}/tree/{path}?token={self.token}"

    def log_tail(self, n: int = 3000) -> str:
        self.log.flush()
        return (self.home / "server.log").read_text()[-n:]

    def children(self) -> list[int]:
        """Pids of the server's child processes (its kernels, which run in their own sessions)."""
        if self.process is None:
            return []
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                pids.append(int(stat.parent.name))
        return pids

    def stop(self) -> None:
        kernels = self.children()
        if self.process is not None and self.process.poll() is None:
            try:
                self.shutdown_kernels()
            except OSError:
                pass
            kernels += self.children()
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in set(kernels):  # a kernel the server failed to end (its command line names our runtime folder)
            try:
                if str(self.home) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)


# JavaScript run in the page. `jupyterapp` is exposed by --LabApp.expose_app_in_browser.
JS_NOTEBOOK_READY = """() => {
  const app = window.jupyterapp;
  if (!app || !app.commands.hasCommand('notebook:run-all-cells')) return false;
  const panel = app.shell.currentWidget;
  if (!panel || !panel.sessionContext || !panel.context.isReady || !panel.sessionContext.isReady) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle';
}"""

JS_RUN_STATE = """(indices) => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.filter((c, i) => c.model.type === 'code' && indices.includes(i));
  const errors = [];
  panel.content.widgets.forEach((cell, index) => {
    if (cell.model.type !== 'code') return;
    for (const output of cell.model.outputs.toJSON()) {
      if (output.output_type === 'error') errors.push(`cell ${index}: ${output.ename}: ${output.evalue}`);
    }
  });
  return {
    kernel: kernel ? kernel.status : 'none',
    done: cells.filter(c => c.model.executionCount !== null).length,
    total: cells.length,
    running: cells.filter(c => c.promptNode && c.promptNode.textContent.includes('*')).length,
    errors,
  };
}"""

# Runs the given cells one after the other, as a student clicking each and pressing Shift+Enter would
# (without moving on), and stops at the first that fails. Not awaited by Python: polled with JS_RUN_STATE.
JS_RUN_CELLS = """(indices) => {
  const app = window.jupyterapp;
  const notebook = app.shell.currentWidget.content;
  (async () => {
    for (const index of indices) {
      notebook.activeCellIndex = index;
      if (!(await app.commands.execute('notebook:run-cell'))) break;
    }
  })();
}"""

JS_IMAGE_DIGEST = """async (img) => {
  if (!img.src) return null;
  const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  let hash = 2166136261;
  for (const b of bytes) { hash ^= b; hash = Math.imul(hash, 16777619) >>> 0; }
  return `${bytes.length}:${hash.toString(16)}`;
}"""


def wait_for_kernel(page) -> None:
    """Wait until the open notebook's kernel is up and idle."""
    page.wait_for_function(JS_NOTEBOOK_READY, timeout=120_000, polling=500)


def run_cells(page, indices: list[int], timeout: float) -> dict:
    """Run the open notebook's cells `indices` (in order); return the final run state (raises on timeout)."""
    wait_for_kernel(page)
    page.evaluate(JS_RUN_CELLS, indices)
    deadline = time.monotonic() + timeout
    state: dict = {}
    idle_since = None
    start = last_report = time.monotonic()
    while time.monotonic() < deadline:
        state = page.evaluate(JS_RUN_STATE, indices)
        if time.monotonic() - last_report > 30:  # shown by pytest when the test fails
            print(f"{time.monotonic() - start:5.0f} s: {state['done']}/{state['total']} cells, kernel {state['kernel']}")
            last_report = time.monotonic()
        finished = state["done"] == state["total"] or state["errors"]
        if finished and state["running"] == 0 and state["kernel"] == "idle":
            # Widgets and figures render after the kernel goes idle: give them a moment.
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 1.5:
                return state
        else:
            idle_since = None
        time.sleep(0.5)
    raise TimeoutError(f"the cells did not finish within {timeout:.0f} s: {state}")


def wait_for_change(read, before, timeout: float = 60, what: str = "output"):
    """Poll `read()` until it differs from `before` (and is not None); return the new value."""
    deadline = time.monotonic() + timeout
    value = read()
    while time.monotonic() < deadline:
        value = read()
        if value is not None and value != before:
            return value
        time.sleep(0.25)
    raise AssertionError(f"the {what} did not change within {timeout:.0f} s (still {value!r}).")
