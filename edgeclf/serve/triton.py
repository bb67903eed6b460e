"""A Triton Inference Server model repository from a bundle (``edgeclf triton BUNDLE --out REPO``).

Every shipped artifact of the bundle that Triton has a backend for becomes one model of the
repository: ONNX (``onnxruntime_onnx``), OpenVINO IR (``openvino`` backend) and TensorRT engines
(``tensorrt_plan``). The bundle's first fp32 ONNX model is the repository's default model, named
after the bundle; the others are ``<name>_<format>_<precision>``.

The ONNX and OpenVINO models get a second output, ``probabilities``: the bundle's calibrated
probabilities (``softmax(logits / T)`` with the bundle's temperature), appended to the graph and
checked against the bundle's own model on random inputs before the repository is written. Its
``label_filename`` lets Triton's classification extension answer labels. TensorRT engines are
copied as built on the device and answer ``logits`` only.

Triton does not decode or resize images: the client sends the preprocessed ``N x 3 x H x W``
float32 tensor. The repository's README says how, step by step, from the bundle's preprocessing
spec, and ``client.py`` does it with edgeclf's reference preprocessing (the one the C runtime
reproduces bit for bit on uint8 pixels).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeclf._io import sha256_file, write_json
from edgeclf.errors import ConfigError
from edgeclf.stats import softmax

#: the output appended to ONNX / OpenVINO models: calibrated probabilities
PROBABILITIES = "probabilities"
#: probabilities of the Triton model vs softmax(logits / T) of the bundle's model (fp32 arithmetic)
PROB_ATOL = 1e-5
#: its logits vs the bundle model's (relative to their largest magnitude)
LOGITS_RTOL = 1e-5
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_DTYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 2: "TYPE_UINT8", 3: "TYPE_INT8", 7: "TYPE_INT64", 6: "TYPE_INT32"}


@dataclass
class TritonModel:
    """One model of the repository."""

    name: str
    platform: str  # "onnxruntime_onnx", "openvino" (a backend), "tensorrt_plan"
    artifact: str  # the bundle's file it was made from
    precision: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    files: dict[str, str] = field(default_factory=dict)  # repository-relative path -> sha256
    max_prob_diff: float | None = None  # probabilities vs softmax(logits / T) of the bundle's model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TritonRepository:
    root: Path
    bundle: str
    default_model: str
    models: list[TritonModel]
    skipped: list[str]  # artifacts without a Triton backend, with the reason

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "root": str(self.root)}


def model_name(text: str) -> str:
    """A Triton model (folder) name from a bundle name: letters, digits, ``_ . -``."""
    name = _NAME.sub("_", text).strip("._-")
    return name or "model"


def _onnx_io(model: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    init = {i.name for i in model.graph.initializer}

    def desc(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if t.elem_type not in _DTYPES:
            raise ConfigError(f"tensor {v.name!r} has ONNX type {t.elem_type}, which this writer does not map to Triton")
        return {"name": v.name, "data_type": _DTYPES[t.elem_type], "dims": dims}

    return [desc(v) for v in model.graph.input if v.name not in init], [desc(v) for v in model.graph.output]


def _check_batch(io: list[dict[str, Any]], what: str) -> None:
    for t in io:
        if not t["dims"] or t["dims"][0] != -1:
            raise ConfigError(
                f"{what}: {t['name']!r} has shape {t['dims']}; Triton's batching needs a dynamic first (batch) dimension "
                "(re-export the bundle with a dynamic batch)"
            )


def _onnx_with_probabilities(src: Path, dest: Path, temperature: float) -> tuple[list, list, float]:
    """Copy ``src`` to ``dest`` with a ``probabilities`` output (= softmax(logits / T)), checked on ORT."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    inputs, outputs = _onnx_io(model)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ConfigError(f"{src.name}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
    _check_batch(inputs + outputs, src.name)
    logits = outputs[0]["name"]
    if any(PROBABILITIES == t["name"] for t in inputs + outputs):
        raise ConfigError(f"{src.name} already has a tensor named {PROBABILITIES!r}")
    g = model.graph
    g.initializer.append(helper.make_tensor("edgeclf_temperature", TensorProto.FLOAT, [], [float(temperature)]))
    g.node.append(helper.make_node("Div", [logits, "edgeclf_temperature"], ["edgeclf_scaled"], name="edgeclf_scale"))
    g.node.append(helper.make_node("Softmax", ["edgeclf_scaled"], [PROBABILITIES], axis=1, name="edgeclf_softmax"))
    n = outputs[0]["dims"][1]
    g.output.append(helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", n]))
    onnx.checker.check_model(model)
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest))

    x = np.random.default_rng(0).normal(size=[3, *inputs[0]["dims"][1:]]).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ref = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"]).run(None, {inputs[0]["name"]: x})[0]
    got = ort.InferenceSession(str(dest), so, providers=["CPUExecutionProvider"]).run(
        [logits, PROBABILITIES], {inputs[0]["name"]: x}
    )
    diff = _compare(src.name, ref, got[0], got[1], temperature)
    prob = {"name": PROBABILITIES, "data_type": "TYPE_FP32", "dims": [-1, n]}
    return inputs, [prob, *outputs], diff


