"""A person's path through the demo, in a real browser.

Headless Chromium (Debian's ``chromium`` package, driven by Playwright for Python over its own
protocol; Playwright never downloads a browser here) opens ``eventproxy demo``'s URL, logs in
through the hub's form, waits for the single-user server to start and JupyterLab to load,
creates a notebook and runs ``1+1`` in a kernel whose WebSocket goes through eventproxy's
in-process data plane, and sees ``2``. Screenshots are saved to ``test-artifacts/``:
``browser-e2e-login.png`` (the filled-in login form), ``browser-e2e.png`` (the notebook with
its output) and ``browser-e2e-failure.png`` when a step fails.

Every wait is bounded; the whole test takes well under two minutes. Without Chromium or
Playwright it fails in CI (``CI`` set) and skips elsewhere, with the install command.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from eventproxy.demo import is_running
from integration.browser import (
    ARTIFACTS,
    CHROMIUM_FLAGS,
    cmdline,
    require_chromium,
    running_demo,
    stop_demo,
)
from support import missing_service

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]

STEP = 30_000  # ms: one page step (navigation, a click's effect)
SPAWN = 90_000  # ms: log in -> single-user server started -> JupyterLab page
KERNEL = 60_000  # ms: kernel started and the cell's output shown


def test_login_start_lab_and_run_a_cell(tmp_path: Path) -> None:
    chromium = require_chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing_service("Playwright for Python is not installed: pip install playwright")
        raise  # unreachable: missing_service fails or skips

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "browser-e2e.png"
    login_shot = ARTIFACTS / "browser-e2e-login.png"
    failure_shot = ARTIFACTS / "browser-e2e-failure.png"
    for old in (screenshot, login_shot, failure_shot):
        old.unlink(missing_ok=True)

    with running_demo(tmp_path, users=("alice",)) as demo, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800},
        )
        sockets: list[str] = []
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(STEP)
        page.on("websocket", lambda ws: sockets.append(ws.url))
        try:
            page.goto(demo.url, timeout=STEP)
            page.wait_for_url(re.compile(r"/hub/login"), timeout=STEP)
            page.fill("#username_input", "alice")
            page.fill("#password_input", demo.password)
            page.screenshot(path=str(login_shot))
            page.click("#login_submit")

            # The hub starts alice's server (spawn-pending page), then sends the browser to it.
            page.wait_for_url(re.compile(r"/user/alice/lab"), timeout=SPAWN)
            notebook_card = page.locator('.jp-LauncherCard[data-category="Notebook"]').first
            notebook_card.wait_for(timeout=SPAWN)
            notebook_card.click()

            # The notebook is ready once its kernel is: typing earlier can lose keystrokes.
            idle = page.get_by_role("button", name=re.compile(r"\(ipykernel\) \| Idle$"))
            expect(idle.first).to_be_visible(timeout=KERNEL)
            editor = page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first
            editor.click()
            editor.press_sequentially("1+1")
            expect(editor).to_have_text("1+1", timeout=STEP)
            editor.press("Shift+Enter")

            output = page.locator(".jp-NotebookPanel .jp-OutputArea-output").first
            expect(output).to_have_text("2", timeout=KERNEL)
            expect(page.locator(".jp-NotebookPanel .jp-InputPrompt").first).to_have_text(
                "[1]:", timeout=STEP
            )
            page.screenshot(path=str(screenshot))
        except Exception:
            page.screenshot(path=str(failure_shot))
            raise
        finally:
            context.close()

        # The kernel's channels went through the proxy's public port, not to the server directly.
        kernel_sockets = [u for u in sockets if "/api/kernels/" in u and "/channels" in u]
        public = demo.url.replace("http://", "ws://", 1) + "user/alice/api/kernels/"
        assert kernel_sockets, sockets
        assert all(u.startswith(public) for u in kernel_sockets), (public, kernel_sockets)

        running = {pid: cmdline(pid) for pid in demo.tree()}
        assert any("ipykernel" in c for c in running.values()), running
        assert stop_demo(demo) == 0, demo.output()[-5000:]
        alive = {pid: cmdline(pid) for pid, st in demo.seen.items() if is_running(pid, st)}
        assert not alive, f"still running after the demo stopped: {alive}"
    assert screenshot.stat().st_size > 10_000
