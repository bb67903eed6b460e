"""`edgeclf build`: stage bookkeeping, the whole chain on a tiny data set, resume, budgets."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from edgeclf.build import BuildError, BuildOptions, Stages, build, data_listing_key
from edgeclf.build.results import BuildRun, StageResult
from tests.conftest import make_clean_dataset


class _Count(StageResult):
    n: int


def test_stages_skip_redo_and_record(tmp_path: Path) -> None:
    calls: list[str] = []
    out = tmp_path / "o.txt"

    def work() -> _Count:
        calls.append("x")
        out.write_text("done")
        return _Count(n=len(calls))

    s = Stages(tmp_path, lambda m: None)
    assert s.run("a", {"k": 1}, [out], work, _Count) == _Count(n=1)
    assert Stages(tmp_path, lambda m: None).run("a", {"k": 1}, [out], work, _Count) == _Count(n=1)  # cached
    assert len(calls) == 1
    assert json.loads((tmp_path / "stages" / "a.json").read_text())["result"] == {"n": 1}
    assert Stages(tmp_path, lambda m: None).run("a", {"k": 2}, [out], work, _Count) == _Count(n=2)  # inputs changed
    out.unlink()
    assert Stages(tmp_path, lambda m: None).run("a", {"k": 2}, [out], work, _Count) == _Count(n=3)  # output gone

    def boom() -> _Count:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        Stages(tmp_path, lambda m: None).run("b", {}, [], boom, _Count)
    assert not (tmp_path / "stages" / "b.json").exists()  # a failed stage never looks finished


def test_data_key_follows_the_files(tmp_path: Path) -> None:
    root = make_clean_dataset(tmp_path / "d", {"a": 3, "b": 3})
    k = data_listing_key(root)
    assert data_listing_key(root) == k
    next(iter(sorted((root / "a").iterdir()))).unlink()
    assert data_listing_key(root) != k


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuildRun, BuildOptions]:
    base = tmp_path_factory.mktemp("build")
    data = make_clean_dataset(base / "data", {"a": 10, "b": 10, "c": 10})
    opts = BuildOptions(
        profile="x86-64-avx512",
        data_dir=data,
        out=base / "out",
        epochs=1,
        image_size=64,
        robustness=False,
        calibration_images=8,
        workers=0,
        measure=True,
    )
    res = build(opts)
    return base / "out", res, opts


def test_build_end_to_end(tiny_build: tuple[Path, BuildRun, BuildOptions]) -> None:
    out, res, _ = tiny_build
    assert [s.stage for s in res.stages] == [
        "audit",
        "split",
        "select",
        "train",
        "evaluate",
        "export",
        "benchmark",
        "package",
        "report",
    ]
    r = res.results
    assert r.audit.num_images == 30 and r.audit.num_classes == 3
    # the most accurate fitting candidate with weights here (lite0/1/2 all are installed)
    usable = [c for c in json.loads((out / "selection.json").read_text())["candidates"] if c["fits"] and c["weights_here"]]
    assert r.select.backbone == max(usable, key=lambda c: (c["accuracy"] or 0, -c["latency_ms_p95"]))["backbone"]
    sel = json.loads((out / "selection.json").read_text())
    assert len(sel["candidates"]) > 10 and any(not c["weights_here"] for c in sel["candidates"])
    ledger = (out / "run" / "test_ledger.jsonl").read_text().splitlines()
    assert len(ledger) == 1  # the test split was touched, once
    assert {"onnx/fp32", "openvino/fp32"} <= set(r.export.artifacts)
    # int8 on this build's 6 validation images: shipped only if its gates could be decided; here one image
    # would swing them, so it must be named "insufficient evidence" with the rule (statistically sound gates)
    int8 = next(row for row in r.export.parity if (row.format, row.precision) == ("onnx", "int8"))
    assert ("onnx/int8" in r.export.artifacts) == (int8.status == "ok")
    assert int8.status == "ok" or (
        int8.status in ("insufficient_evidence", "parity_failed")
        and "insufficient evidence" in (int8.error or "") + str(r.export.failed)
    )
    assert any(row.format.startswith("c-runtime") for row in r.export.parity)
    assert r.benchmark.source == "measured" and r.benchmark.latency_ms_p95 > 0
    pkg = out / r.package.package
    with tarfile.open(pkg) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]
    for want in [
        "README.md",
        "bundle/edgeclf.json",
        "include/edgeclf/edgeclf.h",
        "examples/classify.c",
        "src/CMakeLists.txt",
        "lib/cmake/edgeclf/edgeclfConfig.cmake",
    ]:
        assert f"{top}/{want}" in names, want
    assert any(n.startswith(f"{top}/lib/libedgeclf.so") for n in names)
    report = (out / "report.md").read_text()
    assert "| backbone | weights here |" in report and "MEASURED" in report
    assert f"{r.select.backbone} **(chosen)**" in report and "no pretrained weights here" in report
    assert "| candidate (validation) | macro-F1 | shipped |" in report and "Automatic recipe choices" in report
    assert r.benchmark.rows and r.benchmark.rows[0].configuration == "selected"
    assert r.benchmark.rows[0].precision == sel["choice"]["precision"]
    # build.json is the BuildRecord of this build's results
    record = json.loads((out / "build.json").read_text())
    assert record["benchmark"] == r.benchmark.model_dump(mode="json") and record["test"] == r.evaluate.test.model_dump()
    # each stage's record holds its result as the model writes it
    for name in ("audit", "split", "export", "package"):
        assert json.loads((out / "stages" / f"{name}.json").read_text())["result"] == getattr(r, name).model_dump(mode="json")


def test_build_resumes_finished_stages(tiny_build: tuple[Path, BuildRun, BuildOptions]) -> None:
    out, first, opts = tiny_build
    before = (out / "run" / "checkpoints" / "best.pt").stat().st_mtime_ns
    again = build(opts)
    assert all(s.status == "cached" for s in again.stages)
    assert (out / "run" / "checkpoints" / "best.pt").stat().st_mtime_ns == before
    # a changed budget re-selects (the choice stays) and redoes only what depends on it
    (out / "stages" / "benchmark.json").unlink()
    third = build(opts)
    status = {s.stage: s.status for s in third.stages}
    assert status["train"] == "cached" and status["benchmark"] == "done"


def test_estimate_is_labelled_for_another_device(tiny_build: tuple[Path, BuildRun, BuildOptions], tmp_path: Path) -> None:
    from edgeclf.build import _stage_benchmark

    out, res, opts = tiny_build
    o = BuildOptions(profile="jetson-orin", data_dir=opts.data_dir, out=out)
    b = _stage_benchmark(o, out, res.results.select.model_copy(update={"latency_ms_p95_estimate": 3.0}), lambda m: None)
    assert b.source == "estimate" and "GPU" in b.why and b.latency_ms_p95 == 3.0
    assert "rows" not in b.model_dump(mode="json")  # an estimate has no timed rows


def test_no_candidate_fits_names_the_closest(tmp_path: Path) -> None:
    data = make_clean_dataset(tmp_path / "data", {"a": 5, "b": 5})
    with pytest.raises(BuildError, match="select:.*closest"):
        build(BuildOptions(profile="raspberry-pi-5", data_dir=data, out=tmp_path / "out", budget_ms=0.01))
    assert (tmp_path / "out" / "stages" / "split.json").is_file()  # finished stages stay finished
    assert not (tmp_path / "out" / "stages" / "select.json").exists()


def test_measure_times_the_choice_instead_of_estimating(tmp_path: Path) -> None:
    from edgeclf.build import _stage_select, host_is_target
    from edgeclf.profiles import load_profile

    if not host_is_target(load_profile("x86-64-avx512"))[0]:
        pytest.skip("this host is not an x86-64-avx512: --measure estimates instead")
    opts = BuildOptions(
        profile="x86-64-avx512", data_dir=tmp_path, out=tmp_path, measure=True, backbones=["tf_efficientnet_lite0"]
    )
    lines: list[str] = []
    res = _stage_select(opts, tmp_path, lines.append)
    assert res.latency_source == "measured"
    assert any("measuring tf_efficientnet_lite0" in line for line in lines)
    doc = json.loads((tmp_path / "selection.json").read_text())
    measured = [c for c in doc["candidates"] if c["latency_source"] == "measured"]
    assert measured and all(c["latency_ms_p95"] > 0 for c in measured)
    # a budget the measured time cannot meet is refused, naming the measured candidate
    with pytest.raises(Exception, match="closest"):
        _stage_select(
            BuildOptions(
                profile="x86-64-avx512",
                data_dir=tmp_path,
                out=tmp_path,
                measure=True,
                backbones=["tf_efficientnet_lite0"],
                budget_ms=0.001,
            ),
            tmp_path,
        )


# The JPEG case: the example decodes with stb_image, Python with PIL (libjpeg-turbo); they
# round the IDCT, chroma upsampling and colour conversion differently (at most 3 levels of
# 255 per pixel on real JPEGs), so the probability may move a little: measured under 1e-6
# on the tiny build's model (nearly flat after one epoch), under 2e-3 with the
# position-sensitive model of tests/test_runtime_c.py. Top-1 must not move.
JPEG_PROB_ATOL = 1e-2


@pytest.mark.cpp
def test_device_package_builds_and_runs_on_its_own(tiny_build: tuple[Path, BuildRun, BuildOptions], tmp_path: Path) -> None:
    """The tarball, unpacked elsewhere: the example builds against its CMake package and runs
    with no Python environment and no library path, on a PNG of the data set as it is, a
    PPM and a JPEG, giving the same top-1 as Python (and the README's commands work)."""
    import shlex
    import shutil
    import subprocess

    import numpy as np
    from PIL import Image

    from edgeclf.runtime import Classifier
    from edgeclf.runtime.reference import predict

    if shutil.which("cmake") is None or shutil.which("cc") is None:
        pytest.skip("needs cmake and a C compiler")
    out, res, opts = tiny_build
    with tarfile.open(out / res.results.package.package) as tar:
        tar.extractall(tmp_path, filter="data")
    root = next(tmp_path.iterdir())
    assert (root / "examples" / "third_party" / "stb" / "LICENSE").is_file()
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "./build-example/edgeclf_classify bundle image.jpg" in readme
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run(
        ["cmake", "-S", "examples", "-B", "build-example", f"-DCMAKE_PREFIX_PATH={root}"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(["cmake", "--build", "build-example"], cwd=root, env=env, check=True, capture_output=True)
    exe = root / "build-example" / "edgeclf_classify"

    def classify(image: Path, backend: str) -> tuple[str, list[list[str]]]:
        done = subprocess.run(
            [str(exe), "bundle", str(image)],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            env={**env, "EDGECLF_BACKEND": backend, "EDGECLF_PRECISION": "fp32"},
        )
        return done.stdout, [line.split("\t") for line in done.stdout.splitlines() if not line.startswith("#")]

    png = next(Path(opts.data_dir).glob("b/*.png"))  # the data set's own file
    ppm, jpg = tmp_path / "image.ppm", tmp_path / "image.jpg"
    Image.open(png).convert("RGB").save(ppm)
    Image.open(png).convert("RGB").save(jpg, quality=95)
    want = predict(root / "bundle", [ppm], top_k=1)[0].label
    want_jpg = predict(root / "bundle", [jpg], top_k=1)[0].label
    pixels = np.asarray(Image.open(ppm).convert("RGB"))
    for backend in ("onnxruntime", "openvino"):
        stdout, lines = classify(ppm, backend)
        assert f"{backend} fp32" in stdout
        assert lines[0][1] == want
        with Classifier(root / "bundle", backend=backend, precision="fp32") as clf:
            top = clf.classify(pixels, top_k=1)[0]
            top_jpg = clf.classify(jpg, top_k=1)[0]  # PIL's decode of the JPEG
        assert top.label == want and np.isclose(float(lines[0][2]), top.probabilities[0], atol=1e-5)
        assert classify(png, backend)[1] == lines  # the PNG as it is: the same pixels as the PPM
        jl = classify(jpg, backend)[1]
        assert jl[0][1] == want_jpg == top_jpg.label, (jl, top_jpg)
        assert abs(float(jl[0][2]) - top_jpg.probabilities[0]) < JPEG_PROB_ATOL, (jl, top_jpg)

    # the README's data-set line runs as written, from the data set's parent folder
    line = next(
        ln
        for ln in readme.splitlines()
        if ln.startswith("./build-example/edgeclf_classify bundle ") and "test image of the data set" in ln
    )
    args = shlex.split(line, comments=True)
    image = Path(opts.data_dir).parent / args[2]
    assert image.is_file(), line
    assert classify(image, "onnxruntime")[1][0][1] == predict(root / "bundle", [image], top_k=1)[0].label
