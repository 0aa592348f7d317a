"""Fetching a package over HTTP(S) from object storage or a CDN, resumable, into a ``ChunkedDownload``.

A deployment whose ``PackageRef`` carries a ``url`` is fetched from there instead of from retained
MQTT chunks, which spares the broker for large fleets and large models. The body is streamed one
chunk (``PackageRef.chunk_size``) at a time, so memory stays at one chunk; each chunk is checked
against its sha256 from the deployment as it arrives and written by ``ChunkedDownload``, which
records it as good. After a dropped connection (or an agent restart) the next request asks for
``Range: bytes=N-`` from the first chunk not yet good. A server that ignores Range (``200 OK``)
sends the whole file again; the chunks already here are skipped, not rewritten.

The standard library's ``urllib`` does this: one GET with a Range header needs no HTTP client
dependency (``requests`` and its four dependencies would be megabytes of RSS and of SD card on
every device, for one request per deployment).
"""

from __future__ import annotations

import http.client
import logging
import re
import threading
import time
import urllib.error
import urllib.request

from edgefleet.agent.errors import IntegrityError, TransportError
from edgefleet.agent.reconnect import Backoff
from edgefleet.agent.transfer import ChunkedDownload

log = logging.getLogger(__name__)

# What a dropped or refused connection looks like from urllib; retried with backoff. An HTTP error
# status (404, 403) is an HTTPError, a URLError subclass, and is not retried: it will not go away.
_RETRYABLE = (http.client.HTTPException, ConnectionError, TimeoutError, OSError)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


def fetch_http(download: ChunkedDownload, url: str, *, stall_timeout: float, stop: threading.Event,
               logger: logging.Logger = log, backoff: Backoff | None = None) -> None:
    """Fill ``download`` from ``url``; returns when every chunk is good.

    Raises IntegrityError naming the chunk when the served bytes do not match the deployment's
    hashes, and TransportError when the server keeps failing for ``stall_timeout`` seconds
    without a new good chunk, answers with an HTTP error, or the agent is stopping.
    """
    if not url.startswith(("http://", "https://")):
        raise TransportError(f"package URL {url!r} is not http:// or https://")
    backoff = backoff or Backoff(min_delay=0.5, max_delay=30.0)
    last_progress = time.monotonic()
    while not download.complete:
        if stop.is_set():
            raise TransportError("the agent is stopping; the download resumes at the next start")
        before = len(download.have)
        try:
            _stream(download, url, stop)
        except urllib.error.HTTPError as exc:
            raise TransportError(f"{url} answered {exc.code} {exc.reason}; check the deployment's URL") from None
        except _RETRYABLE as exc:
            if len(download.have) > before:
                last_progress = time.monotonic()
                backoff.reset()
            if time.monotonic() - last_progress > stall_timeout:
                raise TransportError(f"no new chunk of package {download.ref.id} from {url} for "
                                     f"{stall_timeout:.0f} s ({download.progress:.0%} received): {exc}") from None
            delay = backoff.next()
            logger.warning("download of %s from %s interrupted at %.0f%% (%s); resuming in %.1f s",
                           download.ref.id, url, download.progress * 100, exc or type(exc).__name__, delay)
            stop.wait(delay)


def _stream(download: ChunkedDownload, url: str, stop: threading.Event) -> None:
    """One GET from the first missing chunk to the end, feeding each whole chunk to ``download``."""
    ref = download.ref
    first = min(i for i in range(ref.chunk_count()) if i not in download.have)
    request = urllib.request.Request(url, headers={"Range": f"bytes={first * ref.chunk_size}-"})
    with urllib.request.urlopen(request, timeout=30) as response:
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != first * ref.chunk_size:
                raise http.client.HTTPException(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
            index = first
        else:  # 200: the server ignored Range and sends the whole file
            index = 0
        while index < ref.chunk_count():
            if stop.is_set():
                return
            expected = min(ref.chunk_size, ref.size - index * ref.chunk_size)
            data = response.read(expected)
            if len(data) < expected:
                raise http.client.IncompleteRead(data, expected - len(data))
            if index not in download.have:
                try:
                    download.accept(index, data)
                except IntegrityError:
                    raise IntegrityError(
                        f"chunk {index} of package {ref.id} downloaded from {url} does not match the deployment's "
                        f"sha256 for it: the file there is not the package that was pushed; upload it again"
                    ) from None
            index += 1
