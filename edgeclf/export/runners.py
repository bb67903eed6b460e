"""Runners: each exported artifact as a :class:`~edgeclf.evaluate.predictor.Predictor`.

:func:`load_runner` opens an artifact of a bundle and returns an object with
``classes``, ``spec`` and ``__call__(images) -> logits`` (decoded H x W x 3 uint8 RGB
images in, N x C float32 out), so metrics, calibration, robustness and the parity
gates run unchanged on every runtime. Every runner preprocesses with the reference
:func:`~edgeclf.preprocess.preprocess` and runs in chunks of :data:`CHUNK_SIZE`.
``run_tensor(x)`` runs an already preprocessed N x 3 x H x W float32 batch (for
latency benchmarks).

Runtime settings that matter for parity:

* **ONNX Runtime**: CPU execution provider unless ``providers`` asks for others
  (``"tensorrt"``, ``"cuda"``, ... or full provider names, optionally with options);
  see :func:`ort_providers`. ``threads`` sets ``intra_op_num_threads``.
* **OpenVINO**: compiled with ``{"INFERENCE_PRECISION_HINT": "f32"}`` for *every*
  artifact on CPU. OpenVINO otherwise picks bf16 on CPUs with AVX512-BF16/AMX
  (measured: fp32 IR max logit error 1.4e-2 with the default vs 1.7e-6 with f32).
  fp16 IRs hold fp16 *weights* only; on CPU they are decompressed and computed in
  f32 (the hint stays f32; the difference from fp32 is weight rounding alone). int8
  IRs run their quantised ops in int8 and the rest in f32. ``threads`` sets
  ``INFERENCE_NUM_THREADS``.
* **TorchScript**: ``torch.jit.load`` on CPU; ``threads`` sets torch's intra-op
  threads for the duration of each call.
* **TensorRT**: only where TensorRT and a CUDA GPU are present; the engine's build
  record is checked first (:func:`~edgeclf.export.tensorrt_export.check_engine_compatible`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeclf.errors import ConfigError
from edgeclf.export.formats import FORMATS, Artifact
from edgeclf.preprocess import PreprocessSpec, preprocess

__all__ = [
    "CHUNK_SIZE",
    "OnnxRuntimeRunner",
    "OpenVinoRunner",
    "Runner",
    "TensorRTRunner",
    "TorchScriptRunner",
    "load_runner",
    "ort_providers",
]

log = logging.getLogger("edgeclf.export")

CHUNK_SIZE = 32
OPENVINO_CPU_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}

_ORT_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
}

ProviderRequest = str | tuple[str, Mapping[str, Any]]


def ort_providers(requested: Sequence[ProviderRequest] | None, available: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """Resolve a provider request to ONNX Runtime's ``(name, options)`` list.

    ``requested`` entries are short names (``cpu``, ``cuda``, ``tensorrt``/``trt``,
    ``openvino``, ...), full provider names, or ``(name, options)`` pairs. ``None``
    means CPU only. The CUDA provider is inserted after TensorRT when available (ONNX
    Runtime's recommended order: subgraphs TensorRT cannot take run on CUDA, not
    CPU), and the CPU provider is always last as the final fallback.

    Raises:
        ConfigError: A requested provider is unknown or not in ``available``.
    """
    if not requested:
        return [("CPUExecutionProvider", {})]
    out: list[tuple[str, dict[str, Any]]] = []
    for entry in requested:
        name, opts = (entry, {}) if isinstance(entry, str) else (entry[0], dict(entry[1]))
        full = _ORT_ALIASES.get(name.lower(), name)
        if full not in available:
            hint = " (install onnxruntime-gpu)" if full in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else ""
            raise ConfigError(
                f"ONNX Runtime execution provider {full} is not available{hint}; this onnxruntime has: {', '.join(available)}"
            )
        if full not in (n for n, _ in out):
            out.append((full, opts))
    names = [n for n, _ in out]
    if "TensorrtExecutionProvider" in names and "CUDAExecutionProvider" not in names and ("CUDAExecutionProvider" in available):
        out.insert(names.index("TensorrtExecutionProvider") + 1, ("CUDAExecutionProvider", {}))
    if "CPUExecutionProvider" not in (n for n, _ in out):
        out.append(("CPUExecutionProvider", {}))
    return out


class Runner:
    """Base runner: reference preprocessing, chunked execution, float32 logits."""

    def __init__(self, path: Path, artifact: Artifact, spec: PreprocessSpec, classes: list[str]) -> None:
        self.path = path
        self.artifact = artifact
        self.spec = spec
        self.classes = list(classes)
        self.chunk_size = CHUNK_SIZE

    @property
    def name(self) -> str:
        """``format/precision`` (e.g. ``onnx/int8``)."""
        return f"{self.artifact.format}/{self.artifact.precision}"

    def run_tensor(self, x: np.ndarray) -> np.ndarray:
        """Logits of a preprocessed N x 3 x H x W float32 batch (no chunking)."""
        raise NotImplementedError

    def _checked(self, out: Any, n: int) -> np.ndarray:
        logits = np.array(out, dtype=np.float32, copy=True)  # never a view of a runtime's reused buffer
        if logits.shape != (n, len(self.classes)):
            raise ConfigError(
                f"{self.name} artifact returned logits of shape {logits.shape}, expected ({n}, {len(self.classes)}); "
                "the artifact and the class list do not match"
            )
        return logits

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Logits, shape (len(images), len(classes)), float32."""
        outs = []
        for i in range(0, len(images), self.chunk_size):
            x = np.stack([preprocess(im, self.spec) for im in images[i : i + self.chunk_size]])
            outs.append(self.run_tensor(np.ascontiguousarray(x, dtype=np.float32)))
        return np.concatenate(outs) if outs else np.zeros((0, len(self.classes)), np.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.name!r}, {self.name})"


