"""The web dashboard in-process: every page and its JSON twin over a real SQLite store.

The store is filled through its real API (``record_state`` / ``record_benchmark`` /
``record_event`` with ``agent.messages`` objects, rollouts through ``rollout_runner.save_state``),
and the app is called through Starlette's TestClient. ``test_dashboard_browser.py`` covers what
only a browser shows; the last test here runs the real command with ``--collect`` against Mosquitto.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import click
import httpx
import pytest
from conftest import free_port, publish, wait_for_port

from edgefleet.agent import topics
from edgefleet.agent.messages import DeploymentEvent, Phase
from edgefleet.deploy.cli import main
from edgefleet.deploy.dashboard.app import create_app, format_value
from edgefleet.deploy.dashboard.sample import benchmark, device_state, fill_sample_fleet
from edgefleet.deploy.dashboard.views import device_view, fleet_view
from edgefleet.deploy.dashboard_cli import dashboard
from edgefleet.deploy.store import TelemetryStore

with warnings.catch_warnings():  # Starlette 1.x asks for `httpx2`, which is not released; httpx works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0
PI4 = "raspberry-pi-4"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TelemetryStore]:
    with TelemetryStore(tmp_path / "fleet.db") as s:
        yield s


@pytest.fixture
def client(store: TelemetryStore) -> TestClient:
    return TestClient(create_app(store, clock=lambda: NOW))


def _two_devices(store: TelemetryStore) -> None:
    store.record_state(device_state("pi-a", PI4, package_id="kws@2:raspberry-pi-4", ts=NOW - 10))
    store.record_state(device_state("sim-b", "raspberry-pi-5", simulated=True, ts=NOW - 20))
    # pi-a: an old benchmark of v1, then two of the v2 it runs now; the newest v2 one is "current".
    store.record_benchmark(benchmark("pi-a", PI4, "kws@1:raspberry-pi-4", p50=20.0, watts=4.0, ts=NOW - 300))
    store.record_benchmark(benchmark("pi-a", PI4, "kws@2:raspberry-pi-4", p50=12.0, watts=4.0, ts=NOW - 200,
                                     temperature=51.5))
    store.record_benchmark(benchmark("pi-a", PI4, "kws@2:raspberry-pi-4", p50=10.0, watts=5.0, ts=NOW - 100))


# --- the fleet -------------------------------------------------------------------------------


def test_the_fleet_json_has_every_device_with_its_status_model_and_current_figures(
        store: TelemetryStore, client: TestClient) -> None:
    _two_devices(store)
    data = client.get("/devices.json").json()
    assert [d["device"] for d in data["devices"]] == ["pi-a", "sim-b"]
    a, b = data["devices"]
    assert (a["status"], a["profile"], a["simulated"], a["model"], a["model_version"]) == (
        "online", PI4, False, "kws@2", "2")
    assert a["last_seen"] == NOW - 10 and a["last_seen_ago"] == "10s ago"
    assert a["p50_ms"] == 10.0 and a["power_w"] == 5.0 and a["benchmarked_at"] == NOW - 100  # the newest v2 report
    assert (b["simulated"], b["model"], b["p50_ms"]) == (True, None, None)
    assert data["counts"] == {"total": 2, "by_status": {"online": 2},
                              "by_profile": {PI4: 1, "raspberry-pi-5": 1}}
    assert data == fleet_view(store, now=NOW)  # the twin is the view, nothing added


def test_the_fleet_page_renders_the_same_rows(store: TelemetryStore, client: TestClient) -> None:
    _two_devices(store)
    page = client.get("/devices")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'data-json="/devices.json"' in html
    row = re.search(r'<tr data-id="pi-a">(.*?)</tr>', html, re.DOTALL)
    assert row is not None
    assert '<a href="/devices/pi-a">pi-a</a>' in row.group(1)
    assert '<span class="badge online">online</span>' in row.group(1)
    assert ">kws@2<" in row.group(1) and ">10.0<" in row.group(1)
    assert format_value(NOW - 10, "time") in row.group(1)
    sim = re.search(r'<tr data-id="sim-b">(.*?)</tr>', html, re.DOTALL)
    assert sim is not None and '<td data-key="simulated">yes</td>' in sim.group(1)


def test_an_empty_store_says_how_to_fill_it(client: TestClient) -> None:
    assert client.get("/devices.json").json()["devices"] == []
    assert "edgefleet dashboard --collect" in client.get("/devices").text
    assert "No benchmarks yet" in client.get("/models").text
    assert "No rollouts yet" in client.get("/rollouts").text


def test_the_json_twin_shows_a_benchmark_recorded_after_the_app_started(
        store: TelemetryStore, client: TestClient) -> None:
    _two_devices(store)
    assert client.get("/devices.json").json()["devices"][1]["p90_ms"] is None
    store.record_benchmark(benchmark("sim-b", "raspberry-pi-5", "kws@2:raspberry-pi-5", p50=7.0, watts=6.0,
                                     ts=NOW - 1, simulated=True))
    assert client.get("/devices.json").json()["devices"][1]["p90_ms"] == pytest.approx(8.4)
    assert client.get("/devices.json").headers["cache-control"] == "no-store"


def test_device_ids_are_escaped_in_html(store: TelemetryStore, client: TestClient) -> None:
    store.record_state(device_state("pi-a", PI4, ts=NOW).model_copy(update={"groups": ["<script>x</script>"]}))
    html = client.get("/devices/pi-a").text
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html


def test_root_redirects_to_the_fleet(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"] == "/devices"


# --- one device ------------------------------------------------------------------------------


def test_the_device_json_has_its_series_oldest_first_and_its_events(store: TelemetryStore, client: TestClient) -> None:
    _two_devices(store)
    store.record_event(DeploymentEvent(device_id="pi-a", deployment_id="d1", package_id="kws@2:raspberry-pi-4",
                                       phase=Phase.DONE, ts=NOW - 250))
    store.record_event(DeploymentEvent(device_id="sim-b", deployment_id="d2", package_id="x", phase=Phase.FAILED,
                                       error="boom", ts=NOW - 240))
    data = client.get("/devices/pi-a.json").json()
    assert data == device_view(store, "pi-a", now=NOW)
    assert data["device"]["device"] == "pi-a" and data["device"]["p50_ms"] == 10.0
    series = data["series"]
    assert [p["ts"] for p in series] == [NOW - 300, NOW - 200, NOW - 100]
    assert [p["package_id"] for p in series] == ["kws@1:raspberry-pi-4"] + ["kws@2:raspberry-pi-4"] * 2
    assert series[1]["p90_ms"] == pytest.approx(14.4) and series[1]["p99_ms"] == pytest.approx(18.0)
    assert [p["temperature_c"] for p in series] == [None, 51.5, None]
    assert series[2]["energy_mj"] == pytest.approx(5.0 * 10.5)
    assert [(e["deployment_id"], e["phase"]) for e in data["events"]] == [("d1", "done")]


def test_the_device_page_has_the_charts_and_the_benchmark_table(store: TelemetryStore, client: TestClient) -> None:
    _two_devices(store)
    html = client.get("/devices/pi-a").text
    assert 'data-json="/devices/pi-a.json"' in html
    for series in ("p50_ms,p90_ms,p99_ms", "power_w", "energy_mj", "temperature_c"):
        assert f'data-series="{series}"' in html
    table = re.search(r'<table id="benchmarks".*?</table>', html, re.DOTALL)
    assert table is not None
    times = re.findall(r'<td data-key="ts">([^<]*)</td>', table.group(0))
    assert times == [format_value(NOW - t, "time") for t in (100, 200, 300)]  # newest first
    assert ">51.5<" in table.group(0)


def test_an_unknown_device_is_a_404_on_both_twins(client: TestClient) -> None:
    page = client.get("/devices/nope")
    assert page.status_code == 404 and "no device &#39;nope&#39;" in page.text
    twin = client.get("/devices/nope.json")
    assert twin.status_code == 404 and twin.json()["error"].startswith("no device 'nope' in ")
    assert client.get("/nothing.json").json() == {"error": "Not Found"}


# --- models ----------------------------------------------------------------------------------


def test_models_groups_the_latest_benchmark_per_device_by_model_and_package(
        store: TelemetryStore, client: TestClient) -> None:
    _two_devices(store)
    store.record_benchmark(benchmark("pi-b", PI4, "kws@2:raspberry-pi-4", p50=14.0, watts=4.0, ts=NOW - 50))
    store.record_benchmark(benchmark("sim-b", "raspberry-pi-5", "kws@2:raspberry-pi-5", p50=6.0, watts=6.0,
                                     ts=NOW - 40, simulated=True))
    data = client.get("/models.json").json()
    assert [m["model"] for m in data["models"]] == ["kws@1", "kws@2"]
    v2 = data["models"][1]["packages"]
    assert [p["package_id"] for p in v2] == ["kws@2:raspberry-pi-4", "kws@2:raspberry-pi-5"]
    pi4 = v2[0]
    assert [d["device"] for d in pi4["devices"]] == ["pi-a", "pi-b"]
    assert [d["p50_ms"] for d in pi4["devices"]] == [10.0, 14.0]  # pi-a's latest, not its older report
    assert pi4["median_p90_ms"] == pytest.approx((12.0 + 16.8) / 2)
    assert v2[1]["devices"][0]["simulated"] is True
    html = client.get("/models").text
    assert "<h2>kws@2</h2>" in html and "kws@2:raspberry-pi-5" in html
    assert [d["device"] for d in data["models"][1]["devices"]] == ["pi-a", "pi-b", "sim-b"]
    assert 'data-rows="models.1.packages"' in html and 'data-rows="models.1.devices"' in html


# --- rollouts --------------------------------------------------------------------------------


def test_rollouts_show_progress_per_wave_and_the_gates(store: TelemetryStore, client: TestClient) -> None:
    fill_sample_fleet(store, now=NOW)
    data = client.get("/rollouts.json").json()
    (r,) = data["rollouts"]
    assert (r["rollout"], r["status"], r["target"]) == ("demo-v2", "running", "group home")
    assert [(w["label"], w["status"], w["devices"], w["finished"], w["progress"]) for w in r["waves"]] == [
        ("canary", "passed", 1, 1, 1.0), ("50%", "passed", 1, 1, 1.0), ("100%", "deploying", 2, 1, 0.5)]
    assert r["waves"][2]["phases"] == {"deploying": 1, "done": 1}
    assert r["gates"] == {"max_failure_rate": 0.25, "max_p90_regression": 10.0, "max_energy_regression": 15.0}
    one = client.get("/rollouts/demo-v2.json").json()
    assert one == r
    assert {d["device"]: d["phase"] for d in one["devices"]} == {
        "pi4-garage": "done", "pi4-kitchen": "done", "pi5-lab": "done", "pi5-office": "deploying"}

    listing = client.get("/rollouts").text
    assert "Gates: failure rate at most 25%" in listing
    assert '<a href="/rollouts/demo-v2">demo-v2</a>' in listing and '<progress max="1" value="0.5"></progress> 50%' in listing
    page = client.get("/rollouts/demo-v2").text
    assert "failure rate at most 25%" in page and "p90 regression at most 10.0%" in page
    assert "energy regression at most 15.0%" in page
    assert client.get("/rollouts/nope").status_code == 404
    assert client.get("/rollouts/nope.json").status_code == 404


# --- the pages' assets -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/devices", "/devices/pi4-kitchen", "/models", "/rollouts", "/rollouts/demo-v2"])
def test_every_page_links_its_twin_and_assets_that_are_served(store: TelemetryStore, client: TestClient,
                                                              path: str) -> None:
    fill_sample_fleet(store, now=NOW)
    html = client.get(path).text
    assert f'data-json="{path}.json"' in html and client.get(f"{path}.json").status_code == 200
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert len(assets) == 2
    for asset in assets:
        assert client.get(asset).status_code == 200
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing from the internet


def test_the_script_mirrors_the_server_number_format() -> None:
    # Both sides show three significant figures or so; the browser test checks the script's output.
    script = (ROOT / "deploy" / "dashboard" / "static" / "dashboard.js").read_text()
    for fragment in ("m >= 100 ? x.toFixed(0)", "m >= 10 ? x.toFixed(1)", "m >= 1 ? x.toFixed(2)", "x.toFixed(3)"):
        assert fragment in script
    assert [format_value(x, "num") for x in (812.4, 45.21, 1.234, 0.0421)] == ["812", "45.2", "1.23", "0.042"]
    assert format_value({"done": 3, "failed": 1}, "counts") == "done 3, failed 1"
    assert [format_value(v) for v in (None, "", "x")] == ["-", "-", "x"]


# --- the command and its docs ------------------------------------------------------------------


def test_the_dashboard_command_and_every_option_are_documented() -> None:
    doc = (ROOT / "docs" / "dashboard.md").read_text()
    assert main.get_command(click.Context(main), "dashboard") is dashboard
    assert "edgefleet dashboard" in doc
    for param in dashboard.params:
        if isinstance(param, click.Option):
            assert param.help and any(opt in doc for opt in param.opts), f"docs/dashboard.md lacks {param.opts}"
    for route in ("/devices.json", "/devices/{id}.json", "/models.json", "/rollouts.json", "/rollouts/{id}.json",
                  "/metrics", "scrape_configs"):
        assert route in doc
    for png in re.findall(r"\((screenshots/[^)]+\.png)\)", doc):
        assert (ROOT / "docs" / png).is_file(), png


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    from click.testing import CliRunner

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = CliRunner().invoke(dashboard, ["--db", str(tmp_path / "fleet.db"), "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output


def test_dashboard_collect_serves_what_a_device_publishes(broker_url: str, tmp_path: Path) -> None:
    """The real command, with --collect, against Mosquitto: a state published appears in /devices.json."""
    port = free_port()
    device = f"dash-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "edgefleet"), "dashboard", "--db", str(tmp_path / "fleet.db"),
         "--port", str(port), "--broker", broker_url, "--collect"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, timeout=30)
        state = device_state(device, PI4, ts=time.time())
        deadline = time.monotonic() + 30
        seen: list[str] = []
        while time.monotonic() < deadline:
            publish(broker_url, topics.state(device), state.to_bytes())  # not retained: the shared broker stays clean
            seen = [d["device"] for d in httpx.get(f"http://127.0.0.1:{port}/devices.json").json()["devices"]]
            if device in seen:
                break
            time.sleep(0.5)
        assert device in seen
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert f'edgefleet_device_online{{device="{device}",profile="{PI4}",simulated="false"}} 1.0' in metrics
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode in (0, -15), out
    assert "collecting from" in out


def test_the_json_twins_are_plain_json(store: TelemetryStore, client: TestClient) -> None:
    fill_sample_fleet(store, now=NOW)
    for path in ("/devices.json", "/devices/pi5-lab.json", "/models.json", "/rollouts.json"):
        response = client.get(path)
        assert response.headers["content-type"] == "application/json"
        json.loads(response.text)
