"""TensorRT engines from the fp32 ONNX model, or the exact command to build one on the device.

A TensorRT engine only loads under the TensorRT version and on the GPU model that
built it, so it is usually built on the target itself. Two paths:

* **TensorRT importable and a CUDA GPU visible**: build a serialized engine here with
  the TensorRT Python API (explicit batch, one optimisation profile ``1..max_batch``,
  ``fp16`` flag, or ``int8`` (+ fp16 fallback) calibrated by an
  ``IInt8EntropyCalibrator2`` over the preprocessed calibration images, which writes a
  calibration cache file). The file name carries the TensorRT version and the GPU
  (``model.fp16.trt10.3-NVIDIA_Orin.engine``) and ``details["tensorrt"]`` holds
  ``{"trt_version", "device"}``, which :func:`check_engine_compatible` checks before
  an engine is loaded.
* **Otherwise**: the artifact is ``skipped`` with the reason (``"TensorRT is not
  installed on this machine"``), the fp32 ONNX model is in the bundle, int8 requests
  also get the calibration batch (``model.calib.npy``, N x 3 x H x W float32,
  preprocessed), and ``details["trt_command"]`` is the ``trtexec`` command to run in
  the bundle folder on the device. ``trtexec --int8 --calib=FILE`` only *reads* a
  calibration cache, so int8 also gets ``details["trt_calibration_command"]``:
  ``edgeclf tensorrt build`` (:func:`build_engine_from_files`), which builds the engine
  (and the cache) from the ``.npy`` with the same calibrator.

Note: TensorRT 10 deprecates implicit (calibrator-based) INT8 in favour of explicit
Q/DQ models; it still works there. ONNX Runtime's QDQ model (``model.int8.onnx``)
uses asymmetric uint8 activations, which TensorRT's explicit quantisation does not
accept, so it is not a TensorRT input.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgeclf._io import atomic_write_bytes
from edgeclf.errors import ConfigError
from edgeclf.export.formats import NO_GPU, TRT_NOT_INSTALLED, Produced, gpu_name, tensorrt_available
from edgeclf.preprocess import PreprocessSpec

__all__ = [
    "TRT_NOT_INSTALLED",
    "build_engine",
    "build_engine_from_files",
    "check_engine_compatible",
    "engine_file_name",
    "export",
    "gpu_name",
    "tensorrt_available",
    "trt_commands",
]

DEFAULT_MAX_BATCH = 32  # the runners' chunk size
DEFAULT_OPT_BATCH = 1  # edge inference is mostly one image at a time
DEFAULT_WORKSPACE_MB = 1024
CALIBRATION_NPY = "model.calib.npy"
# Images per calibration batch for the entropy calibrator (a fixed batch size is required).
TRT_CALIBRATION_BATCH = 8


def _version_tag(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "gpu"


def engine_file_name(precision: str, trt_version: str, device: str) -> str:
    """``model.<precision>.trt<major.minor>-<gpu>.engine``, e.g. ``model.fp16.trt10.3-NVIDIA_Orin.engine``."""
    return f"model.{precision}.trt{_version_tag(trt_version)}-{_slug(device)}.engine"


def _shape(batch: int, size: int) -> str:
    return f"input:{batch}x3x{size}x{size}"


def trt_commands(
    onnx_name: str,
    precision: str,
    crop_size: int,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int = DEFAULT_OPT_BATCH,
    engine_name: str | None = None,
    cache_name: str = "model.int8.calib",
) -> dict[str, str]:
    """The commands that build the engine on the device (run in the bundle folder).

    Returns ``{"trt_command": trtexec ...}`` and, for int8, ``"trt_calibration_command"``
    (builds the engine and the calibration cache from :data:`CALIBRATION_NPY`).
    """
    engine = engine_name or f"model.{precision}.engine"
    shapes = (
        f"--minShapes={_shape(1, crop_size)} --optShapes={_shape(opt_batch, crop_size)} "
        f"--maxShapes={_shape(max_batch, crop_size)}"
    )
    flags = {"fp32": "--noTF32", "fp16": "--fp16", "int8": f"--int8 --fp16 --calib={cache_name}"}[precision]
    out = {"trt_command": f"trtexec --onnx={onnx_name} --saveEngine={engine} {flags} {shapes}"}
    if precision == "int8":
        out["trt_calibration_command"] = (
            f"edgeclf tensorrt build --onnx {onnx_name} --precision int8 "
            f"--calibration {CALIBRATION_NPY} --cache {cache_name} --max-batch {max_batch} "
            f"--opt-batch {opt_batch}"
        )
    return out


def _v3(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:3])


def check_engine_compatible(details: dict[str, Any], trt_version: str | None = None, device: str | None = None) -> None:
    """Raise :class:`ConfigError` unless an engine described by ``details`` loads here.

    ``details["tensorrt"]`` (written at build time) holds ``trt_version`` and
    ``device``. An engine loads only under the same TensorRT major.minor.patch and on
    the same GPU model. ``trt_version`` and ``device`` default to this machine's.
    """
    info = details.get("tensorrt") if isinstance(details, dict) else None
    if not isinstance(info, dict) or not info.get("trt_version") or not info.get("device"):
        raise ConfigError("the TensorRT artifact has no build record {trt_version, device}; rebuild the engine")
    rebuild = details.get("trt_command") or "re-export with --formats tensorrt on this device"
    if trt_version is None:
        try:
            import tensorrt as trt
        except ImportError:
            raise ConfigError(f"{TRT_NOT_INSTALLED}; cannot load a TensorRT engine") from None
        trt_version = str(trt.__version__)
    if device is None:
        device = gpu_name()
        if device is None:
            raise ConfigError("no CUDA GPU is visible; cannot load a TensorRT engine")
    if _v3(str(info["trt_version"])) != _v3(trt_version):
        raise ConfigError(
            f"this engine was built with TensorRT {info['trt_version']} but this machine has TensorRT {trt_version}; "
            f"engines only load under the version that built them. Rebuild it here: {rebuild}"
        )
    if str(info["device"]) != device:
        raise ConfigError(
            f"this engine was built for {info['device']} but this machine's GPU is {device}; "
            f"engines are specific to the GPU model. Rebuild it here: {rebuild}"
        )


def _calibrator(trt: Any, data: np.ndarray, cache_path: Path) -> Any:
    import torch

    batch = min(TRT_CALIBRATION_BATCH, len(data))

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        """Feeds ``data`` in fixed batches from a CUDA buffer; reads/writes the cache file."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.pos = 0
            self.buf = torch.empty((batch, *data.shape[1:]), dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            if self.pos + batch > len(data):  # the calibrator needs full batches; a remainder is dropped
                return None
            self.buf.copy_(torch.from_numpy(data[self.pos : self.pos + batch]))
            torch.cuda.synchronize()
            self.pos += batch
            return [int(self.buf.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_path, bytes(cache))

    return _EntropyCalibrator()


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    calibration: np.ndarray | None = None,
    cache_path: Path | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int = DEFAULT_OPT_BATCH,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
) -> dict[str, Any]:
    """Build a serialized engine from ``onnx_path`` (needs TensorRT and a GPU); return the details."""
    import tensorrt as trt

    device = gpu_name()
    if device is None:
        raise RuntimeError(NO_GPU)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {Path(onnx_path).name}: {errors}")
    input_name = network.get_input(0).name
    _, c, h, w = network.get_input(0).shape
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, c, h, w), (opt_batch, c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)
    details: dict[str, Any] = {}
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # exact fp32, comparable with the other runtimes
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calibration is None or len(calibration) == 0 or cache_path is None:
            raise ConfigError("TensorRT int8 needs calibration images and a cache path")
        config.set_flag(trt.BuilderFlag.INT8)
        batch = min(TRT_CALIBRATION_BATCH, len(calibration))
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(input_name, (1, c, h, w), (batch, c, h, w), (max(batch, max_batch), c, h, w))
        config.set_calibration_profile(calib_profile)
        config.int8_calibrator = _calibrator(trt, calibration, Path(cache_path))
        details.update(
            {
                "calibrator": "IInt8EntropyCalibrator2",
                "calibration_images": int(len(calibration) // batch * batch),
                "calibration_cache": Path(cache_path).name,
            }
        )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    details.update(
        {
            "tensorrt": {"trt_version": str(trt.__version__), "device": device},
            "max_batch": max_batch,
            "opt_batch": opt_batch,
            "workspace_mb": workspace_mb,
        }
    )
    return details


def _onnx_in_bundle(
    model: nn.Module,
    spec: PreprocessSpec,
    work_dir: Path,
    out_dir: Path,
    metadata_json: str,
    options: dict[str, Any],
    fp32_onnx: Path | None,
) -> tuple[str, list[str]]:
    """The fp32 ONNX name in the bundle for ``trtexec``, and the files this export must add."""
    if fp32_onnx is not None and Path(fp32_onnx).resolve().parent == Path(out_dir).resolve():
        return Path(fp32_onnx).name, []
    name = "model.onnx"
    if fp32_onnx is not None:
        shutil.copyfile(fp32_onnx, work_dir / name)
    else:
        from edgeclf.export.onnx_export import export_onnx_fp32

        export_onnx_fp32(
            model,
            spec,
            work_dir / name,
            metadata_json,
            opset=int(options.get("opset", 17)),
            exporter=str(options.get("exporter", "auto")),
            slim=bool(options.get("slim", True)),
        )
    return name, [name]


def export(
    *,
    model: nn.Module,
    spec: PreprocessSpec,
    work_dir: Path,
    out_dir: Path,
    precision: str,
    calibration_images: Sequence[np.ndarray] | None,
    metadata_json: str,
    options: dict[str, Any],
    fp32_onnx: Path | None,
) -> Produced:
    """Format adapter for :func:`edgeclf.export.exporters.export_artifact` (``tensorrt``)."""
    from edgeclf.export.quantize import calibration_tensor

    max_batch = int(options.get("max_batch", DEFAULT_MAX_BATCH))
    opt_batch = int(options.get("opt_batch", DEFAULT_OPT_BATCH))
    workspace_mb = int(options.get("workspace_mb", DEFAULT_WORKSPACE_MB))
    calibration = calibration_tensor(calibration_images, spec) if precision == "int8" and calibration_images else None
    ok, reason = tensorrt_available()
    if not ok:
        onnx_name, extra = _onnx_in_bundle(model, spec, work_dir, out_dir, metadata_json, options, fp32_onnx)
        details: dict[str, Any] = {
            **trt_commands(onnx_name, precision, spec.crop_size, max_batch, opt_batch),
            "onnx": onnx_name,
            "max_batch": max_batch,
            "opt_batch": opt_batch,
        }
        if calibration is not None:
            np.save(work_dir / CALIBRATION_NPY, calibration)
            extra.append(CALIBRATION_NPY)
            details["calibration_npy"] = CALIBRATION_NPY
            details["calibration_images"] = int(len(calibration))
        return Produced(file=f"model.{precision}.engine", extra_files=extra, details=details, status="skipped", error=reason)

    import tensorrt as trt

    from edgeclf.export.onnx_export import fp32_onnx_for

    src, src_details = fp32_onnx_for(model, spec, work_dir, metadata_json, options, fp32_onnx)
    device = gpu_name() or "gpu"
    name = engine_file_name(precision, str(trt.__version__), device)
    cache_name = f"model.{precision}.trt{_version_tag(str(trt.__version__))}-{_slug(device)}.calib"
    details = build_engine(
        src,
        work_dir / name,
        precision,
        calibration=calibration,
        cache_path=work_dir / cache_name,
        max_batch=max_batch,
        opt_batch=opt_batch,
        workspace_mb=workspace_mb,
    )
    onnx_name = Path(fp32_onnx).name if fp32_onnx is not None else "model.onnx"
    details.update(
        trt_commands(onnx_name, precision, spec.crop_size, max_batch, opt_batch, engine_name=name, cache_name=cache_name)
    )
    extra = [cache_name] if precision == "int8" and (work_dir / cache_name).is_file() else []
    return Produced(file=name, extra_files=extra, details={**details, **src_details})


def build_engine_from_files(
    onnx_path: Path | str,
    precision: str = "fp16",
    calibration_npy: Path | str | None = None,
    cache_path: Path | str = "model.int8.calib",
    max_batch: int | None = None,
    opt_batch: int | None = None,
    workspace_mb: int | None = None,
) -> dict[str, Any]:
    """On the device: build an engine (and the int8 calibration cache) from a bundle's ONNX model
    and calibration batch (``edgeclf tensorrt build``).

    The engine is written next to the ONNX model, named by :func:`engine_file_name`.

    Returns:
        ``{"file": engine name, "path": engine path, "details": ...}``, the details including
        the ``tensorrt`` build record {trt_version, device}.

    Raises:
        ConfigError: TensorRT or a CUDA GPU is missing here, a file is missing, or int8 is
            asked for without the calibration batch.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"precision {precision!r}: use fp32, fp16 or int8")
    ok, reason = tensorrt_available()
    if not ok:
        raise ConfigError(
            f"{reason}: `edgeclf tensorrt build` builds the engine on the device, where TensorRT (its Python "
            "package) and a CUDA GPU are; elsewhere a bundle carries the ONNX model and the `trtexec` command"
        )
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ConfigError(f"ONNX model not found: {onnx_path}")
    calibration = None
    if precision == "int8":
        if calibration_npy is None:
            raise ConfigError(f"int8 needs the calibration batch (--calibration {CALIBRATION_NPY}, in the bundle)")
        try:
            calibration = np.load(calibration_npy, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the calibration batch {calibration_npy}: {exc}") from None
    import tensorrt as trt

    name = engine_file_name(precision, str(trt.__version__), gpu_name() or "gpu")
    engine = onnx_path.parent / name
    details = build_engine(
        onnx_path,
        engine,
        precision,
        calibration,
        Path(cache_path),
        DEFAULT_MAX_BATCH if max_batch is None else max_batch,
        DEFAULT_OPT_BATCH if opt_batch is None else opt_batch,
        DEFAULT_WORKSPACE_MB if workspace_mb is None else workspace_mb,
    )
    return {"file": name, "path": str(engine), "details": details}


if __name__ == "__main__":
    raise SystemExit("building a TensorRT engine is a command of the edgeclf CLI: run `edgeclf tensorrt build --help`")
