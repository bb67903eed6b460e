"""The Python face of the C runtime: :class:`Classifier` over ``edgeclf._runtime``.

The module binds the C API itself, so what Python sees here is exactly what a device
program linking ``libedgeclf`` gets: the same preprocessing (in C++, from the bundle's
manifest), the same backend, the same calibrated probabilities.

>>> with Classifier("bundle") as clf:                         # doctest: +SKIP
...     clf.classify(frame, pixel_format="BGR8")[0].label

Thread safety follows the C API: the loaded model is shared, and each Python thread gets
its own session automatically, so one :class:`Classifier` may be used from many threads.
The GIL is released during preprocessing and inference.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from edgeclf.errors import ConfigError, DataError, EdgeclfError

if TYPE_CHECKING:
    from edgeclf.runtime.types import Decision

PIXEL_FORMATS = ("RGB8", "BGR8", "RGBA8", "BGRA8", "GRAY8", "NV12")


class RuntimeCallError(EdgeclfError):
    """The C runtime refused a call; ``status`` is the C status name (e.g. ``EDGECLF_ERR_INTEGRITY``)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class RuntimeUnavailableError(EdgeclfError):
    """The compiled runtime (``edgeclf._runtime``) is not built, or lacks the backend asked for."""


def _load_module() -> Any:
    try:
        from edgeclf import _runtime
    except ImportError as e:
        raise RuntimeUnavailableError(
            f"the edgeclf C runtime is not built in this installation ({e}); reinstall edgeclf from source "
            "with its build requirements (see the README's set-up)"
        ) from None
    return _runtime


def _convert(mod: Any, err: Exception) -> EdgeclfError:
    text = str(err)
    status, _, message = text.partition(": ")
    if status == "EDGECLF_ERR_BACKEND_UNAVAILABLE":
        return RuntimeUnavailableError(message)
    return RuntimeCallError(status, message or text)


def backends() -> list[str]:
    """Backends compiled into the runtime library, e.g. ``["onnxruntime", "openvino"]``."""
    return [b for b in _load_module().backends().split(",") if b]


def version() -> str:
    return str(_load_module().version())


def cmake_prefix() -> str:
    """The folder to pass as ``CMAKE_PREFIX_PATH`` for ``find_package(edgeclf)``: where the compiled
    runtime, ``lib/libedgeclf.so`` and ``lib/cmake/edgeclf`` are installed (in a wheel and in an
    editable install alike, where the Python sources stay in the checkout)."""
    mod = _load_module()
    return str(Path(mod.__file__).resolve().parent)


ImageInput = str | Path | Image.Image | np.ndarray


def _as_array(image: ImageInput) -> np.ndarray:
    if isinstance(image, (str, Path)):
        from edgeclf.runtime.types import to_rgb_array

        return to_rgb_array(image)
    if isinstance(image, Image.Image):
        from edgeclf.data._image import to_rgb

        return np.asarray(to_rgb(image))
    if isinstance(image, np.ndarray):
        if image.size == 0:
            raise DataError("empty image array")
        if image.dtype != np.uint8:
            raise DataError(f"image arrays must be uint8, got {image.dtype}")
    from edgeclf.runtime.types import refuse_unusable

    refuse_unusable(image)
    if isinstance(image, np.ndarray):
        return image
    raise DataError(f"cannot use {type(image).__name__} as an image; pass a path, a PIL image or a uint8 array")


