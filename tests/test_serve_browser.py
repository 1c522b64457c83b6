"""The web chat in a headless browser: Debian's Chromium driven by Playwright (never a downloaded
browser). It loads the page from a `pythia serve` child, sends a message, sees the reply stream
in with every token shaded by its probability, and the top-5 alternatives on hover; nothing is
fetched from anywhere but the server. A screenshot lands in the test's temporary folder.
Skipped without Playwright's Python package or a system Chromium.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

from serve_process import FIXTURES, serving  # noqa: E402


def chromium() -> str | None:
    """The system Chromium's binary (Debian's /usr/bin/chromium is a shell wrapper around it)."""
    for path in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if path and Path(path).is_file():
            return path
    return None


@pytest.mark.skipif(chromium() is None, reason="no system Chromium")
def test_the_page_streams_a_reply_shaded_by_probability_with_alternatives_on_hover(tmp_path):
    with serving("--model", str(FIXTURES / "smollm2"), "--quiet") as s, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            seen = []
            page.on("request", lambda r: seen.append(r.url))
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(s.url + "/")
            sync_api.expect(page.locator("#model")).to_have_text("smollm2", timeout=20_000)
            page.click("#toggle-settings")
            page.fill("#max_tokens", "24")
            page.fill("#temperature", "0")
            page.fill("#input", "What is the capital of France?")
            page.press("#input", "Enter")
            reply = page.locator(".msg.assistant").last
            sync_api.expect(reply).to_have_attribute("data-done", "1", timeout=30_000)
            assert page.locator(".msg.user").last.inner_text() == "What is the capital of France?"
            tokens = reply.locator("span.tok")
            n = tokens.count()
            assert n >= 5 and reply.inner_text() == "".join(tokens.all_inner_texts())
            shades = tokens.evaluate_all("(s) => s.map((t) => [getComputedStyle(t).backgroundColor, Number(t.dataset.p)])")
            for colour, p in shades:
                alpha = float(colour.rsplit(",", 1)[1].rstrip(")"))
                assert 0 < p <= 1 and math.isclose(alpha, 0.05 + 0.6 * (1 - p), abs_tol=2e-3)
            tokens.nth(1).hover()
            popup = page.locator("#popup")
            sync_api.expect(popup).to_be_visible()
            assert popup.locator("tr").count() >= 1 + 5 and "%" in popup.inner_text()
            page.screenshot(path=str(tmp_path / "chat.png"))
            assert (tmp_path / "chat.png").stat().st_size > 1000
            assert not errors, errors
            assert seen and all(u.startswith(s.url) for u in seen), seen
        finally:
            browser.close()
