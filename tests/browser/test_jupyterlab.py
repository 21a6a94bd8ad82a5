"""The quickstart notebook in real JupyterLab, in headless Chromium, with every request that
leaves the machine blocked (an air-gapped Jupyter): its inline app renders and predicts."""

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser.chromium import BROWSER, CHROMIUM, FLAGS, LOOPBACK, free_port

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"
pytestmark = [
    *BROWSER,
    pytest.mark.skipif(
        shutil.which("jupyter-lab", path=str(Path(sys.executable).parent)) is None,
        reason="JupyterLab is not installed (pip install -e '.[test]' installs it)",
    ),
]


def _jupyterlab(root: Path, token: str) -> tuple[subprocess.Popen, str]:
    """JupyterLab on 127.0.0.1 serving ``root``; every cell rendered (not only those on
    screen) so the inline app's controls can be found and clicked."""
    settings = root.parent / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port = free_port()
    proc = subprocess.Popen(
        ["timeout", "400", sys.executable, "-m", "jupyter", "lab", "--no-browser",
         "--allow-root", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={settings.parents[1]}",
         f"--LabApp.workspaces_dir={root.parent / 'workspaces'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=root,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while proc.poll() is None and time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api?token={token}", timeout=2).close()
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("JupyterLab did not start within 90 s")


def test_notebook_runs_in_jupyterlab_air_gapped_and_its_app_predicts(tmp_path):
    from playwright.sync_api import sync_playwright

    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOK, root)
    proc, url = _jupyterlab(root, token="seamline-test")
    blocked: list[tuple[str, str]] = []  # (resource type, URL) of each request off the machine

    def only_loopback(route) -> None:
        request = route.request
        if request.url.startswith(LOOPBACK):
            route.continue_()
        else:
            blocked.append((request.resource_type, request.url))
            route.abort()

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", only_loopback)
            page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?token=seamline-test")
            page.locator(".jp-Notebook").wait_for(timeout=60_000)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()

            tab = page.locator(".bk-tab", has_text="Predict & optimise")
            tab.wait_for(timeout=240_000)  # every cell ran, the last one drew the app
            page.mouse.move(800, 500)
            page.mouse.wheel(0, 20_000)  # down to the app, as a reader scrolls
            page.wait_for_timeout(1000)
            tab.click()
            run = page.get_by_role("button", name="Run inference")
            run.wait_for(timeout=30_000)
            page.wait_for_timeout(1000)
            before_run = list(blocked)  # the app drawn and a section switched
            run.click()
            page.get_by_text("Predicted classes").first.wait_for(timeout=120_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(tmp_path / "jupyterlab.png"))
            cells = page.locator(".jp-InputArea-prompt").all_inner_texts()
            failed = page.locator(".jp-OutputArea-output[data-mime-type*='error']").count()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    assert errors == [] and failed == 0
    assert all("*" not in prompt for prompt in cells)  # no cell still running or queued
    scripts = [u for kind, u in blocked if kind != "stylesheet"]
    assert scripts == [], f"the notebook asked the internet for {scripts}"
    # Nothing at all until a run; then Panel restyles the components a run updates with its
    # CDN's stylesheets (blocked here; the page keeps working, those keep Panel's defaults).
    assert before_run == [], f"the page asked the internet for {before_run}"
