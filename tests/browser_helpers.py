"""Run the solution notebooks in JupyterLab inside headless Chromium (Playwright) and read the page.

Used by tests/test_browser.py. The server and the browser are started here and stopped by the
test module's fixtures; nothing here touches `solutions/`: notebooks run from stripped copies.
"""

from __future__ import annotations

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


def saved_plotly_count(notebook: Path) -> int:
    """How many plotly figures the saved solution shows (its kept outputs)."""
    cells = json.loads(notebook.read_text())["cells"]
    return sum(PLOTLY_MIME in output.get("data", {}) for cell in cells for output in cell.get("outputs", []))


def cell_index(notebook: Path, snippet: str) -> int:
    """Index of the only code cell whose source contains `snippet`."""
    cells = json.loads(notebook.read_text())["cells"]
    found = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and snippet in "".join(c["source"])]
    if len(found) != 1:
        raise LookupError(f"{notebook.name}: {len(found)} code cells contain {snippet!r}; expected exactly one.")
    return found[0]


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
        target = self.workdir / name
        strip_outputs(SOLUTIONS / name, target)
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

JS_RUN_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code' && c.model.sharedModel.getSource().trim());
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

JS_IMAGE_DIGEST = """async (img) => {
  if (!img.src) return null;
  const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  let hash = 2166136261;
  for (const b of bytes) { hash ^= b; hash = Math.imul(hash, 16777619) >>> 0; }
  return `${bytes.length}:${hash.toString(16)}`;
}"""


def run_all_cells(page, timeout: float) -> dict:
    """Run every cell of the open notebook; return the final run state (raises on timeout)."""
    page.wait_for_function(JS_NOTEBOOK_READY, timeout=120_000, polling=500)
    # Not awaited: the command's promise settles only when the last cell has run.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    deadline = time.monotonic() + timeout
    state: dict = {}
    idle_since = None
    start = last_report = time.monotonic()
    while time.monotonic() < deadline:
        state = page.evaluate(JS_RUN_STATE)
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
        time.sleep(1)
    raise TimeoutError(f"the notebook did not finish within {timeout:.0f} s: {state}")


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
