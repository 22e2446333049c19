"""The browser harness of the page tests: headless Chromium driven through chromedriver
(selenium), opening pages from disk with the network disabled.

Chromium and its driver are Debian's ``chromium`` and ``chromium-driver`` (``make test``
installs them when missing). Nothing here is skipped: without them `start_browser` raises, so
a test that needs the browser fails.

Also a command, to make the README's screenshots from pages on disk::

    python -m tests.browser OUTPUT.png PAGE.html [OUTPUT.png PAGE.html ...]
"""

from __future__ import annotations

import base64
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

#: Flags Chromium needs here: as root, without a GPU, and with no connection of its own (this
#: machine's closed network refuses them).
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)
#: Every scheme a page could reach the network with.
BLOCKED_URLS = ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]
WINDOW = (1280, 900)


class BrowserMissing(RuntimeError):
    """Chromium or chromedriver is not installed."""


@dataclass
class Browser:
    """A running headless Chromium and its fresh profile directory."""

    driver: webdriver.Chrome
    profile: Path

    def close(self) -> None:
        """Stop the browser and remove its profile."""
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def start_browser() -> Browser:
    """Start headless Chromium with a fresh ``--user-data-dir``.

    Raises
    ------
    BrowserMissing
        When ``chromium`` or ``chromedriver`` is not on PATH.
    """
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        raise BrowserMissing(
            "headless Chromium is needed: apt-get install -y --no-install-recommends "
            "chromium chromium-driver (make test does it)"
        )
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths given: selenium does not look for (or download) a driver of its own.
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    return Browser(driver, profile)


def disable_network(driver: webdriver.Chrome) -> None:
    """Take the page's network away (DevTools protocol): offline, and every URL blocked."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0},
    )
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED_URLS})


@dataclass
class LoadedPage:
    """A page opened by `open_page`.

    Attributes
    ----------
    charts : str
        The page's chart state: ``drawn``, ``failed``, ``none`` (no chart) or ``pending``
        (still drawing when the wait ended).
    seconds : float
        From the navigation's start until every chart was drawn (or the page loaded, when it
        has no chart), as the browser measures it.
    console : list of dict
        Everything the page logged to its console.
    """

    charts: str
    seconds: float
    console: list[dict]

    @property
    def errors(self) -> list[dict]:
        """Console entries of level SEVERE (errors and uncaught exceptions)."""
        return [entry for entry in self.console if entry.get("level") == "SEVERE"]


def open_page(driver: webdriver.Chrome, path: Path, timeout: float = 60) -> LoadedPage:
    """Open ``path`` with the network disabled and wait until its charts are drawn.

    The wait is not a time limit on the page: ``timeout`` only bounds a page that never
    says it is done (its state then reads ``pending``).
    """
    driver.get_log("browser")  # drop what earlier pages logged
    disable_network(driver)
    driver.get(Path(path).resolve().as_uri())
    deadline = time.monotonic() + timeout
    state = driver.execute_script("return document.body.dataset.charts")
    while state == "pending" and time.monotonic() < deadline:
        time.sleep(0.02)
        state = driver.execute_script("return document.body.dataset.charts")
    seconds = driver.execute_script(
        "var n = performance.getEntriesByType('navigation')[0];"
        "return (performance.now() - n.startTime) / 1000;"
    )
    return LoadedPage(state, seconds, driver.get_log("browser"))


def requested_urls(driver: webdriver.Chrome) -> list[str]:
    """Every resource the open page asked for after the document itself."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; })"
    )


def chart_states(driver: webdriver.Chrome) -> dict[str, dict]:
    """For each chart section of the page: whether it has a view, its SVG, and its marks.

    Returns
    -------
    dict
        Chart name -> ``{"view": bool, "svg": bool, "marks": int, "width": float,
        "height": float}``, where ``marks`` counts the drawn mark items (bars, points, lines,
        rules) inside the chart's SVG.
    """
    return driver.execute_script(
        """
        var out = {};
        document.querySelectorAll('section.chart').forEach(function (section) {
          var view = section.querySelector('.view');
          var svg = view ? view.querySelector('svg') : null;
          var box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
          var marks = svg ? svg.querySelectorAll(
            'g.mark-rect path, g.mark-symbol path, g.mark-line path, g.mark-rule line').length : 0;
          out[section.dataset.chart] = {view: !!view, svg: !!svg, marks: marks,
                                        width: box.width, height: box.height};
        });
        return out;
        """
    )


def chart_data(driver: webdriver.Chrome, name: str) -> list[dict]:
    """The rows of chart ``name``'s data set, as its Vega view holds them."""
    return driver.execute_script(
        "return window.warehouseCharts[arguments[0]].data(arguments[0]).map("
        "function (row) { var copy = {}; Object.keys(row).forEach(function (k) {"
        "if (k !== 'Symbol(vega_id)') { copy[k] = row[k]; } }); return copy; });",
        name,
    )


def texts(driver: webdriver.Chrome, selector: str) -> list[str]:
    """The text content of every element matching ``selector``, in page order."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent)",
        selector,
    )


def values_by(driver: webdriver.Chrome, selector: str, *keys: str) -> dict:
    """The figures of the elements matching ``selector``: the ``data-value`` of each (or of
    the element inside it that has one), by the element's ``data-<key>`` attributes (one key:
    its value; several: a tuple)."""
    found = driver.execute_script(
        "var keys = arguments[1];"
        "return Array.from(document.querySelectorAll(arguments[0])).map(function (e) {"
        "var holder = e.dataset.value !== undefined ? e : e.querySelector('[data-value]');"
        "return [keys.map(k => e.dataset[k]), Number(holder.dataset.value)]; });",
        selector,
        list(keys),
    )
    return {(tuple(k) if len(k) > 1 else k[0]): value for k, value in found}


def hover_tooltip(driver: webdriver.Chrome, name: str) -> str:
    """Move the mouse onto the largest bar or point of chart ``name``; the tooltip's text
    (empty when no tooltip shows)."""
    section = driver.find_element(By.ID, f"chart-{name}")
    marks = section.find_elements(By.CSS_SELECTOR, "g.mark-rect path, g.mark-symbol path")
    if not marks:
        return ""
    mark = max(marks, key=lambda m: m.size["width"] * m.size["height"])
    ActionChains(driver).move_to_element(mark).perform()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = driver.execute_script(
            "var t = document.getElementById('vg-tooltip-element');"
            "return t && getComputedStyle(t).visibility !== 'hidden' ? t.innerText : '';"
        )
        if text:
            return text
        time.sleep(0.05)
    return ""


def screenshot(driver: webdriver.Chrome, page: Path, output: Path, width: int = 1100) -> Path:
    """Open ``page`` (network disabled) and save a PNG of the whole page at ``width`` pixels."""
    driver.set_window_size(width, WINDOW[1])
    loaded = open_page(driver, page)
    if loaded.charts not in ("drawn", "none"):
        raise RuntimeError(f"{page}: charts {loaded.charts}")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    output = Path(output)
    output.write_bytes(base64.b64decode(shot["data"]))
    driver.set_window_size(*WINDOW)
    return output


def main(argv: list[str]) -> int:
    """``python -m tests.browser OUTPUT.png PAGE.html ...``: screenshots of pages."""
    if not argv or len(argv) % 2:
        print(__doc__, file=sys.stderr)
        return 2
    browser = start_browser()
    try:
        for output, page in zip(argv[::2], argv[1::2], strict=True):
            print(screenshot(browser.driver, Path(page), Path(output)))
    finally:
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
