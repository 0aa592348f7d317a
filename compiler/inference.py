"""Running an ONNX model with onnxruntime on a list of samples, as the compiler measures it.

One place builds sessions so that every measurement (fidelity, test vectors) runs the model the
same way a device will: the CPU execution provider with its default graph optimisations, which
fuse QDQ int8 models into int8 kernels. ``optimize=False`` runs the graph op by op instead; for a
QDQ model that is the quantization scheme's exact arithmetic in float, independent of the CPU's
int8 kernels (see ``packaging`` for why that matters). Models go in as protos, never as paths,
so nothing here touches the disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from edgefleet.compiler.errors import ModelError

# onnxruntime's exceptions share no base class but Exception; these are the ones a bad model or feed raises.
ORT_ERRORS: tuple[type[Exception], ...] = (
    _ort_state.Fail,
    _ort_state.InvalidArgument,
    _ort_state.InvalidGraph,
    _ort_state.InvalidProtobuf,
    _ort_state.NoSuchFile,
    _ort_state.NotImplemented,
    _ort_state.RuntimeException,
)

Feed = Mapping[str, np.ndarray]
"""One sample: input name -> array in the model's input shape."""


def session(model: onnx.ModelProto, *, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session for ``model``; a load failure becomes a ModelError naming the graph."""
    options = ort.SessionOptions()
    # onnxruntime warns about things we report ourselves (unused initializers, fallbacks); errors still show.
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as exc:
        raise ModelError(
            f"onnxruntime cannot load graph {model.graph.name!r}: {exc}; check the operators are in the default "
            "domain and the opset is one onnxruntime supports"
        ) from exc


def run(sess: ort.InferenceSession, feeds: Iterable[Feed], *, progress: bool = False, desc: str = "") -> list[np.ndarray]:
    """Run every sample and stack the results: one array per model output, samples along a new axis 0."""
    from tqdm import tqdm

    names = [o.name for o in sess.get_outputs()]
    per_output: list[list[np.ndarray]] = [[] for _ in names]
    for feed in tqdm(feeds, desc=desc, disable=not progress, leave=False, unit="sample"):
        try:
            outs = sess.run(names, dict(feed))
        except ORT_ERRORS as exc:
            raise ModelError(f"onnxruntime failed to run the model on a sample: {exc}") from exc
        for acc, out in zip(per_output, outs, strict=True):
            acc.append(np.asarray(out))
    return [np.stack(acc) for acc in per_output]


def run_model(
    model: onnx.ModelProto, feeds: Sequence[Feed], *, optimize: bool = True, progress: bool = False, desc: str = ""
) -> list[np.ndarray]:
    """``run`` on a fresh session for ``model``."""
    return run(session(model, optimize=optimize), feeds, progress=progress, desc=desc)
