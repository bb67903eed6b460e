"""The Python-engine face of a bundle: ``edgeclf.predict(bundle, images)`` and :class:`BundleClassifier`.

It runs a bundle's artifacts on their Python runtimes (ONNX Runtime, OpenVINO) through the same
runners the parity gates use (:mod:`edgeclf.export.runners`), so what it answers is what export
measured. :class:`edgeclf.runtime.Classifier` is the other face: the C runtime a device program
links. Both take the same images, answer the same :class:`~edgeclf.runtime.types.Prediction`, and
choose an artifact by the same rule (:func:`choose_artifact`, ``choose`` in ``cpp/src/c_api.cpp``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgeclf.errors import ConfigError, DataError
from edgeclf.evaluate.metrics import softmax
from edgeclf.export.bundle import BundleError, BundleManifest, read_bundle, read_parity
from edgeclf.runtime.types import Decision, ImageLike, Prediction, to_rgb_array

#: the backends the C runtime runs (its precision="auto" rule decides among their artifacts)
C_BACKENDS = ("onnxruntime", "openvino")
_RUNTIME_MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch", "tensorrt": "tensorrt"}


def choose_artifact(
    bundle_dir: Path, manifest: BundleManifest, runtime: str | None = None, autotune: bool = True, verified: bool = False
) -> Any:
    """The shipped artifact to run, by the one rule of both faces.

    The C runtime's choice where it can make it (the runtime is built and ``runtime`` is None or
    one of its backends): with ``autotune`` the fastest candidate as timed on this host (cached
    per host in the bundle's ``autotune.json``), else the fastest of the bundle's parity run.
    Otherwise (a Python-only runtime such as TorchScript or TensorRT, or no C runtime here) the
    same parity-run rule in Python, among the artifacts whose runtime is installed.
    ``verified``: the caller has checked every artifact against its SHA-256 (``read_bundle(verify=True)``),
    so the C runtime's look at the bundle does not hash them all again.
    """
    parity = read_parity(Path(bundle_dir))  # a damaged report is a BundleError naming the file and field
    candidates = [
        a
        for a in manifest.artifacts
        if a.status == "ok" and importlib.util.find_spec(_RUNTIME_MODULE.get(a.runtime, a.runtime)) is not None
    ]
    if runtime is not None:
        candidates = [a for a in candidates if a.runtime == runtime]
    if not candidates:
        have = ", ".join(sorted({f"{a.runtime}/{a.precision}" for a in manifest.artifacts})) or "none"
        raise ConfigError(
            f"no artifact in {bundle_dir} can run here{f' on {runtime}' if runtime else ''} "
            f"(bundle has: {have}); install the runtime or re-export"
        )
    chosen = _c_runtime_choice(Path(bundle_dir), runtime, autotune, verify=not verified)
    if chosen is not None:
        for a in candidates:
            if a.file == chosen:
                return a
    speed = parity.speeds() if parity is not None else {}
    return min(candidates, key=lambda a: speed.get((a.format, a.precision), float("inf")))


def _c_runtime_choice(bundle_dir: Path, runtime: str | None, autotune: bool, verify: bool) -> str | None:
    """The artifact file the C runtime loads for precision "auto" (None when it cannot decide here)."""
    if runtime is not None and runtime not in C_BACKENDS:
        return None
    try:
        from edgeclf.runtime import Classifier, RuntimeCallError, RuntimeUnavailableError
    except ImportError:
        return None
    try:
        with Classifier(bundle_dir, backend=runtime or "auto", autotune=autotune, verify=verify) as clf:
            return clf.artifact
    except (RuntimeUnavailableError, RuntimeCallError):  # not built here, or a bundle it refuses: Python's rule
        return None


class BundleClassifier:
    """A loaded bundle: ``classify(images, top_k)`` returns calibrated predictions."""

    def __init__(
        self, bundle_dir: str | Path, runtime: str | None = None, threads: int | None = None, autotune: bool = True
    ) -> None:
        from edgeclf.export.runners import load_runner

        self.bundle_dir = Path(bundle_dir)
        self.manifest = read_bundle(self.bundle_dir, verify=True)
        self.artifact = choose_artifact(self.bundle_dir, self.manifest, runtime, autotune, verified=True)
        self.spec = self.manifest.spec()
        self.labels = self.manifest.labels
        a = self.artifact
        try:
            self.runner = load_runner(
                self.bundle_dir,
                a.to_artifact(),
                self.spec,
                self.labels,
                threads=threads,
            )
        except BundleError:
            raise
        except Exception as e:  # noqa: BLE001 - the runtimes raise their own types for a file they cannot load
            raise BundleError(
                f"bundle {self.bundle_dir}: {a.file} matches its SHA-256 but {a.runtime} cannot load it "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); re-export the "
                "bundle"
            ) from None
        try:  # one black frame: the model's outputs must match the labels now, not at the first real image
            probe = np.asarray(self.runner([np.zeros((self.spec.crop_size, self.spec.crop_size, 3), np.uint8)]))
        except Exception as e:  # noqa: BLE001
            raise BundleError(
                f"bundle {self.bundle_dir}: {a.file} does not run with the manifest's {len(self.labels)} "
                f"labels and preprocessing ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "re-export the bundle"
            ) from None
        if probe.ndim != 2 or probe.shape[1] != len(self.labels):
            raise BundleError(
                f"bundle {self.bundle_dir}: {a.file} has {probe.shape[-1] if probe.ndim else 0} outputs but "
                f"the manifest has {len(self.labels)} labels; re-export the bundle"
            )

    def logits(self, images: Sequence[ImageLike]) -> np.ndarray:
        from edgeclf.preprocess import resize_uint8

        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        if isinstance(images, (bytes, bytearray, memoryview)) or not isinstance(images, Sequence):
            raise DataError(f"images must be a path, a PIL image, a uint8 array or a list of them, got {type(images).__name__}")
        if len(images) == 0:
            raise DataError("no images given")
        # decode and resize one image at a time: only the small resized copies are kept (resizing is the
        # spec's first step, and resizing an image already at resize_size is the identity: same bits)
        small = [resize_uint8(to_rgb_array(im), self.spec) for im in images]
        return np.asarray(self.runner(small), dtype=np.float32)

    def classify(self, images: Sequence[ImageLike] | ImageLike, top_k: int = 5) -> list[Prediction]:
        from edgeclf.evaluate.decision import RULES, decide

        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        logits = self.logits(images)  # type: ignore[arg-type]
        probs = softmax(logits, self.manifest.temperature)
        d = decide(logits, self.manifest.temperature, self.manifest.decision)
        k = min(top_k, len(self.labels))
        out = []
        for j, p in enumerate(probs):
            order = np.argsort(-p, kind="stable")[:k]
            idx = int(d.index[j])
            dec = Decision(
                idx,
                self.labels[idx] if idx >= 0 else None,
                RULES[int(d.rule[j])],
                self.labels[int(d.argmax[j])],
                float(d.probability[j]),
                float(d.score[j]),
            )
            out.append(Prediction([self.labels[i] for i in order], [float(p[i]) for i in order], dec))
        return out


def predict(
    bundle: str | Path, images: Sequence[ImageLike] | ImageLike, top_k: int = 5, runtime: str | None = None
) -> list[Prediction]:
    """Classify ``images`` (paths, PIL images or uint8 arrays) with a bundle; calibrated top-k per image."""
    return BundleClassifier(bundle, runtime).classify(images, top_k)
