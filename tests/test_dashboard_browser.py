"""The dashboard in a real headless Chromium, served by a real uvicorn: what only a browser shows.

The page must render the fleet table, its script must update a value live after a benchmark is
recorded in the store, and the device page must draw its charts. Chromium is the system's
(Debian package ``chromium``); without it these tests fail, naming the package, rather than skip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.deploy.dashboard.sample import benchmark, device_state
from edgefleet.deploy.dashboard.screenshots import (
    PAGES,
    launch_chromium,
    serve,
    take_screenshots,
)
from edgefleet.deploy.store import TelemetryStore

PI4 = "raspberry-pi-4"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        with launch_chromium() as b:
            yield b
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TelemetryStore]:
    with TelemetryStore(tmp_path / "fleet.db") as s:
        now = time.time()
        s.record_state(device_state("pi-a", PI4, package_id="kws@2:raspberry-pi-4", ts=now))
        s.record_state(device_state("sim-b", "raspberry-pi-5", simulated=True, ts=now))
        for k, p50 in enumerate((12.0, 11.0, 10.0)):
            s.record_benchmark(benchmark("pi-a", PI4, "kws@2:raspberry-pi-4", p50=p50, watts=4.0 + k / 10,
                                         ts=now - 300 + k * 100, temperature=50.0 + k))
        yield s


def test_the_fleet_table_renders_and_updates_live(browser: Any, store: TelemetryStore, tmp_path: Path) -> None:
    errors: list[str] = []
    with serve(store, poll_seconds=0.5) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 600})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(base + "/devices")
        rows = page.locator("#fleet tbody tr")
        assert rows.count() == 2
        assert page.locator('#fleet tr[data-id="pi-a"] td[data-key="device"] a').inner_text() == "pi-a"
        assert page.locator('#fleet tr[data-id="pi-a"] td[data-key="p90_ms"]').inner_text() == "12.0"
        assert page.locator('#fleet tr[data-id="sim-b"] td[data-key="simulated"]').inner_text() == "yes"
        p90 = page.locator('#fleet tr[data-id="sim-b"] td[data-key="p90_ms"]')
        assert p90.inner_text() == "-"
        page.wait_for_selector("#live.ok", timeout=10_000)  # the script polls its JSON twin

        store.record_benchmark(benchmark("sim-b", "raspberry-pi-5", "kws@2:raspberry-pi-5", p50=7.0, watts=6.0,
                                         ts=time.time(), simulated=True))
        page.wait_for_function(
            """() => document.querySelector('#fleet tr[data-id="sim-b"] td[data-key="p90_ms"]').textContent === '8.40'""",
            timeout=10_000)  # rebuilt by the script, formatted as the server formats it
        assert page.locator('#fleet tr[data-id="sim-b"] td[data-key="device"] a').get_attribute("href") == "/devices/sim-b"
        # A device that appears is added as a row, and the counts follow.
        store.record_state(device_state("pi-new", PI4, ts=time.time()))
        page.wait_for_selector('#fleet tr[data-id="pi-new"]', timeout=10_000)
        assert rows.count() == 3
        page.wait_for_function("""() => document.querySelector('[data-path="counts.total"]').textContent === '3'""",
                               timeout=10_000)
        assert page.locator('[data-path="counts.by_profile"]').inner_text() == f"{PI4} 2, raspberry-pi-5 1"
        shot = tmp_path / "devices.png"
        page.screenshot(path=str(shot))
        assert shot.read_bytes().startswith(PNG)
        page.close()
    assert errors == []


def test_the_device_page_draws_its_charts(browser: Any, store: TelemetryStore) -> None:
    errors: list[str] = []
    with serve(store, poll_seconds=0.5) as base:
        page = browser.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(base + "/devices/pi-a")
        page.wait_for_selector("svg.chart polyline")
        latency = page.locator('svg.chart[data-series="p50_ms,p90_ms,p99_ms"] polyline')
        assert latency.count() == 3
        assert len(latency.first.get_attribute("points").split()) == 3  # one point per benchmark
        assert page.locator('svg.chart[data-series="temperature_c"] polyline').count() == 1
        # A new benchmark adds a point without a reload.
        store.record_benchmark(benchmark("pi-a", PI4, "kws@2:raspberry-pi-4", p50=9.0, watts=4.5, ts=time.time()))
        page.wait_for_function(
            """() => document.querySelector('svg.chart[data-series="power_w"] polyline')
                     .getAttribute('points').trim().split(/\\s+/).length === 4""", timeout=10_000)
        assert page.locator('[data-path="device.p50_ms"]').inner_text() == "9.00"
        page.close()
    assert errors == []


def test_the_screenshot_script_writes_every_page(browser: Any, tmp_path: Path) -> None:
    written = take_screenshots(tmp_path, browser=browser)
    assert [p.name for p in written] == [name for name, _, _ in PAGES]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG) and 5_000 < len(data) < 400_000, (path, len(data))
