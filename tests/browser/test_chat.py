"""The chat sidebar in a real browser: JupyterLab from this venv, Debian's Chromium driven by
Playwright, the real embedded model (the 0.5B, pinned in tests/conftest.py).

One notebook holds a DataFrame of temperatures. The test runs its first cell, opens the qcoder
sidebar, asks for the mean temperature per city, waits for the answer to stream, clicks
Insert below, runs the inserted cell and reads the means in its output; the saved notebook
must carry the answer's provenance under the cell's ``qcoder`` metadata. Then it runs a
``%%qcoder`` cell in the same notebook and waits for the streamed box and the inserted cell.

Screenshots go to the test's tmp_path; with QCODER_SCREENSHOT=docs/chat.png set, one of the
lab with the panel is also copied there (a documentation run, not a test's side effect).
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
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
JUPYTER = Path(sys.prefix) / "bin" / "jupyter"

# the model runs on two cores that other work shares: minutes, not seconds
START_S = 180
ANSWER_S = 900
RUN_S = 180

DATA = """import pandas as pd

weather = pd.DataFrame({
    "city": ["Oslo", "Oslo", "Oslo", "Rome", "Rome", "Rome", "Lima", "Lima", "Lima"],
    "date": pd.to_datetime(["2024-01-05", "2024-02-05", "2024-03-05"] * 3),
    "temp": [2.0, 4.0, 6.0, 20.0, 22.0, 27.0, 15.0, 17.0, 19.0],
})
weather.head()"""
# mean temp per city: Lima 17.0, Oslo 4.0, Rome 23.0
MEANS = {"Lima": "17.0", "Oslo": "4.0", "Rome": "23.0"}
REQUEST = "the mean temp per city"
MAGIC_REQUEST = "the highest temp per city"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="/usr/bin/chromium is absent (apt-get install -y chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _labextension_installed() -> bool:
    from jupyter_core.paths import jupyter_path

    return any((Path(p) / "qcoder-ds" / "package.json").is_file()
               for p in jupyter_path("labextensions"))


class Lab:
    """`jupyter lab` in its own process group, with its config and data dirs in tmp."""

    def __init__(self, root: Path, home: Path, log: Path):
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        config = home / "config"
        (config / "labconfig").mkdir(parents=True)
        # no "receive Jupyter news?" toast over the panel
        (config / "labconfig" / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
        env = dict(os.environ)  # QCODER_MODEL (the 0.5B) reaches the server and its kernels
        env.update(JUPYTER_CONFIG_DIR=str(config), JUPYTER_DATA_DIR=str(home / "data"),
                   JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"))
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [str(JUPYTER), "lab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             "--ServerApp.allow_root=True"],
            env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyter lab exited ({self.proc.returncode}):\n"
                                     + self.tail())
            try:
                with urllib.request.urlopen(
                        f"{self.url}/api/status?token={self.token}", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"jupyter lab did not answer in {START_S} s:\n" + self.tail())

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}/{path}?token={self.token}", timeout=30) as r:
            return json.loads(r.read())

    def tail(self, n: int = 60) -> str:
        if not self._out.closed:
            self._out.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        """SIGTERM to the group: the server shuts its kernels down (they run in sessions of
        their own and also watch their parent); SIGKILL what is left after 30 s."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            except ProcessLookupError:
                pass
        self._out.close()


@pytest.fixture
def lab(tmp_path):
    assert _labextension_installed(), (
        "the qcoder-ds lab extension is not built and linked: run `make .venv/.jupyter-dev` "
        "(make test does it)")
    root = tmp_path / "work"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(DATA),
                nbformat.v4.new_code_cell("%load_ext qcoder_ds"),
                nbformat.v4.new_code_cell(f"%%qcoder\n{MAGIC_REQUEST}")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, root / "weather.ipynb")
    server = Lab(root, tmp_path / "home", tmp_path / "jupyter.log")
    try:
        server.wait()
        yield server, root
    finally:
        server.stop()
        print("---- jupyter lab log (tail) ----\n" + server.tail(120))


