"""Shared fixtures: synthetic images made here, real data sets from ../shared when present."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def pytest_configure(config: pytest.Config) -> None:
    """Parallel workers share the cores: each worker's torch (and the pipeline's ONNX Runtime copy of
    a model, which follows torch's thread count) gets cores // workers threads, so two workers on two
    cores do not run four threads that wait on each other. Subprocesses inherit it (OMP_NUM_THREADS)."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        from edgeclf._provenance import usable_cpus

        threads = max(1, usable_cpus() // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import torch

        torch.set_num_threads(threads)


def shared_dataset(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"real data set {name} not available (expected at ../shared/datasets/{name})")
    return path


def png_bytes(img: Image.Image | np.ndarray) -> bytes:
    """An image (PIL or H x W x C uint8) encoded as PNG."""
    import io

    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def blob_image(seed: int, size: int = 64, mode: str = "RGB") -> Image.Image:
    """A smooth random image: distinct per seed under a perceptual hash, robust to re-encoding."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    im = Image.fromarray(small, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    return im.convert(mode) if mode != "RGB" else im


def save(im: Image.Image, path: Path, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def png_bomb(path: Path, width: int = 60_000, height: int = 60_000) -> Path:
    """A tiny valid PNG whose header claims ``width`` x ``height`` pixels."""
    small = Path(str(path) + ".src.png")
    Image.new("L", (4, 4)).save(small)
    data = bytearray(small.read_bytes())
    small.unlink()
    # IHDR chunk: 8-byte signature, 4 length, 4 type, then width/height; CRC over type+data.
    ihdr_start = 8 + 4
    data[ihdr_start + 4 : ihdr_start + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr_start : ihdr_start + 4 + 13])) & 0xFFFFFFFF
    data[ihdr_start + 17 : ihdr_start + 21] = struct.pack(">I", crc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def make_clean_dataset(root: Path, classes: dict[str, int], start_seed: int = 0) -> Path:
    """An ImageFolder tree of distinct blob images: ``{class: count}``."""
    seed = start_seed
    for cls, n in classes.items():
        for i in range(n):
            save(blob_image(seed), root / cls / f"{cls}_{i:03d}.png")
            seed += 1
    return root


@pytest.fixture
def clean_dataset(tmp_path: Path) -> Path:
    return make_clean_dataset(tmp_path / "data", {"cat": 12, "dog": 10, "fox": 8})


def make_tiny_manifest(base: Path) -> Path:
    """3 classes x 10 distinct images, split 60/20/20, with the summary that names the data folder."""
    import json

    from edgeclf.data._index import index_dataset
    from edgeclf.data.manifest import write_manifest
    from edgeclf.data.split import SplitConfig, make_split

    root = make_clean_dataset(base / "data", {"a": 10, "b": 10, "c": 10})
    m = base / "splits.csv"
    write_manifest(m, make_split(index_dataset(root, workers=1), SplitConfig(val=0.2, test=0.2)).rows)
    (base / "splits.summary.json").write_text(json.dumps({"data_dir": str(root)}))
    return m


_TINY_MASTER: dict[str, Path] = {}


def make_tiny_run(base: Path) -> Path:
    """A trained tiny run (lite0 at 64 px, one fine-tuning epoch) in ``base / "run"``.

    Trained once per test session into a private folder and copied (run, manifest, summary) for
    every caller: the copies are independent run folders (their own ledger, evaluations,
    decision policy), the data and the decode cache are shared and never written by the tests.
    """
    import shutil

    from edgeclf.train import load_config, train

    master = _TINY_MASTER.get("base")
    if master is None or not (master / "run" / "checkpoints" / "best.pt").is_file():
        master = Path(base).parent / "tiny-run-master"
        shutil.rmtree(master, ignore_errors=True)
        master.mkdir(parents=True)
        m = make_tiny_manifest(master)
        cfg = load_config(
            None,
            {
                "data.manifest": m,
                "data.workers": 0,
                "data.cache_dir": str(master / "cache"),
                "model.image_size": 64,
                "probe.epochs": 5,
                "finetune.epochs": 1,
                "batch_size": 8,
                "amp": "off",
            },
        )
        train(cfg, master / "run")
        _TINY_MASTER["base"] = master
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    shutil.copytree(master / "run", base / "run")
    for name in ("splits.csv", "splits.summary.json"):
        shutil.copy2(master / name, base / name)
    return base / "run"


def tiny_onnx_bytes(classes: int, crop: int, seed: int = 0) -> bytes:
    """A real ONNX classifier (channel means -> linear layer), N x 3 x crop x crop -> N x classes."""
    from onnx import TensorProto, helper

    n = classes
    rng = np.random.default_rng(seed)
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, n], rng.normal(size=3 * n).astype(np.float32).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [n], rng.normal(size=n).astype(np.float32).tolist())
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["mw"]),
            helper.make_node("Add", ["mw", "b"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, crop, crop])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n])],
        [w, b, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def make_synthetic_bundle(
    dest: Path,
    *,
    crop: int = 32,
    resize: int | None = None,
    interpolation: str = "bicubic",
    labels: tuple[str, ...] = ("a", "b", "c"),
    temperature: float = 1.5,
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    decision: object = None,
) -> Path:
    """A small but real bundle: a tiny ONNX classifier (channel means -> linear layer) with a
    manifest written through the bundle's own model. For runtime tests that need many specs
    and fast inference, not accuracy."""

    from edgeclf._io import sha256_file
    from edgeclf.export.bundle import MIN_RUNTIME_VERSION, SCHEMA_VERSION, ArtifactEntry, BundleManifest, write_manifest
    from edgeclf.preprocess import PreprocessSpec

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model.onnx").write_bytes(tiny_onnx_bytes(len(labels), crop))
    spec = PreprocessSpec(
        resize_size=resize or crop,
        crop_size=crop,
        interpolation=interpolation,  # type: ignore[arg-type]
        mean=mean,
        std=std,
    )
    p = dest / "model.onnx"
    art = ArtifactEntry(
        file="model.onnx",
        format="onnx",
        runtime="onnxruntime",
        precision="fp32",
        sha256=sha256_file(p),
        size_bytes=p.stat().st_size,
        status="ok",
    )
    manifest = BundleManifest(
        schema_version=SCHEMA_VERSION,
        min_runtime_version=MIN_RUNTIME_VERSION,
        name="synthetic",
        created="2026-01-01T00:00:00Z",
        creator={"edgeclf": "test"},
        labels=list(labels),
        preprocess=spec.to_dict(),
        temperature=temperature,
        source_run={},
        dataset_fingerprint="0" * 64,
        calibration_data={},
        metrics={},
        artifacts=[art],
        decision=decision,
    )
    write_manifest(dest, manifest)
    return dest


def record_decoded(manifest: Path, monkeypatch) -> tuple[set[str], set[str]]:  # noqa: ANN001
    """(the manifest's test paths, the set that fills with every image path training decodes)."""
    from edgeclf.data.manifest import read_manifest
    from edgeclf.train.data import DecodeCache

    test_paths = {r.path for r in read_manifest(manifest).split_rows("test")}
    seen: set[str] = set()
    real_get = DecodeCache.get

    def spy(self, path, sha):  # noqa: ANN001, ANN202
        seen.add(Path(path).relative_to(Path(path).parents[1]).as_posix())
        return real_get(self, path, sha)

    monkeypatch.setattr(DecodeCache, "get", spy)
    return test_paths, seen