class OnnxRuntimeRunner(Runner):
    """An ONNX model (fp32 or QDQ int8) in ``onnxruntime.InferenceSession``."""

    def __init__(
        self,
        path: Path,
        artifact: Artifact,
        spec: PreprocessSpec,
        classes: list[str],
        threads: int | None = None,
        providers: Sequence[ProviderRequest] | None = None,
    ) -> None:
        import onnxruntime as ort

        super().__init__(path, artifact, spec, classes)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        resolved = ort_providers(providers, ort.get_available_providers())
        self.session = ort.InferenceSession(
            str(path), opts, providers=[n for n, _ in resolved], provider_options=[o for _, o in resolved]
        )
        self.input_name = self.session.get_inputs()[0].name

    @property
    def providers(self) -> list[str]:
        """Providers the session actually uses."""
        return list(self.session.get_providers())

    def run_tensor(self, x: np.ndarray) -> np.ndarray:
        return self._checked(self.session.run(None, {self.input_name: x})[0], len(x))


class OpenVinoRunner(Runner):
    """An OpenVINO IR compiled for CPU with the f32 inference-precision hint (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        artifact: Artifact,
        spec: PreprocessSpec,
        classes: list[str],
        threads: int | None = None,
        device: str = "CPU",
    ) -> None:
        import openvino as ov

        super().__init__(path, artifact, spec, classes)
        config: dict[str, Any] = dict(OPENVINO_CPU_CONFIG) if device == "CPU" else {}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self.compiled = core.compile_model(str(path), device, config)
        self.request = self.compiled.create_infer_request()

    @property
    def inference_precision(self) -> str:
        """The compute precision OpenVINO chose (``f32`` on CPU here)."""
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        return str(hint.to_string() if hasattr(hint, "to_string") else hint)

    def run_tensor(self, x: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: x})
        return self._checked(result[self.compiled.output(0)], len(x))


class TorchScriptRunner(Runner):
    """A TorchScript module loaded on CPU."""

    def __init__(
        self, path: Path, artifact: Artifact, spec: PreprocessSpec, classes: list[str], threads: int | None = None
    ) -> None:
        import torch

        super().__init__(path, artifact, spec, classes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        self.threads = threads

    def run_tensor(self, x: np.ndarray) -> np.ndarray:
        import torch

        saved = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        try:
            with torch.no_grad():
                out = self.module(torch.from_numpy(x)).float().numpy()
        finally:
            if self.threads:
                torch.set_num_threads(saved)
        return self._checked(out, len(x))


class TensorRTRunner(Runner):
    """A serialized TensorRT engine (needs TensorRT and a CUDA GPU; I/O through torch CUDA tensors)."""

    def __init__(self, path: Path, artifact: Artifact, spec: PreprocessSpec, classes: list[str]) -> None:
        import tensorrt as trt
        import torch

        from edgeclf.export.tensorrt_export import check_engine_compatible

        super().__init__(path, artifact, spec, classes)
        check_engine_compatible(artifact.details)
        self._torch = torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ConfigError(f"TensorRT could not load {path.name}; rebuild the engine on this device")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.chunk_size = min(CHUNK_SIZE, self.max_batch)

    def run_tensor(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        outs = []
        for i in range(0, len(x), self.max_batch):
            xt = torch.from_numpy(np.ascontiguousarray(x[i : i + self.max_batch])).cuda()
            self.context.set_input_shape(self.input_name, tuple(xt.shape))
            out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(self.input_name, int(xt.data_ptr()))
            self.context.set_tensor_address(self.output_name, int(out.data_ptr()))
            stream = torch.cuda.current_stream()
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for {self.path.name}")
            stream.synchronize()
            outs.append(out.cpu().numpy())
        return self._checked(np.concatenate(outs), len(x))


def load_runner(
    bundle_dir: Path,
    artifact: Artifact | dict[str, Any],
    spec: PreprocessSpec,
    classes: list[str],
    threads: int | None = None,
    providers: list[str] | None = None,
) -> Runner:
    """Open ``artifact`` of the bundle at ``bundle_dir`` as a Predictor.

    Args:
        bundle_dir: Folder holding the artifact files.
        artifact: An :class:`Artifact` or its ``to_dict()`` form (from the manifest).
        spec: Preprocessing (the bundle's).
        classes: Class names, in logit order.
        threads: Intra-op threads (None: the runtime's default).
        providers: ONNX Runtime execution providers (ONNX artifacts only); see :func:`ort_providers`.

    Raises:
        ConfigError: The artifact was not exported, its file is missing, its runtime is
            not installed, ``providers`` names an unavailable provider, or a TensorRT
            engine was built for another TensorRT version or GPU.
    """
    art = artifact if isinstance(artifact, Artifact) else Artifact.from_dict(artifact)
    if art.status != "ok":
        raise ConfigError(f"{art.format} {art.precision} was not exported ({art.status}: {art.error})")
    path = Path(bundle_dir) / art.file
    if not path.is_file():
        raise ConfigError(f"artifact file {path} is missing from the bundle")
    fspec = FORMATS.get(art.format)
    if fspec is None:
        raise ConfigError(f"unknown artifact format {art.format!r}")
    if providers and art.format != "onnx":
        raise ConfigError(f"execution providers apply to ONNX artifacts only, not {art.format}")
    try:
        if art.format == "onnx":
            return OnnxRuntimeRunner(path, art, spec, classes, threads=threads, providers=providers)
        if art.format == "openvino":
            return OpenVinoRunner(path, art, spec, classes, threads=threads)
        if art.format == "torchscript":
            return TorchScriptRunner(path, art, spec, classes, threads=threads)
        if art.format == "tensorrt":
            return TensorRTRunner(path, art, spec, classes)
    except ImportError as e:
        raise ConfigError(f"cannot run {art.format} artifacts: {e.name or e} is not installed") from None
    raise ConfigError(f"no runner for format {art.format!r}")