def _cell(page, index: int):
    return page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell").nth(index)


def _run_cell(page, index: int) -> None:
    cell = _cell(page, index)
    cell.locator(".jp-InputArea-editor").click()
    # run in place: Shift+Enter on the last cell would append an empty cell of its own
    page.keyboard.press("Control+Enter")


def _wait_executed(page, index: int, timeout_s: float) -> None:
    """Until the cell's prompt shows an execution count ([n]:, not [*]: or [ ]:)."""
    prompt = _cell(page, index).locator(".jp-InputArea-prompt")
    start = time.monotonic()
    again = True
    while time.monotonic() < start + timeout_s:
        text = prompt.inner_text().strip()
        if text.startswith("[") and text[1:-2].strip().isdigit():
            return
        if again and text == "[ ]:" and time.monotonic() > start + 20:
            _run_cell(page, index)  # the keypress reached the page before the editor did
            again = False
        time.sleep(0.5)
    raise AssertionError(f"cell {index} did not finish in {timeout_s} s (prompt {text!r})")


def _open_panel(page):
    """Show the qcoder sidebar (a click on an already current tab would collapse it)."""
    from playwright.sync_api import expect

    tab = page.locator(".jp-SideBar .lm-TabBar-tab[data-id='qcoder-chat']")
    expect(tab).to_be_visible(timeout=60_000)
    panel = page.locator("#qcoder-chat")
    if not panel.is_visible():
        tab.click()
    expect(panel).to_be_visible()
    return panel


def _shot(page, tmp_path: Path, name: str, shots: list[Path]) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    shots.append(path)
    return path


