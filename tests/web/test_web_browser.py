"""``cxr web`` in a real browser: Debian's chromium driven by Playwright (never `playwright
install`). Log in, upload a film from the sample and see the overlay and the call; open a
finished job, its report and its CSV; a file named like an XSS payload shows as text and no
dialog fires; no page breaks its own Content-Security-Policy.

``CXR_WEB_SCREENSHOTS=DIR`` also saves the screenshots the README shows (1280 px and phone width).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.conftest import SAMPLE_FILM, TOKEN, XSS_NAME

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update",
]  # fmt: skip
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = os.environ.get("CXR_WEB_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Tab:
    """A page that records every dialog and every Content-Security-Policy complaint."""

    def __init__(self, browser, base_url: str, viewport: dict[str, int]) -> None:
        self.context = browser.new_context(base_url=base_url, viewport=viewport, accept_downloads=True)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.csp_errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("console", self._console)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message) -> None:
        if "Content Security Policy" in message.text:
            self.csp_errors.append(message.text)

    def login(self, path: str = "/") -> None:
        self.page.goto(path)
        assert "/login" in self.page.url
        self.page.fill("#token", TOKEN)
        with self.page.expect_navigation():
            self.page.click("form.card button[type=submit]")
        assert "/login" not in self.page.url, self.page.content()

    def shot(self, name: str) -> None:
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=True)

    def clean(self) -> None:
        assert self.dialogs == [], f"a script ran: {self.dialogs}"
        assert self.csp_errors == [], self.csp_errors
        self.context.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280px", "phone"])
def test_upload_a_film_and_see_the_call_and_the_overlay(web_server, browser, viewport):
    tab = Tab(browser, web_server.url, viewport)
    page = tab.page
    tab.login("/")
    page.set_input_files("#file", str(SAMPLE_FILM))
    page.select_option("#model", "cxr@production")
    page.click("form.card button[type=submit]")
    page.wait_for_selector("#overlay")
    # The overlay is drawn on the decoded film: the 384 px sample reduced by the contract's decode
    # rule (twice the model's input side), exactly the pixels the model saw.
    from cxr.core.imaging import decode_image

    side = 2 * 64  # the sample model's input is 64 px
    decoded = decode_image(SAMPLE_FILM.read_bytes(), max_bytes=1 << 26, max_pixels=10**8, target_side=side)
    width = decoded.pixels.shape[1]
    assert width < decoded.width  # reduced: the film is larger than twice the input
    assert page.eval_on_selector("#overlay", "img => img.complete && img.naturalWidth") == width
    assert page.inner_text("#label") in {"covid", "normal", "pneumonia"}
    assert page.is_visible("#research-use") and "Research use only" in page.inner_text("#research-use")
    assert "shift percentile" in page.inner_text("#shift")
    table = page.inner_text("#probabilities")
    assert "covid" in table and "at ≥" in table  # the operating-point decision
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]  # no sideways scroll
    tab.shot(f"web-upload-{viewport['width']}.png")

    # An uploaded file's name is shown as text, never run.
    page.goto("/")
    page.set_input_files("#file", files=[{"name": XSS_NAME, "mimeType": "image/jpeg",
                                          "buffer": SAMPLE_FILM.read_bytes()}])  # fmt: skip
    page.click("form.card button[type=submit]")
    page.wait_for_selector("#overlay")
    assert page.inner_text("#result h2") == XSS_NAME
    assert page.locator("img[src=x]").count() == 0
    tab.clean()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280px", "phone"])
def test_a_finished_job_its_failures_report_and_csv(web_server, browser, viewport):
    tab = Tab(browser, web_server.url, viewport)
    page = tab.page
    tab.login("/jobs")
    page.click(f"a[href='/jobs/{web_server.job_id}']")
    page.wait_for_selector("#failures")
    assert page.inner_text("#status") == "finished"
    failures = page.inner_text("#failures")
    assert XSS_NAME in failures and "not a recognised image" in failures
    assert page.locator("img[src=x]").count() == 0
    tab.shot(f"web-job-{viewport['width']}.png")

    with page.expect_download() as download:
        page.click("#csv-link")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("uri,sha256,outcome,label") and len(lines) == 8

    with page.expect_navigation():
        page.click("#report-link")
    assert page.url.endswith(f"/jobs/{web_server.job_id}/report")
    text = page.inner_text("body")
    assert web_server.job_id in text and "Research use only" in text
    assert page.locator("img[src=x]").count() == 0
    tab.shot(f"web-report-{viewport['width']}.png")
    tab.clean()


def test_models_page_shows_aliases_and_intervals(web_server, browser):
    tab = Tab(browser, web_server.url, DESKTOP)
    tab.login("/models")
    text = tab.page.inner_text("main")
    assert "production → 1" in text and "95 % CI" in text and "macro_f1" in text
    tab.shot("web-models-1280.png")
    tab.clean()


def test_logging_out_ends_the_session(web_server, browser):
    tab = Tab(browser, web_server.url, DESKTOP)
    tab.login("/jobs")
    cookie = next(c for c in tab.context.cookies() if c["name"] == "cxr_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    with tab.page.expect_navigation():
        tab.page.click("form.logout button")
    assert "/login" in tab.page.url
    tab.page.goto("/jobs")
    assert "/login" in tab.page.url
    tab.clean()