def _compare(what: str, ref: np.ndarray, logits: np.ndarray, probs: np.ndarray, temperature: float) -> float:
    # the appended nodes may change how a runtime fuses the last layer: fp32 rounding, no more
    if not np.allclose(ref, logits, rtol=LOGITS_RTOL, atol=LOGITS_RTOL * max(1.0, float(np.abs(ref).max()))):
        raise ConfigError(
            f"{what}: the Triton model's logits differ from the bundle's model (max {np.abs(ref - logits).max():.2e})"
        )
    diff = float(np.abs(probs - softmax(ref, temperature)).max())
    if diff > PROB_ATOL:
        raise ConfigError(f"{what}: the Triton model's probabilities differ from softmax(logits / T) by {diff:.2e}")
    return diff


def _openvino_with_probabilities(xml: Path, dest_dir: Path, temperature: float) -> tuple[list, list, float]:
    """``model.xml`` / ``model.bin`` in ``dest_dir`` with a ``probabilities`` output, checked on the CPU plugin."""
    import openvino as ov
    from openvino import opset13

    core = ov.Core()
    model = core.read_model(str(xml))
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConfigError(f"{xml.name}: expected one input and one output")
    logits_name = model.outputs[0].get_any_name()
    logits = model.get_results()[0].input_value(0)
    probs = opset13.softmax(opset13.divide(logits, opset13.constant(np.float32(temperature))), 1)
    new = ov.Model([opset13.result(logits), opset13.result(probs)], list(model.get_parameters()), "edgeclf")
    new.outputs[0].set_names({logits_name})
    new.outputs[1].set_names({PROBABILITIES})
    dest_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(new, str(dest_dir / "model.xml"), compress_to_fp16=False)

    def io(port: Any) -> dict[str, Any]:
        shape = port.get_partial_shape()
        dims = [d.get_length() if d.is_static else -1 for d in shape]
        return {"name": port.get_any_name(), "data_type": "TYPE_FP32", "dims": dims}

    saved = core.read_model(str(dest_dir / "model.xml"))
    inputs, outputs = [io(p) for p in saved.inputs], [io(p) for p in saved.outputs]
    _check_batch(inputs + outputs, xml.name)
    x = np.random.default_rng(0).normal(size=[3, *inputs[0]["dims"][1:]]).astype(np.float32)
    cfg = {"INFERENCE_PRECISION_HINT": "f32"}
    ref = core.compile_model(model, "CPU", cfg)(x)[0]
    got = core.compile_model(saved, "CPU", cfg)(x)
    diff = _compare(xml.name, np.asarray(ref), np.asarray(got[0]), np.asarray(got[1]), temperature)
    return inputs, [outputs[1], outputs[0]], diff


def _dims(d: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in d[1:]) + " ]"


