"""The solution notebooks in a real browser: JupyterLab + headless Chromium (Playwright).

Two kinds of test, on one JupyterLab server and one Chromium for the module:

- every solution notebook opens with its saved outputs (signed, so trusted, as the author's own
  notebook is) and nothing executed: every plotly figure is an `svg.main-svg` with a size, every
  circuitsvis view is drawn and answers a click, every matplotlib image loads, every saved widget
  view is restored, and no output shows an error;
- the notebooks with widgets (01, 04, 05) open stripped and run live, in a kernel, the cells that
  build their widgets and every cell those read from (`cells_needed`); then every ipywidgets control
  changes what the widget shows when moved, typed into or clicked.

Executing every cell of every notebook is nbval's job (tests/notebooks/). Run with

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
    CHROMIUM_ARGS, JS_IMAGE_DIGEST, PLOTLY_MIME, SOLUTIONS, WIDGET_MIME, LabServer, cell_index, cells_needed,
    find_chromium, missing_reason, run_cells, saved_count, saved_plotly_count, wait_for_change, wait_for_kernel,
)

pytestmark = pytest.mark.browser

# Seconds for one notebook's live cells to run: 04's take ~60 s on 2 free cores; a shared machine needs more.
NOTEBOOK_TIMEOUT_S = float(os.environ.get("MIKIT_BROWSER_TIMEOUT", 600))
VIEWPORT = {"width": 1200, "height": 1300}
NAMES = sorted(p.name for p in SOLUTIONS.glob("*.ipynb"))
SETUP = "mikit.setup("  # the setup cell always runs: it seeds, picks the mode and the device
# The cells that build each notebook's widgets: they run live, with the cells they need.
WIDGET_CELLS = {
    "01_induction_heads.ipynb": ("viz.attention_explorer(toy", "viz.attention_explorer(lm"),
    "04_sparse_autoencoders.ipynb": ("board = latent_dashboard(",),
    "05_cross_attention.ipynb": ("viz.t2i_explorer(",),
}
# Screenshots from the saved outputs of notebooks without widgets: (cell snippet, what to frame).
SAVED_SCREENSHOTS = {
    "02_ioi.ipynb": ("viz.circuit_diagram(", ".js-plotly-plot .main-svg"),
    "03_activation_patching.ipynb": ("viz.positions_heatmap(resid_effect", ".jp-RenderedPlotly .main-svg"),
}

# Plotly figures in cell outputs, not those inside a widget's Output (the SAE dashboard's histogram).
PLOTS = ("xpath=//div[contains(@class, 'jp-OutputArea-output') and contains(@class, 'jp-RenderedPlotly')"
         " and not(ancestor::div[contains(@class, 'widget-output')])]")

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
    """One solution notebook in its own browser page: saved outputs shown, or some cells run live."""

    def __init__(self, page, name: str, ran: list[int], run_state: dict | None):
        self.page, self.name, self.ran, self.run_state = page, name, ran, run_state
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

    def assert_plotly(self, expected: int) -> None:
        """`expected` plotly figures, each drawn as an svg with a size."""
        plots = self.page.locator(PLOTS)
        # plotly.js loads on the first figure: wait for every figure's svg before measuring.
        drawn = plots.filter(has=self.page.locator("svg.main-svg"))
        wait_for_change(lambda: drawn.count() >= expected or None, None, 60, f"{self.name}: plotly figures drawn")
        assert plots.count() == expected, (
            f"{self.name}: {plots.count()} plotly figures rendered, the solution shows {expected}.")
        for i in range(plots.count()):
            plots.nth(i).scroll_into_view_if_needed()
            self.assert_size(plots.nth(i).locator("svg.main-svg").first, f"plotly figure {i}")

    def assert_no_widget_errors(self) -> None:
        outputs_text = self.page.locator(".jp-Notebook").inner_text()
        for failure in ("Error displaying widget", "Failed to load model class", "Loading widget...", "Traceback"):
            assert failure not in outputs_text, f"{self.name}: an output shows {failure!r}."

    def assert_live(self) -> None:
        """The live cells all ran without raising; their plotly figures are drawn; every widget view loaded."""
        assert not self.run_state["errors"], f"{self.name}: cells raised: {self.run_state['errors']}"
        assert self.run_state["done"] == self.run_state["total"] == len(self.ran), (
            f"{self.name}: not every cell ran: {self.run_state}")
        self.assert_plotly(saved_plotly_count(self.source, self.ran))
        self.assert_no_widget_errors()

    def assert_saved_outputs(self) -> None:
        """Every saved figure renders: plotly, circuitsvis (drawn, and redrawn on a click), images, widget views."""
        self.assert_plotly(saved_plotly_count(self.source))
        views = self.page.locator(".jp-OutputArea-output [id^='circuits-vis']")
        expected = saved_count(self.source, "text/html", contains='id="circuits-vis')
        wait_for_change(lambda: views.count() >= expected or None, None, 60, f"{self.name}: circuitsvis views")
        assert views.count() == expected, f"{self.name}: {views.count()} circuitsvis views, the solution shows {expected}."
        for i in range(expected):
            self.assert_circuitsvis_view(views.nth(i))
        images = self.page.locator(".jp-OutputArea-output.jp-RenderedImage img")
        expected = saved_count(self.source, "image/png")
        assert images.count() == expected, f"{self.name}: {images.count()} images, the solution shows {expected}."
        for i in range(expected):
            image = images.nth(i)
            image.scroll_into_view_if_needed()
            image.wait_for(state="visible")
            assert image.evaluate("(img) => img.decode().then(() => img.naturalWidth)"), f"{self.name}: image {i} is empty."
            self.assert_size(image, f"image {i}")
        widgets = self.page.locator(".jp-OutputArea-output .jupyter-widgets")
        if saved_count(self.source, WIDGET_MIME):
            wait_for_change(lambda: widgets.count() or None, None, 60, f"{self.name}: saved widget views restored")
        self.assert_no_widget_errors()

    def assert_circuitsvis_view(self, view) -> None:
        """The view is drawn (canvases with a size) and clicking another head redraws the large pattern."""
        view.scroll_into_view_if_needed()
        self.assert_size(view, "the circuitsvis view", min_px=100)
        # attention_patterns draws its head thumbnails in <figure>s, attention_heads in plain boxes.
        canvases = view.locator("canvas")
        wait_for_change(lambda: canvases.count() >= 3 or None, None, 30, f"{self.name}: circuitsvis canvases")
        thumbnails = view.locator("figure canvas") if view.locator("figure canvas").count() else canvases
        assert thumbnails.count() >= 3, f"{self.name}: the circuitsvis view drew {thumbnails.count()} head canvases."
        areas = canvases.evaluate_all("(cs) => cs.map(c => c.clientWidth * c.clientHeight)")
        main = canvases.nth(max(range(len(areas)), key=areas.__getitem__))
        self.assert_size(main, "the circuitsvis attention pattern", min_px=50)
        before = self.canvas_data(main)
        thumbnails.nth(1).click()
        wait_for_change(lambda: self.canvas_data(main), before, 30, "circuitsvis pattern after clicking the second head")

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
def open_notebook(lab, chromium):
    """Open a solution notebook in a fresh page: with its saved outputs, or stripped with its widget cells run live."""
    contexts = []

    def open_(name: str, live: bool = False) -> Notebook:
        context = chromium.new_context(viewport=VIEWPORT)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        ran, state = [], None
        if live:
            ran = cells_needed(SOLUTIONS / name, WIDGET_CELLS[name], always=(SETUP,))
            page.goto(lab.lab_url(lab.copy_solution(name)))
            state = run_cells(page, ran, NOTEBOOK_TIMEOUT_S)
        else:
            page.goto(lab.lab_url(lab.copy_with_outputs(name)))
            wait_for_kernel(page)  # saved widget views are restored once the kernel is up
        # A wide notebook for screenshots: hide the side bars.
        page.evaluate("() => { window.jupyterapp.shell.collapseLeft(); window.jupyterapp.shell.collapseRight(); }")
        return Notebook(page, name, ran, state)

    yield open_
    for context in contexts:
        context.close()
    lab.shutdown_kernels()


def test_cells_needed_follows_names_through_cells(tmp_path):
    """The live runs rely on this slice: every cell that binds or changes what the target reads, and no other."""
    import nbformat

    cells = [
        "import mikit\nS = mikit.setup()",                       # 0: always
        "model = load()\nother = 1",                             # 1: binds model
        "slow = train(model)",                                    # 2: not read by the target
        "if S.mode == 'offline':\n    data = a()\nelse:\n    data = b(model)",  # 3: binds data on both paths
        "model.reset_hooks()",                                    # 4: changes model in place
        "def helper(x):\n    return x + offset",                  # 5: reads offset when called
        "offset = 2\nfor i in range(3):\n    table = i",         # 6: binds offset; table only maybe
        "table = {}",                                             # 7: binds table surely
        "table['k'] = 1",                                         # 8: changes table
        "%time widget(model, data, helper(1), table)",            # 9: the target (a magic line)
        "after = widget(model)",                                  # 10: after the target
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    path = tmp_path / "slice.ipynb"
    nbformat.write(notebook, path)
    assert cells_needed(path, ["%time widget("], always=("mikit.setup(",)) == [0, 1, 3, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize("name", NAMES)
def test_saved_figures_render(open_notebook, screenshot_dir, name):
    nb = open_notebook(name)
    assert saved_count(nb.source, PLOTLY_MIME) + saved_count(nb.source, "image/png") > 0, f"{name} keeps no figures."
    nb.assert_saved_outputs()
    if name in SAVED_SCREENSHOTS:
        snippet, frame = SAVED_SCREENSHOTS[name]
        figure = nb.cell(snippet).locator(frame).first
        nb.assert_size(figure, f"the figure of {snippet!r}", min_px=200)
        nb.screenshot(figure, screenshot_dir)


def test_01_induction_heads_widgets_live(open_notebook, screenshot_dir):
    nb = open_notebook("01_induction_heads.ipynb", live=True)
    nb.assert_live()

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


def test_04_sparse_autoencoders_widgets_live(open_notebook, screenshot_dir):
    nb = open_notebook("04_sparse_autoencoders.ipynb", live=True)
    nb.assert_live()
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

    def all_changed():  # the three parts redraw one after another: None until every one of them has changed
        now = state()
        return now if all(a != b for a, b in zip(now, before)) else None

    after_button = wait_for_change(all_changed, before, 60, "contexts, logit effects and histogram after 'next strongest'")
    assert note.input_value() == "", "the note box should be empty for a latent without an explanation."

    picker.fill(first_latent)
    picker.press("Enter")
    wait_for_change(state, after_button, 60, "dashboard after typing a latent number")
    wait_for_change(note.input_value, "", 30, "the note kept for the first latent")
    assert note.input_value() == "fires on the word music"
    nb.screenshot(cell.locator(".widget-vbox").first, screenshot_dir)


def test_05_cross_attention_widgets_live(open_notebook, screenshot_dir):
    nb = open_notebook("05_cross_attention.ipynb", live=True)
    nb.assert_live()
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
