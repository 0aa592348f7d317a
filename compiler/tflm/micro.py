"""Running a full-integer TFLite model in the TFLite Micro interpreter, and measuring its tensor arena.

    run(model_bytes, feeds)               -> TFLM's outputs, stacked per output as ``[N, ...]``
    measure_arena(model_bytes, feed)      -> the smallest arena, in bytes, TFLM runs the model in
    runs_in(model_bytes, feed, arena)     -> whether it runs in that arena

The interpreter is ``tflite_micro``'s Python wrapper around the C++ ``MicroInterpreter`` with the
reference kernels (no CMSIS-NN or esp-nn): the same arithmetic, bit for bit, that TFLM defines
for every int8 kernel. It is built with a ``RecordingMicroAllocator``; ``print_allocations``
writes what it allocated to the process's stderr (C++ ``fprintf``), which is the only way the
wrapper exposes it, so ``measure_arena`` captures file descriptor 2 around that call and reads the
``Arena allocation total N bytes`` line: a lower bound, from which it bisects to the smallest arena
that works. Those tries run in a child process (``_probe.py``), because this TFLM build can crash
(SIGSEGV) instead of failing when the arena is a few bytes short.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.compiler.errors import CompileError
from edgefleet.compiler.inference import Feed

PROBE_ARENA_BYTES = 16 * 1024 * 1024
"""The arena the first, measuring run gets: generous, since host memory is cheap; grown if too small."""
MAX_PROBE_ARENA_BYTES = 512 * 1024 * 1024
ARENA_GRANULE = 16
"""Arena sizes are measured to 16 bytes, TFLM's own alignment of arena allocations."""
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


class TFLMError(CompileError):
    """TFLite Micro cannot load, allocate or run the model (an op it lacks, a tensor type it does not take)."""


def interpreter(model_bytes: bytes, arena_size: int) -> Any:
    """A TFLM interpreter for ``model_bytes`` with an arena of ``arena_size`` bytes; TFLMError if it cannot load."""
    from tflite_micro.python.tflite_micro import runtime

    with _captured_stderr() as log:
        try:
            return runtime.Interpreter.from_bytes(bytes(model_bytes), arena_size=arena_size)
        except (RuntimeError, ValueError) as exc:
            error = exc
    raise TFLMError(f"TFLite Micro cannot load the model with a {arena_size}-byte arena: {error}{log.tail()}")


def run(model_bytes: bytes, feeds: Sequence[Feed], *, arena_size: int = PROBE_ARENA_BYTES) -> list[np.ndarray]:
    """TFLM's outputs for ``feeds`` (integer arrays keyed by input name, in the model's input order).

    ``arena_size`` must be ample: TFLM may crash the process, rather than fail, in an arena a few
    bytes short of what it needs. ``runs_in`` tries a tight size safely.
    """
    it = interpreter(model_bytes, arena_size)
    count = output_count(model_bytes)
    stacked: list[list[np.ndarray]] = [[] for _ in range(count)]
    for feed in feeds:
        for acc, out in zip(stacked, _invoke(it, feed, count), strict=True):
            acc.append(out)
    return [np.stack(acc) for acc in stacked]


def measure_arena(model_bytes: bytes, feed: Feed) -> int:
    """The smallest tensor arena, in bytes, in which TFLM loads, allocates and runs ``model_bytes`` on ``feed``.

    ``print_allocations`` reports what stays allocated after ``AllocateTensors``; preparing the
    kernels needs a little more for a moment (temporary tensors, the memory planner's own
    scratch), so that report is only a lower bound. The answer is found by bisection between it
    and an arena that worked, each step a fresh interpreter: the arena the device actually needs.
    """
    size = PROBE_ARENA_BYTES
    while True:
        try:
            it = interpreter(model_bytes, size)
            _invoke(it, feed)
            break
        except TFLMError:
            if size >= MAX_PROBE_ARENA_BYTES:
                raise
            size *= 4
    with _captured_stderr() as captured:
        it.print_allocations()
    match = _TOTAL.search(captured.text)
    if match is None:
        raise TFLMError(f"TFLite Micro did not report its arena allocation (got {captured.text[:200]!r})")
    low = int(match.group(1)) // ARENA_GRANULE * ARENA_GRANULE - ARENA_GRANULE  # what stays allocated: a lower bound
    return _bisect(model_bytes, feed, low, size)


