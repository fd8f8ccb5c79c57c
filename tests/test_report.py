"""report.html: written by every run, rebuilt by `vision-lens report`, and checked in a real headless browser."""

from __future__ import annotations

import base64
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from vision_lens.cli import main

pytestmark = [pytest.mark.shared, pytest.mark.integration]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


class PageParts(HTMLParser):
    """Image sources, the rows of each metrics table, and the visible text of a page."""

    def __init__(self, page: str):
        super().__init__()
        self.images: list[str] = []
        self.table_rows: list[int] = []
        self.external: list[str] = []
        self.text: list[str] = []
        self._in_metrics_body = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("script", "link") and not (attrs.get("href") or "").startswith("data:"):
            self.external.append(tag)
        if tag == "table" and attrs.get("class") == "metrics":
            self.table_rows.append(0)
        if tag == "tbody" and self.table_rows:
            self._in_metrics_body = True
        if tag == "tr" and self._in_metrics_body:
            self.table_rows[-1] += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_metrics_body = False

    def handle_data(self, data):
        self.text.append(data)


def test_every_run_writes_a_self_contained_report(resnet20_run):
    page = (resnet20_run / "report.html").read_text()
    parts = PageParts(page)
    run = json.loads((resnet20_run / "run.json").read_text())
    assert len(parts.images) == 4 and all(src.startswith("data:image/png;base64,") for src in parts.images)
    # The figures the run saved as files are embedded as they are, not drawn a second time.
    for saved in ("layerwise.png", "transfer_penalty.png"):
        assert "data:image/png;base64," + base64.b64encode((resnet20_run / saved).read_bytes()).decode() in parts.images
    assert parts.external == []  # nothing to fetch: no scripts, stylesheets or remote images
    assert parts.table_rows == [10]
    text = " ".join(parts.text)
    for fact in (run["model"], run["weights_sha256"], run["data"], "2000 (train split)", "10000 (test split)",
                 run["vision_lens"], "layer3.2"):
        assert fact in text


def test_report_command_rebuilds_one_run_in_place_and_several_side_by_side(resnet20_run, resnet32_run, tmp_path):
    single = tmp_path / "resnet20"
    shutil.copytree(resnet20_run, single)
    for name in ("report.html", "layerwise.png", "transfer_penalty.png"):  # without the saved figures: drawn
        (single / name).unlink()
    assert main(["report", str(single)]) == 0
    parts = PageParts((single / "report.html").read_text())
    assert parts.table_rows == [10] and len(parts.images) == 4
    assert all(len(src) > 10_000 for src in parts.images)

    both = tmp_path / "both.html"
    assert main(["report", str(resnet20_run), str(resnet32_run), "--out", str(both)]) == 0
    parts = PageParts(both.read_text())
    assert parts.table_rows == [10, 16]
    assert len(parts.images) == 2 + 4 + 4  # the cross-run plots, then each run's own
    assert main(["report", str(tmp_path / "missing")]) == 2


def skip_or_fail(reason: str) -> None:
    """Skip where the browser stack is missing; fail instead when VISION_LENS_REQUIRE_BROWSER=1 (as in CI)."""
    if os.environ.get("VISION_LENS_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + ", and VISION_LENS_REQUIRE_BROWSER=1 makes it mandatory")
    pytest.skip(reason)


def test_report_renders_in_a_headless_browser(resnet20_run, resnet32_run, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("needs the playwright package (pip install playwright) to check report.html in a browser")
    if not CHROMIUM.is_file():
        skip_or_fail(f"needs Debian chromium at {CHROMIUM} (apt-get install chromium) to check report.html")
    page_path = tmp_path / "report.html"
    assert main(["report", str(resnet20_run), str(resnet32_run), "--out", str(page_path)]) == 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            problems: list[str] = []
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("requestfailed", lambda request: problems.append(f"failed request {request.url}"))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            rows = page.evaluate("[...document.querySelectorAll('table.metrics')].map(t => t.tBodies[0].rows.length)")
            first_blocks = page.evaluate(
                "[...document.querySelectorAll('table.metrics')[0].tBodies[0].rows].map(r => r.cells[0].innerText)"
            )
            shown = page.evaluate("[...document.images].every(i => i.getBoundingClientRect().width > 100)")
        finally:
            browser.close()
    assert problems == []
    assert len(images) == 10 and all(complete and width > 0 and height > 0 for complete, width, height in images)
    assert shown  # laid out at a readable size, not collapsed
    assert rows == [10, 16]
    assert first_blocks == json.loads((resnet20_run / "run.json").read_text())["blocks"]
