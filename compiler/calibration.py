"""Sample data for the compiler: calibration for static quantization, held-out inputs for fidelity.

A data file is ``.npy`` (one array, for a single-input model) or ``.npz`` (one array per model
input, keyed by input name; a single array under any key is accepted for a single-input model).
Each array holds samples along axis 0: ``[N, *input_shape]``, or ``[N, *input_shape[1:]]`` when the
model's batch dimension is 1 (so digits of shape ``[N, 64]`` feed an input of shape ``[1, 64]``).
An optional ``labels`` array of N integers lets the report show accuracy next to fidelity.

Without data the compiler still runs: fidelity is then measured on random inputs (flagged
``synthetic`` everywhere it is reported), and static quantization, which needs real activation
ranges, is skipped.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.agent.package import TensorSpec
from edgefleet.compiler.errors import CalibrationError
from edgefleet.compiler.inference import Feed

log = logging.getLogger(__name__)

LABELS = "labels"
SYNTHETIC_SAMPLES = 64
"""How many random samples stand in for missing data: enough for stable cosine and SQNR figures."""


@dataclass(frozen=True)
class Dataset:
    """Samples for a model: ``arrays[name]`` has shape ``[N, *spec.shape]`` for each input spec."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    synthetic: bool = False
    source: str = ""

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def feeds(self) -> Iterator[Feed]:
        """One feed per sample, each array in its input's exact shape."""
        for i in range(len(self)):
            yield {name: arr[i] for name, arr in self.arrays.items()}

    def take(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            arrays={k: v[idx] for k, v in self.arrays.items()},
            labels=None if self.labels is None else self.labels[idx],
            synthetic=self.synthetic,
            source=self.source,
        )

    def describe(self) -> dict[str, object]:
        """What the report says about this data."""
        return {"samples": len(self), "synthetic": self.synthetic, "source": self.source, "labels": self.labels is not None}


def load_dataset(path: Path | str, specs: Sequence[TensorSpec]) -> Dataset:
    """Read ``path`` and check it against the model's input ``specs``; CalibrationError says what does not fit."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise CalibrationError("no such data file", path=where)
    try:
        if path.suffix == ".npy":
            raw = {"": np.load(path, allow_pickle=False)}
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        else:
            raise CalibrationError("unknown data format; save samples with numpy as .npz (one array per input name) or .npy", path=where)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"not a readable numpy file ({exc}); write it with np.savez or np.save", path=where) from None
    labels = raw.pop(LABELS, None)
    arrays = _match_inputs(raw, specs, where=where)
    n = {len(a) for a in arrays.values()}
    if len(n) != 1:
        counts = {k: len(a) for k, a in arrays.items()}
        raise CalibrationError(f"inputs have different sample counts {counts}; every array needs the same N along axis 0", path=where)
    count = n.pop()
    if count == 0:
        raise CalibrationError("the data holds no samples", path=where)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (count,) or labels.dtype.kind not in "iu":
            raise CalibrationError(
                f"'labels' must be {count} integers (one class index per sample), got shape {list(labels.shape)} {labels.dtype}",
                path=where,
            )
    return Dataset(arrays=arrays, labels=labels, source=where)


def _match_inputs(raw: dict[str, np.ndarray], specs: Sequence[TensorSpec], *, where: str) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
    if len(specs) == 1 and names[0] not in raw and len(raw) == 1:
        # A single unnamed array (np.save, or np.savez(path, x)) feeds a single-input model.
        raw = {names[0]: next(iter(raw.values()))}
    missing = [n for n in names if n not in raw]
    if missing:
        found = [k or "<.npy array>" for k in raw]
        raise CalibrationError(
            f"the model's inputs are {names} but the file has arrays {found}; "
            f"save them by input name, e.g. np.savez(path, **{{{names[0]!r}: samples}})",
            path=where,
        )
    extra = sorted(set(raw) - set(names))
    if extra:
        log.warning("%s: ignoring arrays %s: they match no model input (inputs: %s)", where, extra, names)
    return {s.name: _conform(raw[s.name], s, where=where) for s in specs}


def _conform(arr: np.ndarray, spec: TensorSpec, *, where: str) -> np.ndarray:
    shape = tuple(spec.shape)
    if arr.shape[1:] == shape:
        samples = arr
    elif shape and shape[0] == 1 and arr.shape[1:] == shape[1:]:
        samples = arr.reshape((len(arr), *shape))
    else:
        accepted = f"[N, {', '.join(map(str, shape))}]"
        if shape and shape[0] == 1:
            accepted += f" or [N, {', '.join(map(str, shape[1:]))}]"
        raise CalibrationError(
            f"array {spec.name!r} has shape {list(arr.shape)} but input {spec.name!r} is {list(shape)}; "
            f"expected samples along axis 0: {accepted}",
            path=where,
        )
    want = np.dtype(spec.dtype)
    if samples.dtype != want:
        # float64 samples for a float32 input are common (numpy's default) and safe to narrow; ints for floats are not.
        if samples.dtype.kind != want.kind and not (samples.dtype.kind in "iu" and want.kind in "iu"):
            raise CalibrationError(
                f"array {spec.name!r} has dtype {samples.dtype} but input {spec.name!r} takes {want}; convert it with .astype({want.name!r})",
                path=where,
            )
        samples = samples.astype(want)
    return np.ascontiguousarray(samples)


def split(data: Dataset, *, holdout: float = 0.25, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split into (calibration, held-out evaluation) samples, deterministically.

    Fidelity measured on the calibration samples themselves would flatter static quantization
    (its ranges were fitted to exactly those activations), hence the held-out part.
    """
    n = len(data)
    if n < 2:
        raise CalibrationError(
            f"{n} sample is too few to both calibrate and evaluate; provide at least 2 (a few hundred is better)",
            path=data.source,
        )
    n_eval = min(n - 1, max(1, round(n * holdout)))
    order = np.random.default_rng(seed).permutation(n)
    return data.take(np.sort(order[n_eval:])), data.take(np.sort(order[:n_eval]))


def synthetic(specs: Sequence[TensorSpec], *, count: int = SYNTHETIC_SAMPLES, seed: int = 0) -> Dataset:
    """Random inputs for when no data was given: standard normal floats, small non-negative integers.

    Integers stay in [0, 10) because integer inputs are usually indices (tokens, classes) and a
    random large index would make the model fail rather than measure it.
    """
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for s in specs:
        dtype = np.dtype(s.dtype)
        shape = (count, *s.shape)
        if dtype.kind == "f":
            arrays[s.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            arrays[s.name] = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[s.name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            raise CalibrationError(f"cannot make random samples for input {s.name!r} of dtype {dtype}; pass --calibration data")
    return Dataset(arrays=arrays, synthetic=True, source=f"random (seed {seed})")
