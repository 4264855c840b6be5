"""The solution notebooks in a real browser: JupyterLab + headless Chromium (Playwright).

Each test opens a stripped copy of one solution notebook, runs every cell, then reads the DOM:
no cell raised, every plotly figure is an `svg.main-svg` with a size, circuitsvis views are drawn
and answer a click, and every ipywidgets control changes its output when moved. Run with

    HF_HUB_OFFLINE=1 MIKIT_MODE=offline pytest -m browser tests/test_browser.py

Needs `playwright` (Python) and Chromium (Debian: `apt-get install chromium`; elsewhere set
$MIKIT_CHROMIUM). Without them the tests skip, except under CI=true, where they fail.
One screenshot per notebook goes to $MIKIT_SCREENSHOT_DIR (docs/img/ to refresh the README's).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from browser_helpers import (
    CHROMIUM_ARGS, JS_IMAGE_DIGEST, SOLUTIONS, LabServer, cell_index, find_chromium, missing_reason,
    run_all_cells, saved_plotly_count, wait_for_change,
)

pytestmark = pytest.mark.browser

# Seconds for one notebook to run: 04 and 05 take ~90 s on 2 free cores; a shared machine needs more.
NOTEBOOK_TIMEOUT_S = float(os.environ.get("MIKIT_BROWSER_TIMEOUT", 600))
VIEWPORT = {"width": 1200, "height": 1300}

JS_TEXT_DIGEST = """(el) => {
  const text = el.innerHTML;
  let hash = 2166136261;
  for (let i = 0; i < text.length; i++) { hash ^= text.charCodeAt(i); hash = Math.imul(hash, 16777619) >>> 0; }
  return `${text.length}:${hash.toString(16)}`;
}"""


@pytest.fixture(scope="module")
def lab():
    reason = missing_reason()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    server = LabServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chromium(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory) -> Path:
    folder = os.environ.get("MIKIT_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Notebook:
    """One solution notebook, run to the end in its own browser page."""

    def __init__(self, page, name: str, run_state: dict):
        self.page, self.name, self.run_state = page, name, run_state
        self.source = SOLUTIONS / name

    def cell(self, snippet: str):
        """The DOM cell for the code cell whose source contains `snippet` (scrolled into view)."""
        cell = self.page.locator(".jp-Notebook .jp-Cell").nth(cell_index(self.source, snippet))
        cell.scroll_into_view_if_needed()
        return cell

    def control(self, cell, kind: str, label: str):
        """The ipywidgets control of class `widget-{kind}` whose description is `label`."""
        label_node = self.page.locator("label.widget-label", has_text=re.compile(f"^{re.escape(label)}$"))
        return cell.locator(f".widget-{kind}", has=label_node)

    def image_digest(self, cell) -> str | None:
        image = cell.locator("img.widget-image")
        if not image.is_visible():
            return None
        return image.evaluate(JS_IMAGE_DIGEST)

    @staticmethod
    def digest(locator) -> str:
        return locator.evaluate(JS_TEXT_DIGEST)

    def canvas_data(self, canvas) -> str:
        return canvas.evaluate("(c) => c.toDataURL()")

    def move_slider(self, cell, label: str, key: str = "ArrowRight") -> None:
        """Move a slider one step with the keyboard, as a student would with its handle focused."""
        handle = self.control(cell, "slider", label).locator(".noUi-handle")
        handle.focus()
        handle.press(key)

    def assert_size(self, locator, what: str, min_px: float = 10) -> dict:
        box = locator.bounding_box()
        assert box and box["width"] >= min_px and box["height"] >= min_px, f"{self.name}: {what} has size {box}."
        return box

    def assert_common(self) -> None:
        """No cell raised; every plotly figure is drawn; every widget view loaded."""
        assert not self.run_state["errors"], f"{self.name}: cells raised: {self.run_state['errors']}"
        assert self.run_state["done"] == self.run_state["total"], f"{self.name}: not every cell ran: {self.run_state}"
        expected = saved_plotly_count(self.source)
        plots = self.page.locator(".jp-OutputArea-output.jp-RenderedPlotly")
        assert plots.count() >= expected, (
            f"{self.name}: {plots.count()} plotly figures rendered, the solution shows {expected}.")
        for i in range(plots.count()):
            plots.nth(i).scroll_into_view_if_needed()
            self.assert_size(plots.nth(i).locator("svg.main-svg").first, f"plotly figure {i}")
        outputs_text = self.page.locator(".jp-Notebook").inner_text()
        for failure in ("Error displaying widget", "Failed to load model class", "Loading widget..."):
            assert failure not in outputs_text, f"{self.name}: a widget output shows {failure!r}."

    def assert_circuitsvis(self, snippet: str) -> None:
        """The view is drawn (canvases with a size) and clicking another head redraws the large pattern."""
        view = self.cell(snippet).locator("[id^='circuits-vis']")
        self.assert_size(view, "the circuitsvis view", min_px=100)
        # attention_patterns draws its head thumbnails in <figure>s, attention_heads in plain boxes.
        thumbnails = view.locator("figure canvas") if view.locator("figure canvas").count() else view.locator("canvas")
        assert thumbnails.count() >= 3, f"{self.name}: the circuitsvis view drew {thumbnails.count()} head canvases."
        areas = view.locator("canvas").evaluate_all("(cs) => cs.map(c => c.clientWidth * c.clientHeight)")
        main = view.locator("canvas").nth(max(range(len(areas)), key=areas.__getitem__))
        self.assert_size(main, "the circuitsvis attention pattern", min_px=50)
        before = self.canvas_data(main)
        thumbnails.nth(1).click()
        wait_for_change(lambda: self.canvas_data(main), before, 10, "circuitsvis pattern after clicking the second head")

    def screenshot(self, locator, folder: Path, max_height: int = 1100) -> Path:
        """Scroll `locator` to the top of the notebook and save what is visible of it (at most max_height px)."""
        path = folder / f"{Path(self.name).stem}.png"
        self.page.add_style_tag(content=".modebar-container { display: none !important; }")  # plotly's toolbar
        locator.evaluate("(el) => el.scrollIntoView({block: 'start'})")
        self.page.wait_for_timeout(500)
        box = locator.bounding_box()
        area = self.page.locator(".jp-NotebookPanel .jp-WindowedPanel-outer").first.bounding_box()
        left, top = max(box["x"], area["x"]), max(box["y"], area["y"])
        right = min(box["x"] + box["width"], area["x"] + area["width"])
        bottom = min(box["y"] + box["height"], area["y"] + area["height"], top + max_height)
        clip = {"x": left, "y": top, "width": right - left, "height": bottom - top}
        self.page.screenshot(path=str(path), clip=clip, animations="disabled")
        return path


@pytest.fixture
def run_notebook(lab, chromium):
    """Open a stripped copy of a solution notebook in a fresh page and run all its cells."""
    contexts = []

    def run(name: str) -> Notebook:
        context = chromium.new_context(viewport=VIEWPORT)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(lab.lab_url(lab.copy_solution(name)))
        state = run_all_cells(page, NOTEBOOK_TIMEOUT_S)
        # A wide notebook for screenshots: hide the side bars.
        page.evaluate("() => { window.jupyterapp.shell.collapseLeft(); window.jupyterapp.shell.collapseRight(); }")
        return Notebook(page, name, state)

    yield run
    for context in contexts:
        context.close()
    lab.shutdown_kernels()


def test_01_induction_heads(run_notebook, screenshot_dir):
    nb = run_notebook("01_induction_heads.ipynb")
    nb.assert_common()
    nb.assert_circuitsvis("cv.attention.attention_patterns(")

    for snippet in ("viz.attention_explorer(toy", "viz.attention_explorer(lm"):
        cell = nb.cell(snippet)
        digest = nb.image_digest(cell)
        assert digest, f"attention explorer ({snippet}) shows no image."
        nb.assert_size(cell.locator("img.widget-image"), "the attention explorer's image", min_px=100)
        readout = nb.control(cell, "slider", "layer").locator(".widget-readout")
        layer_before = readout.inner_text()
        nb.move_slider(cell, "layer")
        digest = wait_for_change(lambda: nb.image_digest(cell), digest, 30, "pattern image after moving the layer slider")
        assert readout.inner_text() != layer_before
        menu = nb.control(cell, "dropdown", "head").locator("select")
        options = menu.locator("option").all_inner_texts()
        menu.select_option(label=next(o for o in options if o != menu.evaluate("(s) => s.selectedOptions[0].text")))
        wait_for_change(lambda: nb.image_digest(cell), digest, 30, "pattern image after picking another head")

    nb.screenshot(nb.cell("viz.attention_explorer(toy").locator(".widget-vbox").first, screenshot_dir)


def test_02_ioi(run_notebook, screenshot_dir):
    nb = run_notebook("02_ioi.ipynb")
    nb.assert_common()
    nb.assert_circuitsvis("cv.attention.attention_heads(")
    diagram = nb.cell("viz.circuit_diagram(").locator("svg.main-svg").first
    nb.assert_size(diagram, "the circuit diagram", min_px=200)
    nb.screenshot(nb.cell("viz.circuit_diagram(").locator(".js-plotly-plot .main-svg").first, screenshot_dir)


def test_03_activation_patching(run_notebook, screenshot_dir):
    nb = run_notebook("03_activation_patching.ipynb")
    nb.assert_common()
    heatmap = nb.cell("viz.positions_heatmap(resid_effect").locator(".jp-RenderedPlotly")
    nb.assert_size(heatmap.locator("svg.main-svg").first, "the residual-stream patching heatmap", min_px=200)
    nb.screenshot(heatmap.locator(".main-svg").first, screenshot_dir)


def test_04_sparse_autoencoders(run_notebook, screenshot_dir):
    nb = run_notebook("04_sparse_autoencoders.ipynb")
    nb.assert_common()
    cell = nb.cell("board = latent_dashboard(")
    picker = nb.control(cell, "text", "latent").locator("input")
    contexts = cell.locator(".widget-html-content").first
    effects = cell.locator(".widget-html-content").nth(1)
    histogram = cell.locator(".widget-output svg.main-svg").first
    note = cell.locator(".widget-textarea textarea")
    nb.assert_size(histogram, "the dashboard's histogram", min_px=100)
    assert "music" in contexts.inner_text().lower(), "the dashboard does not open on the music latent."

    state = lambda: (nb.digest(contexts), nb.digest(effects), nb.digest(histogram))  # noqa: E731
    first_latent, before = picker.input_value(), state()
    note.fill("fires on the word music")
    note.blur()

    cell.locator("button.widget-button", has_text="next strongest").click()
    wait_for_change(picker.input_value, first_latent, 30, "latent number after 'next strongest'")
    after_button = wait_for_change(state, before, 60, "dashboard after 'next strongest'")
    assert all(a != b for a, b in zip(after_button, before)), "contexts, logit effects and histogram must all change."
    assert note.input_value() == "", "the note box should be empty for a latent without an explanation."

    picker.fill(first_latent)
    picker.press("Enter")
    wait_for_change(state, after_button, 60, "dashboard after typing a latent number")
    wait_for_change(note.input_value, "", 30, "the note kept for the first latent")
    assert note.input_value() == "fires on the word music"
    nb.screenshot(cell.locator(".widget-vbox").first, screenshot_dir)


def test_05_cross_attention(run_notebook, screenshot_dir):
    nb = run_notebook("05_cross_attention.ipynb")
    nb.assert_common()
    cell = nb.cell("viz.t2i_explorer(")
    image = cell.locator("img.widget-image")
    nb.assert_size(image, "the explorer's heatmaps", min_px=100)
    digest = nb.image_digest(cell)

    for label in ("layer", "step"):
        nb.move_slider(cell, label)
        digest = wait_for_change(lambda: nb.image_digest(cell), digest, 30, f"heatmaps after moving the {label} slider")

    seed = nb.control(cell, "text", "seed").locator("input")
    seed.fill("3")
    seed.press("Enter")
    digest = wait_for_change(lambda: nb.image_digest(cell), digest, 60, "picture after changing the seed")

    caption = nb.control(cell, "text", "caption").locator("input")
    caption.fill("a small green triangle")
    caption.press("Enter")
    digest = wait_for_change(lambda: nb.image_digest(cell), digest, 60, "picture after a new caption")

    message = cell.locator(".widget-html-content")
    caption.fill("a purple unicorn")
    caption.press("Enter")
    wait_for_change(lambda: message.inner_text().strip(), "", 30, "error message for an unknown word")
    assert "unicorn" in message.inner_text()
    assert not image.is_visible(), "the previous caption's picture should be hidden while the caption has unknown words."

    # Back to the notebook's view (seed 0, all layers and steps) for the screenshot.
    seed.fill("0")
    seed.press("Enter")
    caption.fill("a large red circle left of a small blue square")
    caption.press("Enter")
    digest = wait_for_change(lambda: nb.image_digest(cell), None, 60, "picture after fixing the caption")
    assert message.inner_text().strip() == ""
    for label in ("layer", "step"):
        nb.move_slider(cell, label, key="ArrowLeft")
        digest = wait_for_change(lambda: nb.image_digest(cell), digest, 30, f"heatmaps after moving the {label} slider back")
    nb.screenshot(cell.locator(".widget-vbox").first, screenshot_dir)