def config_pbtxt(m: TritonModel, max_batch: int, max_wait_ms: float, instances: int, device: str, layout: str = "NCHW") -> str:
    """``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``)."""
    lines = [f'name: "{m.name}"']
    lines.append(f'backend: "{m.platform}"' if m.platform == "openvino" else f'platform: "{m.platform}"')
    lines.append(f"max_batch_size: {max_batch}")
    lines.append("input [")
    lines.append(
        ",\n".join(
            f'  {{\n    name: "{t["name"]}"\n    data_type: {t["data_type"]}\n'
            + (f"    format: FORMAT_{layout}\n" if len(t["dims"]) == 4 else "")
            + f"    dims: {_dims(t['dims'])}\n  }}"
            for t in m.inputs
        )
    )
    lines.append("]")
    lines.append("output [")
    lines.append(
        ",\n".join(
            f'  {{\n    name: "{t["name"]}"\n    data_type: {t["data_type"]}\n    dims: {_dims(t["dims"])}\n'
            + ('    label_filename: "labels.txt"\n' if t["name"] == PROBABILITIES else "")
            + "  }"
            for t in m.outputs
        )
    )
    lines.append("]")
    preferred = sorted({b for b in (max_batch // 2, max_batch) if b >= 1})
    lines.append(
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {int(round(max_wait_ms * 1000))}\n"
        "}"
    )
    kind = "KIND_GPU" if device == "gpu" or m.platform == "tensorrt_plan" else "KIND_CPU"
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    if m.platform == "openvino":
        # latency-first streams for a batch built by Triton's dynamic batcher
        lines.append('parameters: {\n  key: "PERFORMANCE_HINT"\n  value: {\n    string_value: "LATENCY"\n  }\n}')
    lines.append("version_policy: { latest: { num_versions: 1 } }")
    return "\n".join(lines) + "\n"


def parse_config(text: str) -> Any:
    """Parse ``config.pbtxt`` with Triton's own ``ModelConfig`` protobuf (needs ``tritonclient[grpc]``)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _readme(repo: TritonRepository, manifest: Any, max_batch: int) -> str:
    from edgeclf.preprocess import PreprocessSpec

    spec = PreprocessSpec.from_dict(manifest.preprocess)
    rows = "\n".join(
        f"| `{m.name}` | `{m.platform}` | {m.precision} | `{m.artifact}` | "
        + ", ".join(f"`{t['name']}`" for t in m.outputs)
        + " |"
        for m in repo.models
    )
    first = repo.models[0]
    inp = first.inputs[0]
    return f"""# Triton model repository for `{manifest.name}`

Written by `edgeclf triton` from the edgeclf bundle `{manifest.name}` (labels: {", ".join(manifest.labels)}).
`edgeclf-triton.json` lists every file with its SHA-256 and the bundle it came from.

| model | platform / backend | precision | from bundle file | outputs |
|---|---|---|---|---|
{rows}

`probabilities` are the bundle's calibrated probabilities, `softmax(logits / {manifest.temperature:g})`
(temperature scaling fitted on validation), checked against the bundle's own model when this
repository was written. `logits` are the raw outputs. TensorRT engines answer `logits` only; apply
the same softmax on the client. A decision policy of the bundle (thresholds, reject option) is not
applied by Triton: `edgeclf serve` and the C runtime apply it.

## Serve

```
tritonserver --model-repository {repo.root.name}
```

Each model batches requests dynamically up to {max_batch} images (`dynamic_batching` in its
`config.pbtxt`); change `instance_group` for more instances or GPUs. A TensorRT engine runs only on
the GPU model and TensorRT version it was built with (see the bundle's manifest).

## What the client sends

Triton does not decode images: send input `{inp["name"]}`, `FP32`, shape `[N, {", ".join(map(str, inp["dims"][1:]))}]`,
made from each image exactly as the model was trained:

1. decode to RGB, 8 bits per channel;
2. resize so the shorter side is {spec.resize_size} px ({spec.interpolation}, antialias {str(spec.antialias).lower()},
   mode `{spec.resize_mode}`), keeping the aspect ratio;
3. centre-crop {spec.crop_size} x {spec.crop_size} (offset rounded: {spec.crop_offset});
4. scale by {spec.scale:.10g} and normalise per channel with mean {list(spec.mean)} and std {list(spec.std)};
5. lay out as {spec.layout} (channels first) and stack the images into a batch.

`client.py` does this with edgeclf's reference preprocessing (`edgeclf.preprocess.preprocess`, which
the C runtime reproduces) and asks Triton over HTTP:

```
pip install "tritonclient[http]" edgeclf
python client.py IMAGE [IMAGE ...] --url localhost:8000 --model {repo.default_model}
```

A resize other than the one above (for example OpenCV's default bilinear) changes the predictions.

## What was checked when this repository was written

Each `config.pbtxt` was parsed with Triton's own model-config protobuf where `tritonclient` was
installed; the appended `probabilities` outputs were run on ONNX Runtime / OpenVINO and compared
with the bundle's model. Triton itself was not run by edgeclf.
"""


CLIENT = '''"""Classify images with the Triton model repository written by `edgeclf triton`.

    python client.py IMAGE [IMAGE ...] [--url localhost:8000] [--model NAME] [--top-k 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
INFO = json.loads((HERE / "edgeclf-triton.json").read_text(encoding="utf-8"))


def make_input(paths: list[str]) -> np.ndarray:
    """The model's input batch: edgeclf's reference preprocessing of each image."""
    from edgeclf.preprocess import PreprocessSpec, preprocess

    spec = PreprocessSpec.from_dict(INFO["preprocess"])
    return np.stack([preprocess(Image.open(p).convert("RGB"), spec) for p in paths]).astype(np.float32)


def main() -> None:
    import tritonclient.http as http

    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="+")
    ap.add_argument("--url", default="localhost:8000")
    ap.add_argument("--model", default=INFO["default_model"])
    ap.add_argument("--top-k", type=int, default=5)
    a = ap.parse_args()
    model = next(m for m in INFO["models"] if m["name"] == a.model)
    x = make_input(a.images)
    inp = http.InferInput(model["inputs"][0]["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = model["outputs"][0]["name"]
    res = http.InferenceServerClient(a.url).infer(a.model, [inp], outputs=[http.InferRequestedOutput(out)])
    scores = res.as_numpy(out)
    if out != "probabilities":  # a TensorRT engine: calibrate on the client
        z = scores / INFO["temperature"]
        z = np.exp(z - z.max(axis=1, keepdims=True))
        scores = z / z.sum(axis=1, keepdims=True)
    for path, p in zip(a.images, scores):
        top = np.argsort(-p)[: a.top_k]
        print(path, ", ".join(f"{INFO['labels'][i]} {p[i]:.3f}" for i in top))


if __name__ == "__main__":
    main()
'''


def write_repository(
    bundle_dir: Path,
    out: Path,
    *,
    name: str | None = None,
    max_batch: int = 8,
    max_wait_ms: float = 2.0,
    instances: int = 1,
    device: str = "cpu",
    force: bool = False,
) -> TritonRepository:
    """Write a Triton model repository for the bundle at ``bundle_dir`` into ``out``.

    The repository is written into a temporary folder beside ``out`` and renamed into place:
    an error (a damaged bundle, a model that fails its check) leaves ``out`` as it was.
    """
    from edgeclf.export.bundle import read_bundle

    if max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {max_batch}")
    if instances < 1:
        raise ConfigError(f"--instances must be at least 1, got {instances}")
    if max_wait_ms < 0:
        raise ConfigError(f"--max-wait-ms must be >= 0, got {max_wait_ms}")
    if device not in ("cpu", "gpu"):
        raise ConfigError(f"--device must be cpu or gpu, got {device!r}")
    bundle_dir, out = Path(bundle_dir), Path(out)
    manifest = read_bundle(bundle_dir, verify=True)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not force:
        raise ConfigError(f"{out} exists and is not empty; pass --force to replace it")
    base = model_name(name or manifest.name)
    ok = [a for a in manifest.artifacts if a.status == "ok"]
    onnx_fp32 = [a for a in ok if a.format == "onnx" and a.precision == "fp32"]
    if not onnx_fp32:
        raise ConfigError(f"bundle {bundle_dir} has no shipped fp32 ONNX model to serve")
    ordered = onnx_fp32[:1] + [a for a in ok if a is not onnx_fp32[0]]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        models: list[TritonModel] = []
        skipped: list[str] = []
        for i, a in enumerate(ordered):
            mname = base if i == 0 else f"{base}_{a.format}_{a.precision}"
            vdir = tmp / mname / "1"
            src = bundle_dir / a.file
            if a.format == "onnx":
                ins, outs, diff = _onnx_with_probabilities(src, vdir / "model.onnx", manifest.temperature)
                m = TritonModel(mname, "onnxruntime_onnx", a.file, a.precision, ins, outs, max_prob_diff=diff)
            elif a.format == "openvino":
                ins, outs, diff = _openvino_with_probabilities(src, vdir, manifest.temperature)
                m = TritonModel(mname, "openvino", a.file, a.precision, ins, outs, max_prob_diff=diff)
            elif a.format == "tensorrt":
                vdir.mkdir(parents=True)
                shutil.copyfile(src, vdir / "model.plan")
                # the engine was built from the bundle's ONNX model: its tensor names and shapes
                first = models[0]
                m = TritonModel(
                    mname,
                    "tensorrt_plan",
                    a.file,
                    a.precision,
                    first.inputs,
                    [t for t in first.outputs if t["name"] != PROBABILITIES],
                )
            else:
                skipped.append(f"{a.file}: no Triton backend for format {a.format!r}")
                continue
            (tmp / mname / "labels.txt").write_text("\n".join(manifest.labels) + "\n", encoding="utf-8")
            text = config_pbtxt(m, max_batch, max_wait_ms, instances, device)
            try:
                parse_config(text)
            except ImportError:
                pass  # tritonclient not installed: the text is the tested template
            (tmp / mname / "config.pbtxt").write_text(text, encoding="utf-8")
            models.append(m)
        repo = TritonRepository(out, bundle_dir.name, models[0].name, models, skipped)
        for m in models:
            m.files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted((tmp / m.name).rglob("*")) if p.is_file()}
        (tmp / "README.md").write_text(_readme(repo, manifest, max_batch), encoding="utf-8")
        (tmp / "client.py").write_text(CLIENT, encoding="utf-8")
        write_json(
            tmp / "edgeclf-triton.json",
            {
                "version": 1,
                "bundle": {
                    "name": manifest.name,
                    "path": str(bundle_dir),
                    "manifest_sha256": sha256_file(bundle_dir / "edgeclf.json"),
                },
                "labels": manifest.labels,
                "temperature": manifest.temperature,
                "preprocess": manifest.preprocess,
                "default_model": repo.default_model,
                "models": [m.to_dict() for m in models],
                "skipped": skipped,
            },
        )
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return repo
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
