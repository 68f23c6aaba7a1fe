"""The web console at /console in a real headless Chromium (Debian's), driven by Playwright, against a real
``larimar serve`` with API keys: enter a key, pick a memory, add, page, search and forget facts, ask."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.processes import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/bootstrap.sh installs it)")
# the docs' screenshot is refreshed only on request (LARIMAR_SCREENSHOTS=1), so a test run leaves the tree clean
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "console.png"
KEY = "console-key-0123"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tmp_path_factory.mktemp("console"), [{"key": KEY, "role": "write", "memories": ["team-*"]}]) as url:
        yield url


def test_console_adds_pages_searches_asks_and_forgets_in_a_browser(base: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 820})
        page.goto(f"{base}/console/")
        expect(page.locator("#status")).to_contain_text("401")  # no key yet: the service says so
        page.fill("#api-key", KEY)
        page.click("#key-form button")
        expect(page.locator("#status")).to_have_text("0 memories")
        page.fill("#new-memory-name", "team-geo")
        page.click("#new-memory button")
        facts = ["The capital of France is Lyon.", "Ada Quill works as a pilot.", "Bo Rind plays the oboe."]
        for i, text in enumerate(facts):
            page.fill("#fact-text", text)
            page.click("#add-fact button")
            expect(page.locator("#fact-count")).to_have_text(f"({i + 1} facts)")
        expect(page.locator("#facts .fact-text")).to_have_text(facts)
        expect(page.locator("#memories button")).to_have_text(["team-geo (3)"])
        page.fill("#search-text", "Who flies aeroplanes?")
        page.click("#search button")
        expect(page.locator("#facts .fact-text").first).to_have_text("Ada Quill works as a pilot.")
        page.fill("#prompt", "What is the capital of France?")
        page.click("#ask button")
        expect(page.locator("#answer")).to_contain_text("Lyon")
        expect(page.locator("#in-scope")).to_have_text("yes")
        expect(page.locator("#used li").first).to_contain_text("The capital of France is Lyon.")
        expect(page.locator("#timings")).to_contain_text("generate")
        shot = SCREENSHOT if os.environ.get("LARIMAR_SCREENSHOTS") == "1" else tmp_path / "console.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        page.fill("#search-text", "")
        page.click("#search button")
        page.locator("#facts tr", has_text="Bo Rind").locator("button.forget").click()
        expect(page.locator("#fact-count")).to_have_text("(2 facts)")
        expect(page.locator("#facts .fact-text")).to_have_text(facts[:2])
        # a memory outside the key's reach: the service's 403 is shown, nothing is written
        page.fill("#new-memory-name", "other")
        page.click("#new-memory button")
        page.fill("#fact-text", "Ice is hot.")
        page.click("#add-fact button")
        expect(page.locator("#status")).to_contain_text("403")
        browser.close()