def runs_in(model_bytes: bytes, feed: Feed, arena_size: int) -> bool:
    """Whether TFLM loads and runs the model in an arena of ``arena_size`` bytes (tried in a child process: a short
    arena can crash TFLM instead of failing)."""
    return _probe(model_bytes, feed, arena_size, arena_size) == arena_size


def _bisect(model_bytes: bytes, feed: Feed, low: int, high: int) -> int:
    """Smallest arena (to ARENA_GRANULE) in (low, high] that runs, probed in child processes (see ``_probe``)."""
    return _probe(model_bytes, feed, low, high)


def _probe(model_bytes: bytes, feed: Feed, low: int, high: int) -> int:
    """Run ``_probe.py`` until it finishes; with ``low == high`` returns ``high`` if that size runs, else -1."""
    single = low == high
    with tempfile.TemporaryDirectory(prefix="edgefleet-tflm-") as tmp:
        model_path, feed_path = Path(tmp) / "model.tflite", Path(tmp) / "feed.npz"
        model_path.write_bytes(model_bytes)
        np.savez(feed_path, **{f"in{i}": np.asarray(v) for i, v in enumerate(feed.values())})
        for _ in range(64):
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).with_name("_probe.py")), str(model_path), str(feed_path),
                 str(low), str(high), str(ARENA_GRANULE)],
                capture_output=True, text=True, timeout=600, check=False,
            )
            trying = None
            for line in proc.stdout.splitlines():
                word, _, number = line.partition(" ")
                if word == "try":
                    trying = int(number)
                elif word == "ok":
                    high, trying = int(number), None
                elif word == "fail":
                    low, trying = int(number), None
                    if single:
                        return -1
                elif word == "done":
                    return int(number)
            if single and trying is None and high == low and proc.returncode == 0:
                return high
            if single and trying is not None:
                return -1
            if trying is None:
                raise TFLMError(f"the TFLM arena probe stopped unexpectedly (exit {proc.returncode}): {proc.stderr[-500:]}")
            low = trying  # TFLM crashed in an arena this small: a device would too
        raise TFLMError("the TFLM arena probe crashed too often to measure the arena")


def output_count(model_bytes: bytes) -> int:
    """How many outputs the model's main subgraph has (the wrapper's ``get_output`` does not bound-check)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    return int(schema.Model.GetRootAsModel(bytearray(model_bytes), 0).Subgraphs(0).OutputsLength())


def _invoke(it: Any, feed: Feed, outputs: int | None = None) -> list[np.ndarray]:
    values = list(feed.values())
    with _captured_stderr() as log:
        try:
            for index, value in enumerate(values):
                detail = it.get_input_details(index)
                it.set_input(np.ascontiguousarray(value, dtype=detail["dtype"]).reshape(detail["shape"]), index)
            it.invoke()
            error = None
        except (RuntimeError, ValueError) as exc:
            error = exc
    if error is not None:
        raise TFLMError(f"TFLite Micro cannot run the model: {error}{log.tail()}")
    return [np.array(it.get_output(i), copy=True) for i in range(outputs or 1)]


class _Captured:
    text = ""

    def tail(self) -> str:
        """The last lines TFLM logged (which op failed, and why), for an error message."""
        lines = [line for line in self.text.splitlines() if line.strip()][-3:]
        return f" (TFLM: {' / '.join(lines)})" if lines else ""


@contextlib.contextmanager
def _captured_stderr() -> Iterator[_Captured]:
    """What C++ code writes to file descriptor 2 while the block runs."""
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.text = tmp.read().decode(errors="replace")
