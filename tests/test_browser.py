"""The compare panel in a real JupyterLab, driven by headless Chromium (Playwright).

Starts JupyterLab on 127.0.0.1 (free port, token) over a temp copy of ``notebooks/``, opens
``02-compare-with-widgets.ipynb``, runs all cells through the Run menu, checks that the compare panel
renders (weight sliders, version list, table), drags a weight slider and checks that the best version
shown changes. Screenshots go to ``test-artifacts/browser/``. Needs Debian's ``chromium``
(``apt-get install -y chromium``) and ``pip install playwright`` (its own browser download is not used).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mvc_magics.notebook_runner import error_outputs, kernel_environment

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "02-compare-with-widgets.ipynb"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("MVC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
RUN_ALL_TIMEOUT_MS = 240_000

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: `apt-get install -y chromium` "
                    "(.ci/run does this) or set MVC_CHROMIUM to a Chromium binary")
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is missing: pip install -e '.[browser]'")
    pytest.importorskip("jupyterlab", reason="JupyterLab is missing: pip install -e '.[browser]'")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, token: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            request = urllib.request.Request(f"{url}/api/status", headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def lab(tmp_path, chromium):
    """JupyterLab on 127.0.0.1 serving a temp copy of notebooks/; yields (base url, token, root)."""
    root = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".mvc*", ".ipynb_checkpoints"))
    home = tmp_path / "jupyter"
    settings = home / "settings" / "@jupyterlab"
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "notebook-extension").mkdir(parents=True)
    # No news or update checks: the machine has no network, and a toast could cover the panel.
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"checkForUpdates": False, "fetchNews": "false"}))
    # Every cell stays rendered (no virtual scrolling), so prompts and outputs can be read anywhere.
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    env = kernel_environment({
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
    })
    port, token = free_port(), os.urandom(16).hex()
    log = tmp_path / "jupyterlab.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, token, process, log)
        yield url, token, root
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / "jupyterlab.log")


def shot(page, name: str, locator=None) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    (locator or page).screenshot(path=str(path))
    return path


def run_all_cells(page) -> None:
    """Run > Run All Cells, then wait until every code cell has run (prompt ``[N]``) and the kernel is idle."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=120_000)  # kernel started and connected
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    try:  # JupyterLab asks for a kernel when the session has none yet: take the notebook's own
        page.locator(".jp-Dialog .jp-mod-accept").click(timeout=3000)
    except PlaywrightTimeout:
        pass
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
            const idle = document.querySelector(".jp-Notebook-ExecutionIndicator[data-status='idle']");
            return idle && prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
        }""",
        timeout=RUN_ALL_TIMEOUT_MS, polling=1000,
    )


def drag_to_end(page, slider) -> None:
    """Drag a noUiSlider handle (ipywidgets 8) to the right end of its track with the mouse."""
    handle = slider.locator(".noUi-handle")
    track = slider.locator(".noUi-target")
    handle.scroll_into_view_if_needed()
    hbox, tbox = handle.bounding_box(), track.bounding_box()
    page.mouse.move(hbox["x"] + hbox["width"] / 2, hbox["y"] + hbox["height"] / 2)
    page.mouse.down()
    page.mouse.move(tbox["x"] + tbox["width"] * 0.5, hbox["y"] + hbox["height"] / 2, steps=5)
    page.mouse.move(tbox["x"] + tbox["width"] + 20, hbox["y"] + hbox["height"] / 2, steps=10)
    page.mouse.up()


def test_compare_panel_in_jupyterlab(lab, chromium):
    from playwright.sync_api import sync_playwright

    url, token, root = lab
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}", timeout=120_000)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            try:
                run_all_cells(page)
            finally:
                shot(page, "01-run-all.png")
            panel = page.locator(".mvc-compare-panel")
            panel.wait_for(timeout=60_000)
            panel.scroll_into_view_if_needed()
            shot(page, "02-after-run-all.png")
            shot(page, "03-panel.png", panel)

            sliders = panel.locator(".mvc-weight")
            assert sliders.count() >= 2, "one weight slider per metric"
            assert panel.locator(".mvc-versions select option").count() == 5, "the version list"
            assert panel.locator(".mvc-compare-table table").count() >= 1, "the comparison table"
            best = panel.locator(".mvc-best-id")
            before = best.inner_text()
            chart = panel.locator("img").first.get_attribute("src")
            assert "30 epochs" in panel.locator(".mvc-best").inner_text(), "by accuracy alone, the dense version"

            size = panel.locator(".mvc-weight", has=page.locator(".widget-label", has_text="size_kb"))
            readout = size.locator(".widget-readout")
            assert readout.inner_text().strip() in ("0", "0.0", "0.00")
            drag_to_end(page, size)
            page.wait_for_function(  # the HTML widget replaces its content: query it afresh each time
                "old => document.querySelector('.mvc-compare-panel .mvc-best-id')?.innerText.trim() !== old",
                arg=before.strip(), timeout=30_000)
            page.wait_for_function(  # the chart is redrawn too (a new PNG in the Image widget)
                "old => document.querySelector('.mvc-compare-panel img')?.getAttribute('src') !== old",
                arg=chart, timeout=30_000)
            page.wait_for_timeout(500)  # let the new image paint before the screenshot
            shot(page, "04-after-slider.png", panel)
            assert float(readout.inner_text()) == 5.0, "the slider went to its maximum"
            after = best.inner_text()
            assert after != before, "moving the size_kb weight changes the best version"
            assert "pruned" in panel.locator(".mvc-best").inner_text()
            assert after in panel.locator(".mvc-compare-table table tr", has_text="pruned").first.inner_text()

            panel.get_by_role("button", name="Check out best").click()
            panel.locator(".mvc-status", has_text="checked out").wait_for(timeout=30_000)
            assert after in panel.locator(".mvc-status").inner_text()
            shot(page, "05-checked-out.png", panel)

            page.keyboard.press("Control+s")
            page.wait_for_timeout(2000)
        finally:
            browser.close()

    import nbformat

    saved = nbformat.read(root / NOTEBOOK, as_version=4)
    assert not error_outputs(saved), error_outputs(saved)
