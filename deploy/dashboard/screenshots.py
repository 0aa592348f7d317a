"""Serve the dashboard on a free port and drive it with headless Chromium: the browser test's harness and the screenshot script.

    python -m edgefleet.deploy.dashboard.screenshots [OUT_DIR]   (default: docs/screenshots)

fills a temporary store with ``sample.fill_sample_fleet``, serves it with uvicorn in a thread,
and writes one PNG per page. It uses the system's Chromium (Debian package ``chromium``, or
``$EDGEFLEET_CHROMIUM``) through Playwright; it never downloads a browser. Playwright is a test
dependency, imported only by ``launch_chromium``.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from edgefleet.deploy.dashboard.app import create_app
from edgefleet.deploy.dashboard.sample import fill_sample_fleet
from edgefleet.deploy.store import TelemetryStore

CHROMIUM = os.environ.get("EDGEFLEET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}

# file name, path, what must be on the page before the shot
PAGES = (
    ("devices.png", "/devices", "#fleet tbody tr"),
    ("device.png", "/devices/pi4-kitchen", "svg.chart polyline"),
    ("models.png", "/models", "section.model table tbody tr"),
    ("rollouts.png", "/rollouts", "section.rollout table tbody tr"),
    ("rollout.png", "/rollouts/demo-v2", "#rollout-devices tbody tr"),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(store: TelemetryStore, *, poll_seconds: float = 3.0) -> Iterator[str]:
    """Run the dashboard over ``store`` with a real uvicorn in a thread; yields its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, poll_seconds=poll_seconds), host="127.0.0.1", port=port,
                                          log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the dashboard did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def launch_chromium() -> Iterator[Any]:
    """A headless Chromium browser (Playwright's ``Browser``) from the system's package."""
    if not Path(CHROMIUM).is_file():
        raise FileNotFoundError(
            f"no Chromium at {CHROMIUM}: install the Debian package `chromium` (apt-get install chromium), "
            "or point $EDGEFLEET_CHROMIUM at a Chromium binary"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def take_screenshots(out_dir: Path, *, browser: Any = None, now: float | None = None) -> list[Path]:
    """Screenshots of every page of the sample fleet, as small PNGs in ``out_dir``.

    ``browser`` is a Playwright ``Browser`` to use; without one, ``launch_chromium`` starts one.
    """
    if browser is None:
        with launch_chromium() as launched:
            return take_screenshots(out_dir, browser=launched, now=now)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp, TelemetryStore(Path(tmp) / "fleet.db") as store:
        fill_sample_fleet(store, now=time.time() if now is None else now)
        with serve(store) as base:
            page = browser.new_page(viewport=VIEWPORT)
            try:
                for name, path, ready in PAGES:
                    page.goto(base + path)
                    page.wait_for_selector(ready)
                    page.wait_for_selector("#live.ok")  # the first poll of the JSON twin has landed
                    target = out_dir / name
                    page.screenshot(path=str(target))
                    written.append(target)
            finally:
                page.close()
    return written


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path("docs/screenshots")
    for path in take_screenshots(out):
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
