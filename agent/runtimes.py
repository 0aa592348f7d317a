"""Inference runtimes behind one small interface: load a model file, feed arrays, get arrays.

onnxruntime runs ``.onnx`` packages; LiteRT (``ai-edge-litert``) runs ``.tflite``, with the older
``tflite-runtime`` wheel as the fallback import on Raspberry Pi images that still ship it.
Runtimes are imported only when a model of their kind is loaded, so a device pays the memory of
the one runtime it uses.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgefleet.agent.errors import RuntimeLoadError

if TYPE_CHECKING:  # numpy is imported by the runtimes themselves, only once a model is loaded
    import numpy as np


class LoadedModel(Protocol):
    runtime: str
    version: str
    threads: int
    delegate: str  # the kernels that run it, reported with each benchmark

    def input_names(self) -> list[str]: ...

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def available() -> dict[str, str]:
    """Runtime name -> version, for every runtime importable here (reported in the device state)."""
    found: dict[str, str] = {}
    for runtime, dists in (("onnxruntime", ["onnxruntime"]), ("litert", ["ai-edge-litert", "tflite-runtime"])):
        for dist in dists:
            try:
                found[runtime] = f"{dist} {importlib.metadata.version(dist)}"
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def load(path: Path, runtime: str, *, threads: int = 0) -> LoadedModel:
    """Load ``path`` in ``runtime`` ("onnxruntime" or "litert"). ``threads=0`` lets the runtime choose."""
    if runtime == "onnxruntime":
        return _OnnxModel(path, threads)
    if runtime == "litert":
        return _LiteRTModel(path, threads)
    raise RuntimeLoadError(f"runtime {runtime!r} cannot run on this device (known here: onnxruntime, litert)")


@dataclass
class _OnnxModel:
    path: Path
    threads: int
    runtime: str = "onnxruntime"
    delegate: str = "cpu"  # the CPUExecutionProvider, the only provider the agent asks for

    def __post_init__(self) -> None:
        try:
            ort = importlib.import_module("onnxruntime")
        except ImportError:
            raise RuntimeLoadError("onnxruntime is not installed; install it with: pip install 'edgefleet[agent,onnx]'") from None
        self.version = ort.__version__
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad models
            raise RuntimeLoadError(f"onnxruntime cannot load {self.path.name}: {exc}") from None
        self.threads = self.threads or options.intra_op_num_threads

    def input_names(self) -> list[str]:
        return [i.name for i in self._session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._session.run(None, feeds))


@dataclass
class _LiteRTModel:
    path: Path
    threads: int
    runtime: str = "litert"
    delegate: str = "xnnpack"  # LiteRT applies its XNNPACK delegate by default to CPU float and int8 kernels

    def __post_init__(self) -> None:
        interpreter_cls, self.version = _litert_interpreter()
        try:
            self._interp: Any = interpreter_cls(model_path=str(self.path), num_threads=self.threads or None)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeLoadError(f"LiteRT cannot load {self.path.name}: {exc}") from None
        self._inputs = {d["name"]: d["index"] for d in self._interp.get_input_details()}
        self._outputs = [d["index"] for d in self._interp.get_output_details()]

    def input_names(self) -> list[str]:
        return list(self._inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, value in feeds.items():
            self._interp.set_tensor(self._inputs[name], value)
        self._interp.invoke()
        return [self._interp.get_tensor(i) for i in self._outputs]


def _litert_interpreter() -> tuple[Any, str]:
    for module, dist in (("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter", "tflite-runtime")):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        return mod.Interpreter, f"{dist} {importlib.metadata.version(dist)}"
    raise RuntimeLoadError(
        "no TFLite runtime is installed; install it with: pip install 'edgefleet[agent,tflite]' "
        "(or tflite-runtime on older Raspberry Pi OS images)"
    )