def test_chat_answers_inserts_and_runs_and_the_magic_streams(lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    server, root = lab
    # the server extension answers (enabled by the config the package installs)
    models = server.get("qcoder/models")
    assert any(m["name"] == models["current"] for m in models["models"]), models

    shots: list[Path] = []
    console: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(f"{server.url}/lab/tree/weather.ipynb?token={server.token}")

            # the notebook, its kernel, and the DataFrame
            expect(_cell(page, 0)).to_be_visible(timeout=START_S * 1000)
            expect(page.get_by_role("button", name="Python 3 (ipykernel) | Idle")).to_be_visible(
                timeout=START_S * 1000)  # the kernel is up (the status bar)
            _run_cell(page, 0)
            _wait_executed(page, 0, START_S + RUN_S)
            expect(_cell(page, 0).locator(".jp-OutputArea-output")).to_contain_text("Oslo")

            # the sidebar
            panel = _open_panel(page)
            expect(panel.locator(".jp-qcoder-notebook")).to_contain_text("weather.ipynb")
            expect(panel.locator(".jp-qcoder-model")).to_have_value(models["current"])

            # record every state the answer goes through, so the stream is seen even if fast
            page.evaluate("""() => {
                window.__qcoderSeen = new Set();
                const look = () => document.querySelectorAll(
                    '#qcoder-chat .jp-chat-rendered-message em').forEach(
                        e => window.__qcoderSeen.add(e.textContent));
                new MutationObserver(look).observe(document.body,
                    {subtree: true, childList: true, characterData: true});
            }""")

            # the active cell is the DataFrame's: the answer goes right below it
            _cell(page, 0).locator(".jp-InputPrompt").click()
            box = panel.locator(".jp-chat-input-container textarea:not([aria-hidden='true'])")
            box.click()
            box.fill(REQUEST)
            box.press("Enter")
            expect(panel.locator(".jp-chat-rendered-message").filter(has_text=REQUEST)
                   ).to_be_visible(timeout=30_000)

            insert = panel.locator(".jp-qcoder-insert")
            try:
                expect(insert).to_be_visible(timeout=ANSWER_S * 1000)
            except AssertionError:
                _shot(page, tmp_path, "no-answer", shots)
                raise
            seen = page.evaluate("() => [...window.__qcoderSeen]")
            assert "Writing…" in seen, f"the answer never streamed; states seen: {seen}"
            answer = panel.locator(".jp-chat-rendered-message").last
            expect(answer).to_contain_text("qcoder")
            expect(answer.locator("pre").first).to_contain_text("# qcoder (")
            expect(panel.locator(".jp-qcoder-problem")).to_have_count(0)
            _shot(page, tmp_path, "answer", shots)

            cells_before = page.locator(
                ".jp-NotebookPanel:visible .jp-Notebook .jp-Cell").count()
            insert.click()
            expect(page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell")
                   ).to_have_count(cells_before + 1)
            inserted = _cell(page, 1)
            expect(inserted.locator(".jp-InputArea-editor")).to_contain_text("# qcoder (")
            _run_cell(page, 1)
            _wait_executed(page, 1, RUN_S)
            out = inserted.locator(".jp-OutputArea-output")
            expect(out.first).to_be_visible()
            text = out.all_inner_texts()
            joined = "\n".join(text)
            for city, mean in MEANS.items():
                assert city in joined and mean in joined, (
                    f"the inserted cell's output lacks {city} {mean}:\n{joined}\n"
                    f"cell:\n{inserted.locator('.jp-InputArea-editor').inner_text()}")
            page.locator("#qcoder-chat").scroll_into_view_if_needed()
            lab_shot = _shot(page, tmp_path, "chat", shots)

            # the same notebook, the magic: its streamed box, then the cell it inserts
            n = page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell").count()
            _run_cell(page, 2)  # %load_ext qcoder_ds (the answer moved it down one)
            _wait_executed(page, 2, RUN_S)
            _run_cell(page, 3)  # %%qcoder the highest temp per city
            stream = _cell(page, 3).locator(".widget-html pre")
            expect(stream).to_be_visible(timeout=ANSWER_S * 1000)
            _wait_executed(page, 3, ANSWER_S)
            expect(stream).not_to_have_text("…")
            expect(page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell")
                   ).to_have_count(n + 1)
            expect(_cell(page, 4).locator(".jp-InputArea-editor")).to_contain_text("# qcoder (")
            _shot(page, tmp_path, "magic", shots)

            # provenance on the saved notebook: the chat's cell carries the done event's
            # metadata under "qcoder", as the magic's cells do
            page.keyboard.press("Control+s")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                saved = nbformat.read(root / "weather.ipynb", as_version=4)
                if len(saved.cells) == n + 1:
                    break
                time.sleep(0.5)
            chat_cell = saved.cells[1]
            assert chat_cell.source.startswith("# qcoder ("), chat_cell.source
            meta = chat_cell.metadata.get("qcoder")
            assert isinstance(meta, dict) and meta.get("model") == models["current"], (
                chat_cell.metadata)
            outputs = json.dumps(chat_cell.outputs)
            assert all(city in outputs for city in MEANS), outputs

            # the conversation is the server's: a reload shows it again
            page.reload()
            expect(_cell(page, 0)).to_be_visible(timeout=START_S * 1000)
            panel = _open_panel(page)
            # the request, and the answer whose cell header repeats it
            expect(panel.locator(".jp-chat-rendered-message").filter(has_text=REQUEST)
                   ).to_have_count(2, timeout=60_000)
            expect(panel.locator(".jp-qcoder-insert").last).to_be_visible()
        finally:
            browser.close()
            (tmp_path / "console.log").write_text("\n".join(console))

    target = os.environ.get("QCODER_SCREENSHOT")
    if target:
        dest = Path(target) if Path(target).is_absolute() else REPO / target
        shutil.copyfile(lab_shot, dest)
    errors = [c for c in console if c.startswith("pageerror") or "qcoder" in c.lower()
              and c.startswith("error")]
    assert not errors, errors