class Classifier:
    """A bundle loaded into the C runtime.

    Args:
        bundle: bundle directory (from ``edgeclf export``).
        backend: ``auto``, ``onnxruntime`` or ``openvino``.
        device: ``cpu``, ``cuda``, ``tensorrt`` (ONNX Runtime) or an OpenVINO device name.
        precision: ``auto`` (the fastest artifact as timed on this host, see ``autotune``), ``fp32``,
            ``fp16``, ``int8``.
        threads: backend intra-op threads; 0 lets the backend decide.
        verify: check every loaded file against its SHA-256 in the manifest.
        autotune: with ``precision="auto"``, time each candidate artifact on this host at load
            (about 1 s of timing, cached per host in ``autotune_cache``) and keep the fastest;
            False: the fastest of the bundle's parity run (timed on the export host).
        autotune_cache: the cache file (default: ``autotune.json`` in the bundle).
    """

    def __init__(
        self,
        bundle: str | Path,
        *,
        backend: str = "auto",
        device: str = "cpu",
        precision: str = "auto",
        threads: int = 0,
        verify: bool = True,
        onnxruntime_library: str | None = None,
        autotune: bool = True,
        autotune_cache: str | Path | None = None,
    ) -> None:
        self._mod = _load_module()
        if not Path(bundle).is_dir():
            raise ConfigError(f"{bundle} is not a directory; pass a bundle written by `edgeclf export`")
        try:
            self._model = self._mod.Model(
                str(bundle),
                backend=backend,
                device=device,
                precision=precision,
                threads=int(threads),
                verify=bool(verify),
                onnxruntime_library=onnxruntime_library or "",
                autotune=bool(autotune),
                autotune_cache=str(autotune_cache or ""),
            )
        except self._mod.RuntimeLibraryError as e:
            raise _convert(self._mod, e) from None
        self.bundle_dir = Path(bundle)
        self.labels: list[str] = list(self._model.labels)
        self._local = threading.local()
        self._closed = False
        self._temperature: float | None = None

    # -- properties --------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return str(self._model.property("backend"))

    @property
    def precision(self) -> str:
        return str(self._model.property("precision"))

    @property
    def artifact(self) -> str:
        return str(self._model.property("artifact"))

    @property
    def device(self) -> str:
        return str(self._model.property("device"))

    @property
    def autotune(self) -> dict[str, Any]:
        """How the artifact was chosen: ``state`` ("measured", "cached" or "off (why)"), ``ms`` (median
        milliseconds per candidate file, as timed on this host, or the reason it could not run) and ``cache``."""
        ms: dict[str, float | str] = {}
        for part in filter(None, str(self._model.property("autotune_ms")).split(";")):
            name, _, value = part.partition("=")
            try:
                ms[name] = float(value)
            except ValueError:
                ms[name] = value
        return {
            "state": str(self._model.property("autotune")),
            "ms": ms,
            "cache": str(self._model.property("autotune_cache")) or None,
        }

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self._model.input_shape)  # type: ignore[return-value]

    def manifest_value(self, json_pointer: str) -> str:
        """A manifest value by JSON pointer, as the C API returns it (strings bare, else JSON)."""
        return self._call(lambda: self._model.manifest_value(json_pointer))

    # -- inference ---------------------------------------------------------------------
    def _session(self) -> Any:
        if self._closed:
            raise ConfigError("this Classifier is closed")
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._call(lambda: self._mod.Session(self._model))
            self._local.session = s
        return s

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except self._mod.RuntimeLibraryError as e:
            raise _convert(self._mod, e) from None
        except (TypeError, ValueError) as e:
            raise DataError(str(e)) from None

    @staticmethod
    def _batch(
        images: Sequence[ImageInput] | ImageInput, pixel_format: str | Sequence[str] | None
    ) -> tuple[list[np.ndarray], list[str]]:
        single = isinstance(images, (str, Path, Image.Image, np.ndarray, bytes, bytearray, memoryview))
        items = [images] if single else list(images)  # type: ignore[list-item]
        if not items:
            raise DataError("no images given")
        arrays = [_as_array(im) for im in items]  # type: ignore[arg-type]
        if pixel_format is None:
            formats: list[str] = []
        elif isinstance(pixel_format, str):
            formats = [pixel_format] * len(arrays)
        else:
            formats = list(pixel_format)
        for f in formats:
            if f not in PIXEL_FORMATS:
                raise DataError(f"unknown pixel format {f!r}; use one of {', '.join(PIXEL_FORMATS)}")
        return arrays, formats

    def probabilities(
        self, images: Sequence[ImageInput] | ImageInput, pixel_format: str | Sequence[str] | None = None
    ) -> np.ndarray:
        """Calibrated probabilities, N x classes (float32)."""
        arrays, formats = self._batch(images, pixel_format)
        s = self._session()
        return self._call(lambda: s.probabilities(arrays, formats))

    def classify(
        self, images: Sequence[ImageInput] | ImageInput, top_k: int = 5, pixel_format: str | Sequence[str] | None = None
    ) -> list[Any]:
        """Top-k labels with calibrated probabilities per image (:class:`edgeclf.runtime.types.Prediction`)."""
        from edgeclf.runtime.types import Prediction

        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        arrays, formats = self._batch(images, pixel_format)
        s = self._session()
        rows = self._call(lambda: s.classify(arrays, formats, int(top_k)))
        return [Prediction([self.labels[i] for i, _ in row], [float(p) for _, p in row]) for row in rows]

    @property
    def decision_policy(self) -> str:
        """The bundle's decision policy in words (``argmax`` when it has none)."""
        return str(self._model.property("decision"))

    def _decisions(self, rows: list[Any]) -> list[Decision]:
        from edgeclf.runtime.types import Decision

        return [
            Decision(int(i), self.labels[i] if i >= 0 else None, str(rule), self.labels[top], float(p), float(s))
            for i, rule, top, p, s in rows
        ]

    def classify_decision(
        self, images: Sequence[ImageInput] | ImageInput, pixel_format: str | Sequence[str] | None = None
    ) -> list[Decision]:
        """The bundle's decision per image (class or unknown, and the rule that decided), in the C runtime."""
        arrays, formats = self._batch(images, pixel_format)
        s = self._session()
        return self._decisions(self._call(lambda: s.classify_decision(arrays, formats)))

    def infer(
        self, images: Sequence[ImageInput] | ImageInput, pixel_format: str | Sequence[str] | None = None
    ) -> tuple[np.ndarray, list[Decision]]:
        """Calibrated probabilities (N x classes, float32) and the bundle's decision per image, from one
        inference pass: the C++ preprocessing of each image, one batched backend call, and the C
        runtime's decision policy on those logits (what a server answers)."""
        arrays, formats = self._batch(images, pixel_format)
        s = self._session()
        fmts = formats or [""] * len(arrays)

        def run() -> np.ndarray:
            return s.run_tensor(np.stack([s.preprocess(a, f) for a, f in zip(arrays, fmts, strict=True)]))

        logits = np.asarray(self._call(run), dtype=np.float32)
        decisions = self._decisions(self._call(lambda: self._model.decide(logits)))
        if self._temperature is None:
            self._temperature = float(self.manifest_value("/temperature"))
        from edgeclf.stats import softmax

        return softmax(logits, self._temperature).astype(np.float32), decisions

    def decide(self, logits: np.ndarray) -> list[Decision]:
        """The C runtime's decision policy applied to raw logits (N x classes) computed elsewhere."""
        if self._closed:
            raise ConfigError("this Classifier is closed")
        z = np.atleast_2d(np.asarray(logits, dtype=np.float32))
        return self._decisions(self._call(lambda: self._model.decide(z)))

    def preprocess(self, image: ImageInput, pixel_format: str | None = None) -> np.ndarray:
        """The 3 x H x W float32 tensor the C++ preprocessing makes of ``image``."""
        arr = _as_array(image)
        s = self._session()
        return self._call(lambda: s.preprocess(arr, pixel_format or ""))

    def run_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """Raw logits of the backend on an N x 3 x H x W float32 tensor (no preprocessing)."""
        s = self._session()
        return self._call(lambda: s.run_tensor(np.ascontiguousarray(tensor, dtype=np.float32)))

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        self._closed = True
        self._local = threading.local()
        self._model = None

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.backend}/{self.precision} ({self.artifact})"
        return f"Classifier({str(self.bundle_dir)!r}, {state})"


__all__ = ["Classifier", "PIXEL_FORMATS", "RuntimeCallError", "RuntimeUnavailableError", "backends", "cmake_prefix", "version"]
