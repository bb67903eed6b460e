"""`edgeclf triton`: the model repository a Triton Inference Server loads, checked with Triton's own
model-config protobuf and against the bundle's models (Triton itself cannot run here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from edgeclf._io import sha256_file
from edgeclf.errors import ConfigError, EdgeclfError
from edgeclf.export.bundle import ArtifactEntry, FileEntry, read_bundle, write_manifest
from edgeclf.serve.triton import PROBABILITIES, model_name, parse_config, write_repository
from tests.conftest import blob_image, make_synthetic_bundle

pytest.importorskip("tritonclient.grpc.model_config_pb2")

LABELS = ("cat", "dog", "fox", "owl")
T = 1.7


def _entry(bundle: Path, file: str, fmt: str, runtime: str, precision: str, extra: list[str] = ()) -> ArtifactEntry:
    p = bundle / file
    return ArtifactEntry(
        file=file,
        format=fmt,
        runtime=runtime,
        precision=precision,
        sha256=sha256_file(p),
        size_bytes=p.stat().st_size,
        status="ok",
        extra_files=[FileEntry(file=e, sha256=sha256_file(bundle / e), size_bytes=(bundle / e).stat().st_size) for e in extra],
    )


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    """A synthetic bundle with ONNX fp32, an OpenVINO IR of it and a (stand-in) TensorRT engine."""
    import openvino as ov

    b = make_synthetic_bundle(tmp_path / "bundle", crop=32, resize=40, labels=LABELS, temperature=T)
    ov.save_model(ov.convert_model(str(b / "model.onnx")), str(b / "model.fp32.xml"), compress_to_fp16=False)
    (b / "model.fp16.trt10.3-NVIDIA_Orin.engine").write_bytes(b"engine bytes built on the device")
    m = read_bundle(b)
    arts = [
        *m.artifacts,
        _entry(b, "model.fp32.xml", "openvino", "openvino", "fp32", ["model.fp32.bin"]),
        _entry(b, "model.fp16.trt10.3-NVIDIA_Orin.engine", "tensorrt", "tensorrt", "fp16"),
    ]
    write_manifest(b, m.model_copy(update={"artifacts": arts, "name": "pets v1"}))
    return b


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_repository_configs_parse_and_match_the_models(bundle: Path, tmp_path: Path) -> None:
    repo = write_repository(bundle, tmp_path / "repo", max_batch=16, max_wait_ms=3, instances=2)
    root = tmp_path / "repo"
    assert repo.default_model == "pets_v1" == model_name("pets v1")
    assert [m.name for m in repo.models] == ["pets_v1", "pets_v1_openvino_fp32", "pets_v1_tensorrt_fp16"]
    for m in repo.models:
        cfg = parse_config((root / m.name / "config.pbtxt").read_text())
        assert cfg.name == m.name and cfg.max_batch_size == 16
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 3000
        assert max(cfg.dynamic_batching.preferred_batch_size) == 16
        assert cfg.instance_group[0].count == 2
        assert (root / m.name / "labels.txt").read_text().split() == list(LABELS)
        assert [i.name for i in cfg.input] == ["x"] and list(cfg.input[0].dims) == [3, 32, 32]
        assert all(list(o.dims) == [len(LABELS)] for o in cfg.output)
        labelled = [o.name for o in cfg.output if o.label_filename]
        assert labelled == ([PROBABILITIES] if m.platform != "tensorrt_plan" else [])
    onnx_cfg = parse_config((root / "pets_v1" / "config.pbtxt").read_text())
    assert onnx_cfg.platform == "onnxruntime_onnx" and onnx_cfg.instance_group[0].kind == onnx_cfg.instance_group[0].KIND_CPU
    ov_cfg = parse_config((root / "pets_v1_openvino_fp32" / "config.pbtxt").read_text())
    assert ov_cfg.backend == "openvino" and sorted(p.name for p in (root / "pets_v1_openvino_fp32" / "1").iterdir()) == [
        "model.bin",
        "model.xml",
    ]
    trt_cfg = parse_config((root / "pets_v1_tensorrt_fp16" / "config.pbtxt").read_text())
    assert trt_cfg.platform == "tensorrt_plan" and trt_cfg.instance_group[0].kind == trt_cfg.instance_group[0].KIND_GPU
    assert (root / "pets_v1_tensorrt_fp16" / "1" / "model.plan").read_bytes() == b"engine bytes built on the device"

    # the ONNX model's own I/O is what config.pbtxt declares, batch dimension dynamic
    model = onnx.load(str(root / "pets_v1" / "1" / "model.onnx"))
    io = {v.name: [d.dim_value or -1 for d in v.type.tensor_type.shape.dim] for v in [*model.graph.input, *model.graph.output]}
    for t in [*onnx_cfg.input, *onnx_cfg.output]:
        assert io[t.name] == [-1, *t.dims]

    # the appended output is the bundle's calibrated probabilities; logits are untouched
    x = np.random.default_rng(1).normal(size=(5, 3, 32, 32)).astype(np.float32)
    ref = ort.InferenceSession(str(bundle / "model.onnx")).run(None, {"x": x})[0]
    logits, probs = ort.InferenceSession(str(root / "pets_v1" / "1" / "model.onnx")).run(["logits", PROBABILITIES], {"x": x})
    assert np.array_equal(logits, ref)
    np.testing.assert_allclose(probs, _softmax(ref / T), atol=1e-6)

    import openvino as ov

    got = ov.Core().compile_model(
        str(root / "pets_v1_openvino_fp32" / "1" / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )(x)
    by_name = {k.get_any_name(): np.asarray(v) for k, v in got.items()}
    np.testing.assert_allclose(by_name[PROBABILITIES], _softmax(ref / T), atol=1e-5)
    np.testing.assert_allclose(by_name["logits"], ref, atol=1e-5)

    # the repository's record: every file with its hash, the source bundle
    info = json.loads((root / "edgeclf-triton.json").read_text())
    assert info["default_model"] == "pets_v1" and info["labels"] == list(LABELS) and info["temperature"] == T
    assert info["bundle"]["manifest_sha256"] == sha256_file(bundle / "edgeclf.json")
    for m in info["models"]:
        for rel, digest in m["files"].items():
            assert sha256_file(root / rel) == digest
    readme = (root / "README.md").read_text()
    assert "resize so the shorter side is 40 px (bicubic" in readme and "centre-crop 32 x 32" in readme
    assert "Triton itself was not run" in readme


def test_client_preprocessing_is_the_reference(bundle: Path, tmp_path: Path) -> None:
    from edgeclf.preprocess import PreprocessSpec, preprocess

    write_repository(bundle, tmp_path / "repo")
    img = tmp_path / "a.png"
    blob_image(61, 47).save(img)
    spec = importlib.util.spec_from_file_location("triton_client", tmp_path / "repo" / "client.py")
    assert spec is not None and spec.loader is not None
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    x = client.make_input([str(img)])
    ref = preprocess(Image.open(img).convert("RGB"), PreprocessSpec.from_dict(read_bundle(bundle).preprocess))
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    assert np.array_equal(x[0], ref)


def test_tampered_bundle_or_existing_output_loses_nothing(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        write_repository(bundle, out)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-1] ^= 1
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(EdgeclfError, match="does not match its SHA-256"):
        write_repository(bundle, out, force=True)
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".repo")] == []


def test_force_replaces_and_options_are_checked(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    write_repository(bundle, out)
    write_repository(bundle, out, force=True, name="other")
    assert (out / "other" / "config.pbtxt").is_file() and not (out / "pets_v1").exists()
    for kwargs, msg in [({"max_batch": 0}, "max-batch"), ({"instances": 0}, "instances"), ({"device": "tpu"}, "device")]:
        with pytest.raises(ConfigError, match=msg):
            write_repository(bundle, tmp_path / "x", **kwargs)


def test_cli_writes_the_repository(bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgeclf.cli import app

    r = CliRunner().invoke(app, ["triton", str(bundle), "--out", str(tmp_path / "repo"), "--json", "--device", "gpu"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["default_model"] == "pets_v1" and len(doc["models"]) == 3
    cfg = parse_config((tmp_path / "repo" / "pets_v1" / "config.pbtxt").read_text())
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
