"""Packages fetched over HTTP: a real Range-capable HTTP server in a thread, the fetcher, and a real agent process.

``http.server`` has no Range support, so ``RangeHandler`` adds the little that object storage
does: ``Range: bytes=N-`` answered with ``206`` and ``Content-Range``. The server can drop the
connection part-way through a response, once, to make the agent resume.
"""

from __future__ import annotations

import http.server
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest
from click.testing import CliRunner
from conftest import AgentProcess, Watcher, forget_device, make_package

from edgefleet.agent.errors import IntegrityError, TransportError
from edgefleet.agent.http_fetch import fetch_http
from edgefleet.agent.reconnect import Backoff
from edgefleet.agent.transfer import ChunkedDownload
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.push import clear_deployment, describe_package, push_package

CHUNK = 512  # small chunks, so that a tiny test package has several


class FileServer:
    """Serves files by name from memory, with Range requests; records each request's Range header."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        self.drop_after: int | None = None  # cut the next response after this many body bytes, once
        server = self

        class RangeHandler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = server.files.get(self.path.lstrip("/"))
                server.ranges.append(self.headers.get("Range"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.drop_after is not None:
                    payload, server.drop_after = payload[:server.drop_after], None
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as s:
        yield s


def _fast() -> Backoff:
    return Backoff(min_delay=0.01, max_delay=0.05)


# --- the fetcher, against the real server ----------------------------------------------------


def test_a_package_downloads_whole_and_verified(server: FileServer, signing_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    package = make_package(tmp_path / "p.efpkg", signing_key[0])
    _, ref = describe_package(package, CHUNK)
    server.files["p.efpkg"] = package.read_bytes()
    download = ChunkedDownload(tmp_path / "downloads", ref)
    fetch_http(download, server.url("p.efpkg"), stall_timeout=5, stop=threading.Event(), backoff=_fast())
    assert ref.chunk_count() > 2 and download.complete
    assert download.finish().read_bytes() == package.read_bytes()
    assert server.ranges == ["bytes=0-"]


def test_a_dropped_connection_resumes_from_the_last_good_chunk(server: FileServer, signing_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    package = make_package(tmp_path / "p.efpkg", signing_key[0])
    _, ref = describe_package(package, CHUNK)
    server.files["p.efpkg"] = package.read_bytes()
    server.drop_after = 2 * CHUNK + 100  # two whole chunks, then part of the third
    download = ChunkedDownload(tmp_path / "downloads", ref)
    fetch_http(download, server.url("p.efpkg"), stall_timeout=5, stop=threading.Event(), backoff=_fast())
    assert server.ranges == ["bytes=0-", f"bytes={2 * CHUNK}-"]
    assert download.finish().read_bytes() == package.read_bytes()


def test_a_corrupted_file_is_refused_naming_the_chunk(server: FileServer, signing_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    package = make_package(tmp_path / "p.efpkg", signing_key[0])
    _, ref = describe_package(package, CHUNK)
    data = bytearray(package.read_bytes())
    data[2 * CHUNK + 7] ^= 0xFF
    server.files["p.efpkg"] = bytes(data)
    download = ChunkedDownload(tmp_path / "downloads", ref)
    with pytest.raises(IntegrityError, match=r"chunk 2 of package tiny@1:raspberry-pi-4 downloaded from http://"):
        fetch_http(download, server.url("p.efpkg"), stall_timeout=5, stop=threading.Event(), backoff=_fast())
    assert download.have == {0, 1}, "the good chunks before it are kept"


def test_a_missing_file_is_a_transport_error_not_retried(server: FileServer, signing_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    package = make_package(tmp_path / "p.efpkg", signing_key[0])
    _, ref = describe_package(package, CHUNK)
    download = ChunkedDownload(tmp_path / "downloads", ref)
    with pytest.raises(TransportError, match="answered 404"):
        fetch_http(download, server.url("nothing.efpkg"), stall_timeout=5, stop=threading.Event(), backoff=_fast())
    assert len(server.ranges) == 1


# --- push --url and a real agent process -------------------------------------------------------


def test_push_url_publishes_the_url_and_no_chunks(broker_url: str, signing_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from edgefleet.deploy.cli import main

    device_id = f"test-url-{uuid.uuid4().hex[:8]}"
    package = make_package(tmp_path / "p.efpkg", signing_key[0], version=uuid.uuid4().hex[:8])
    _, ref = describe_package(package)
    watcher = Watcher(broker_url, f"edgefleet/v1/devices/{device_id}/#", f"edgefleet/v1/packages/{ref.sha256}/#")
    try:
        result = CliRunner().invoke(main, ["push", str(package), "--device", device_id, "--broker", broker_url,
                                           "--url", "https://cdn.example/m/p.efpkg"])
        assert result.exit_code == 0, result.output
        assert "url         https://cdn.example/m/p.efpkg" in result.output
        _, deployment = watcher.wait_for(lambda t, m: t.endswith("/deploy"), timeout=10)
        assert deployment["package"]["url"] == "https://cdn.example/m/p.efpkg"
        assert not [t for t, _ in watcher.messages if "/packages/" in t], "no chunks go through the broker"
    finally:
        watcher.close()
        clear_deployment(BrokerURL.parse(broker_url), device=device_id)
    bad = CliRunner().invoke(main, ["push", str(package), "--device", device_id, "--broker", broker_url,
                                    "--url", "ftp://cdn.example/p.efpkg"])
    assert bad.exit_code != 0 and "http:// or https://" in bad.output


def test_a_real_agent_installs_from_a_url_resumes_and_refuses_a_corrupted_file(  # type: ignore[no-untyped-def]
        server: FileServer, broker_url: str, signing_key, tmp_path: Path) -> None:
    device_id = f"test-url-{uuid.uuid4().hex[:8]}"
    url = BrokerURL.parse(broker_url)
    clear_deployment(url, device=device_id)
    watcher = Watcher(broker_url, f"edgefleet/v1/devices/{device_id}/#")
    agent = AgentProcess(broker_url, device_id, tmp_path / "data", signing_key[1],
                         extra=("--keep-versions", "0")).start()
    try:
        watcher.wait_for(lambda t, m: t.endswith("/state") and m["status"] == "online", timeout=30)

        def deploy(version: str, corrupt_at: int | None = None, drop_after: int | None = None) -> dict:  # type: ignore[type-arg]
            package = make_package(tmp_path / f"v{version}.efpkg", signing_key[0], version=version)
            body = bytearray(package.read_bytes())
            if corrupt_at is not None:
                body[corrupt_at] ^= 0x01
            server.files[f"v{version}.efpkg"] = bytes(body)
            server.drop_after = drop_after
            d = push_package(package, broker=url, device=device_id, chunk_size=CHUNK, url=server.url(f"v{version}.efpkg"))
            _, event = watcher.wait_for(lambda t, m: t.endswith("/events") and m["deployment_id"] == d.deployment_id
                                        and m["phase"] in ("done", "failed"), timeout=60)
            return event

        assert deploy("1")["phase"] == "done"
        _, report = watcher.wait_for(lambda t, m: t.endswith("/telemetry") and m["package_id"] == "tiny@1:raspberry-pi-4")
        assert report["delegate"] == "cpu"

        server.ranges.clear()
        assert deploy("2", drop_after=CHUNK + 10)["phase"] == "done"
        assert server.ranges == ["bytes=0-", f"bytes={CHUNK}-"], "the agent resumed with a Range request"
        assert "interrupted" in agent.log()

        event = deploy("3", corrupt_at=CHUNK * 3 + 1)
        assert event["phase"] == "failed" and "chunk 3 of package tiny@3:raspberry-pi-4" in event["error"]

        # --keep-versions 0: only the serving model (v2) is left on disk.
        packages = [d for d in (tmp_path / "data" / "packages").iterdir() if not d.name.startswith(".")]
        assert len(packages) == 1
        assert agent.alive()
    finally:
        agent.stop()
        watcher.close()
        forget_device(broker_url, device_id)
