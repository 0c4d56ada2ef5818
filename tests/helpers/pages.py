"""HTML pages opened in Debian's chromium through Playwright (never a download), for the browser
tests: every request but file: and data: is refused and recorded, as are script errors and
dialogs. The ``browser`` and ``open_page`` fixtures (tests/conftest.py) hand out these pages."""

import io
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
EVIL = "<img src=x onerror=alert(1)>"


class Page:
    """A page opened from a file, with its script errors, dialogs and outside requests."""

    def __init__(self, browser, path: Path, color_scheme: str = "light"):
        self.context = browser.new_context(
            viewport={"width": 1280, "height": 800}, color_scheme=color_scheme
        )
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("dialog", self._dialog)
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("html[data-ready]", state="attached", timeout=10_000)

    def _route(self, route):
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            self.requests.append(url)
            route.abort()

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def check_clean(self) -> None:
        assert self.errors == []
        assert self.dialogs == []
        assert self.requests == []

    def close(self) -> None:
        self.context.close()


def assert_not_blank(png: bytes) -> None:
    """The screenshot shows something: many grey levels and some contrast."""
    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("L")
    assert len(image.getcolors(1 << 16) or range(1 << 16)) > 20
    assert ImageStat.Stat(image).stddev[0] > 8
