"""The dashboard with a larger fleet: labels in the fleet table, pages of 100, filters by label and status.

A real SQLite store filled through its API, the app through Starlette's TestClient.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.deploy.dashboard.app import create_app, format_value
from edgefleet.deploy.dashboard.sample import benchmark, device_state
from edgefleet.deploy.dashboard.views import PAGE_SIZE, fleet_view, page_of
from edgefleet.deploy.store import TelemetryStore

with warnings.catch_warnings():  # Starlette 1.x asks for `httpx2`, which is not released; httpx works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

NOW = 1_800_000_000.0
PI4 = "raspberry-pi-4"
COUNT = 230


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TelemetryStore]:
    with TelemetryStore(tmp_path / "fleet.db") as s:
        messages = []
        for i in range(COUNT):
            state = device_state(f"d{i:03d}", PI4, ts=NOW - 5)
            labels = {"site": "north" if i % 2 else "south", "rack": str(i % 3)}
            messages.append(state.model_copy(update={"labels": labels, "status": "offline" if i % 10 == 0 else "online"}))
            messages.append(benchmark(f"d{i:03d}", PI4, state.model.package_id if state.model else "x@1:" + PI4,
                                      p50=1.0 + i, watts=4.0, ts=NOW - 50))
        s.record_many(messages)
        yield s


@pytest.fixture
def client(store: TelemetryStore) -> TestClient:
    return TestClient(create_app(store, clock=lambda: NOW))


def test_the_fleet_table_pages_and_counts_every_device(store: TelemetryStore, client: TestClient) -> None:
    first = client.get("/devices.json").json()
    assert len(first["devices"]) == PAGE_SIZE == 100 and first["devices"][0]["device"] == "d000"
    assert first["page"] == {"offset": 0, "limit": 100, "total": COUNT, "shown": 100, "first": 1, "last": 100}
    assert first["counts"]["total"] == COUNT and first["counts"]["by_status"] == {"offline": 23, "online": 207}
    assert first["devices"][1]["labels"] == {"site": "north", "rack": "1"} and first["devices"][1]["p50_ms"] == 2.0
    last = client.get("/devices.json?offset=200").json()
    assert [d["device"] for d in last["devices"]][:2] == ["d200", "d201"] and last["page"]["shown"] == 30
    assert len(client.get("/devices.json?limit=0").json()["devices"]) == COUNT
    assert client.get("/devices.json").json() == fleet_view(store, now=NOW)

    html = client.get("/devices?offset=100").text
    assert "Showing <span data-path=\"page.first\">101</span>" in html and 'href="/devices?offset=200"' in html
    assert 'href="/devices?offset=0"' in html and 'data-json="/devices.json?offset=100"' in html
    row = re.search(r'<tr data-id="d101">(.*?)</tr>', html, re.DOTALL)
    assert row is not None and '<td data-key="labels">rack=2 site=north</td>' in row.group(1)


def test_the_fleet_table_filters_by_labels_and_status(client: TestClient) -> None:
    data = client.get("/devices.json?label=site=north&label=rack=1&status=online&limit=0").json()
    ids = [d["device"] for d in data["devices"]]
    assert ids and all(int(i[1:]) % 2 == 1 and int(i[1:]) % 3 == 1 and int(i[1:]) % 10 for i in ids)
    assert data["filter"] == {"labels": {"site": "north", "rack": "1"}, "status": "online"}
    assert data["counts"]["total"] == len(ids) == data["page"]["total"]
    html = client.get("/devices?label=site=north&label=rack=1").text
    assert "Only devices with rack=1 site=north" in html
    assert 'href="/devices?label=site%3Dnorth&amp;label=rack%3D1&amp;offset=0&amp;limit=0"' not in html  # one page
    assert "No device matches." in client.get("/devices?label=site=east").text

    for query, why in (("label=site", "KEY=VALUE"), ("status=asleep", "must be one of online, offline"),
                       ("offset=-1", "whole number"), ("limit=ten", "whole number")):
        response = client.get(f"/devices.json?{query}")
        assert response.status_code == 400 and why in response.json()["error"], query


def test_pages_and_label_formats() -> None:
    assert page_of(5, 0, 100) == {"offset": 0, "limit": 100, "total": 5, "shown": 5, "first": 1, "last": 5}
    assert page_of(5, 10, 100)["shown"] == 0 and page_of(5, 10, 100)["first"] == 0
    assert page_of(250, 100, 0)["shown"] == 150
    assert format_value({"site": "a", "floor": "2"}, "labels") == "floor=2 site=a"
    assert format_value({}, "labels") == "-"
