"""edgeclf.bench, `edgeclf bench` and the benchmark suites, on a tiny real bundle.

No test asserts on how fast anything is: timings only feed the machinery (statistics,
verdicts against budgets chosen so that no machine can miss or meet them, JSON, tables).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeclf.bench import (
    BenchError,
    Environment,
    Latency,
    ProfileInfo,
    RunnerUnavailable,
    budget_verdict,
    compare,
    cpu_model,
    library_versions,
    parse_batches,
    parse_report,
    percentile,
    read_report,
    register_runner,
    run_bench,
    runner_factories,
    unregister_runner,
    write_report,
)
from edgeclf.errors import ConfigError
from tests.conftest import REPO

pytest.importorskip("onnxruntime")

LABELS = ["a", "b", "c"]
# No call of any runtime finishes within a nanosecond, and none takes a million seconds:
# budgets that make the verdict certain on any machine.
IMPOSSIBLE_MS = 0.000001
GENEROUS_MS = 1_000_000_000


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle: a tiny CNN at 32 px as ONNX fp32 and TorchScript fp32, with its manifest."""
    import torch
    from torch import nn

    from edgeclf.export.bundle import (
        MIN_RUNTIME_VERSION,
        SCHEMA_VERSION,
        ArtifactEntry,
        BundleManifest,
        file_entry,
        write_manifest,
    )
    from edgeclf.export.exporters import export_artifact
    from edgeclf.preprocess import PreprocessSpec

    out = tmp_path_factory.mktemp("tiny-bundle")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, len(LABELS))
    ).eval()
    spec = PreprocessSpec(resize_size=36, crop_size=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    entries = []
    for fmt in ("onnx", "torchscript"):
        art = export_artifact(fmt, "fp32", model, spec, out, None, json.dumps({"labels": LABELS}))
        assert art.status == "ok", art.error
        e = file_entry(out, art.file)
        entries.append(
            ArtifactEntry(
                file=art.file,
                format=art.format,
                runtime=art.runtime,
                precision=art.precision,
                sha256=e.sha256,
                size_bytes=e.size_bytes,
                extra_files=[file_entry(out, f) for f in art.extra_files],
                status="ok",
            )
        )
    write_manifest(
        out,
        BundleManifest(
            schema_version=SCHEMA_VERSION,
            min_runtime_version=MIN_RUNTIME_VERSION,
            name="tiny",
            created="2025-01-01",
            creator={"edgeclf": "test"},
            labels=LABELS,
            preprocess=spec.to_dict(),
            temperature=1.0,
            source_run={},
            dataset_fingerprint="sha256:0",
            calibration_data={},
            metrics={},
            artifacts=entries,
        ),
    )
    return out


def make_profile(path: Path, budget_ms: float) -> Path:
    """The x86-64-avx2 profile with another p95 budget, as a YAML file."""
    text = (REPO / "hardware_profiles" / "x86-64-avx2.yaml").read_text(encoding="utf-8")
    assert "latency_ms_p95: 50 " in text
    path.write_text(
        text.replace("name: x86-64-avx2", "name: test-device").replace("latency_ms_p95: 50 ", f"latency_ms_p95: {budget_ms:f} "),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def report(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    prof = make_profile(tmp_path_factory.mktemp("prof") / "generous.yaml", GENEROUS_MS)
    return run_bench(tiny_bundle, batches=[1, 2], rounds=3, warmup=1, profile=str(prof), image_size=(40, 48))


# --- statistics ------------------------------------------------------------------------


def test_percentile_is_linear_interpolation() -> None:
    xs = [float(x) for x in range(1, 11)]
    assert percentile(xs, 0) == 1 and percentile(xs, 100) == 10
    assert percentile(xs, 50) == 5.5
    assert percentile(xs, 90) == pytest.approx(9.1)
    assert percentile(list(reversed(xs)), 95) == pytest.approx(9.55)  # order of the samples does not matter
    assert percentile([3.0], 99) == 3.0
    vals = np.random.default_rng(0).lognormal(0, 1, 101).tolist()
    for q in (50, 90, 95, 99):
        assert percentile(vals, q) == pytest.approx(float(np.percentile(vals, q)))
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_latency_statistics_and_throughput() -> None:
    lat = Latency.from_seconds([0.004, 0.001, 0.003, 0.002])
    assert (lat.rounds, lat.min_ms, lat.max_ms, lat.mean_ms, lat.p50_ms) == (4, 1.0, 4.0, 2.5, 2.5)
    assert lat.p50_ms <= lat.p90_ms <= lat.p95_ms <= lat.p99_ms <= lat.max_ms
    assert lat.images_per_s(8) == pytest.approx(3200)  # 8 images per 2.5 ms call
    assert Latency.from_seconds([0.002]).stdev_ms == 0.0
    with pytest.raises(ValueError):
        Latency.from_seconds([])


def test_parse_batches() -> None:
    assert parse_batches("8, 1,8") == [1, 8]
    assert parse_batches([4, 2]) == [2, 4]
    for bad in ("", "0", "a,1", "5000"):
        with pytest.raises(ConfigError):
            parse_batches(bad)


def test_cpu_model_and_versions() -> None:
    assert cpu_model("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6338\n") == "Intel(R) Xeon(R) Gold 6338"
    pi = "processor\t: 0\nBogoMIPS\t: 108.00\n\nRevision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
    assert cpu_model(pi, "") == "Raspberry Pi 5 Model B Rev 1.0"
    assert (
        cpu_model("processor\t: 0\nCPU part\t: 0xd42\n", "NVIDIA Jetson Orin Nano Developer Kit\x00")
        == "NVIDIA Jetson Orin Nano Developer Kit"
    )
    assert cpu_model("", "")  # falls back to what platform reports
    v = library_versions()
    assert {"python", "edgeclf", "numpy", "onnxruntime"} <= set(v)


# --- budget verdict ----------------------------------------------------------------------


def _env(machine: str = "x86_64", cpus: int = 2) -> Environment:
    return Environment(cpu_model="Test CPU", machine=machine, system="test", cpu_count=cpus, versions={})


def test_budget_verdict() -> None:
    prof = ProfileInfo(
        name="dev",
        device="Dev board",
        cpu_model="c",
        arch="x86_64",
        threads=4,
        latency_ms_p95=10,
        memory_mb=100,
        runtimes={"onnxruntime": ["fp32", "int8"], "openvino": ["fp32"]},
    )
    assert budget_verdict(prof, "onnxruntime", "fp32", 1, 9.99).verdict == "fits"
    assert budget_verdict(prof, "onnxruntime", "int8", 1, 10.0).verdict == "fits"  # the budget itself fits
    over = budget_verdict(prof, "openvino", "fp32", 1, 10.01)
    assert over.verdict == "over" and "10.01 ms > 10 ms" in over.reason and over.budget_ms_p95 == 10
    batch = budget_verdict(prof, "onnxruntime", "fp32", 8, 1000.0)
    assert batch.verdict == "not_checked" and "batch 1" in batch.reason
    other = budget_verdict(prof, "torch", "fp32", 1, 1000.0)
    assert other.verdict == "not_checked" and "not a runtime of dev" in other.reason
    assert budget_verdict(prof, "openvino", "int8", 1, 1.0).verdict == "not_checked"


def test_profile_info_and_target_notes() -> None:
    from edgeclf.profiles import load_profile

    info = ProfileInfo.from_profile(load_profile("raspberry-pi-5"))
    assert info.arch == "aarch64" and info.latency_ms_p95 == 100 and info.runtimes
    notes = info.notes(_env("x86_64"), threads=2)
    assert "only mean something when measured on the target device" in notes[0]
    assert any("not the target device" in n for n in notes)  # x86 is not a Raspberry Pi
    same_arch = ProfileInfo.from_profile(load_profile("x86-64-avx2")).notes(_env("x86_64", cpus=8), threads=4)
    assert not any("not the target device" in n for n in same_arch)
    assert any("oversubscribed" in n for n in info.notes(_env("aarch64", cpus=2), threads=4))


# --- measuring a real bundle ---------------------------------------------------------------


def test_run_bench_rows(report, tiny_bundle: Path) -> None:
    python_rows = [r for r in report.results if r.runtime != "cpp"]  # cpp: the C runtime's entry-point runner
    assert [(r.runtime, r.format, r.batch) for r in python_rows] == [
        ("onnxruntime", "onnx", 1),
        ("onnxruntime", "onnx", 2),
        ("torch", "torchscript", 1),
        ("torch", "torchscript", 2),
    ]
    cpp_rows = [r for r in report.results if r.runtime == "cpp"]
    assert all(r.format == "onnx" and r.includes_preprocess for r in cpp_rows)
    for r in python_rows:
        lat = r.latency
        assert lat.rounds == 3 and len(r.samples_ms) == 3 and r.warmup == 1 and not r.includes_preprocess
        assert lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p95_ms <= lat.p99_ms <= lat.max_ms
        assert Latency.from_seconds([s / 1000 for s in r.samples_ms]).p95_ms == pytest.approx(lat.p95_ms, abs=1e-3)
        assert r.images_per_s > 0 and r.peak_rss_mb > 0 and r.load_ms > 0
        assert r.rss_delta_mb is None or 0 <= r.rss_delta_mb <= r.peak_rss_mb
    by_key = {(r.runtime, r.batch): r for r in report.results}
    assert by_key[("onnxruntime", 1)].budget.verdict == "fits"  # a budget of a million seconds
    assert by_key[("onnxruntime", 2)].budget.verdict == "not_checked"
    assert by_key[("torch", 1)].budget.verdict == "not_checked"  # TorchScript is not a runtime of the profile
    assert report.profile.name == "test-device" and report.notes
    assert report.environment.cpu_model and "onnxruntime" in report.environment.versions
    assert report.bundle.name == "tiny" and report.bundle.input_size == 32 and report.settings.batches == [1, 2]
    info = report.results[0].extra_info(report.environment, "test-device", "tiny")
    for key in ("profile", "runtime", "precision", "versions", "cpu_model", "p50_ms", "p90_ms", "p99_ms", "peak_rss_mb"):
        assert info[key] is not None, key
    json.dumps(info)  # what pytest-benchmark stores must be JSON


def test_report_json_round_trip(report, tmp_path: Path) -> None:
    path = write_report(tmp_path / "r.json", report)
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text)
    assert doc["kind"] == "edgeclf.bench" and doc["schema_version"] == "1.0.0"
    assert text == json.dumps(doc, sort_keys=True, ensure_ascii=False, indent=2) + "\n"  # canonical
    assert read_report(path) == report
    later = {**doc, "schema_version": "1.4.0", "added_in_1_4": {"x": 1}}  # a later minor version adds a field
    assert parse_report(later).results == report.results
    with pytest.raises(BenchError, match="not supported"):
        parse_report({**doc, "schema_version": "2.0.0"})
    with pytest.raises(BenchError, match="not an edgeclf bench result"):
        parse_report({k: v for k, v in doc.items() if k != "kind"})
    with pytest.raises(BenchError, match="results"):
        parse_report({**doc, "results": [{"runtime": "x"}]})
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(BenchError, match="not a readable JSON"):
        read_report(tmp_path / "bad.json")


def test_filters_and_errors(tiny_bundle: Path) -> None:
    rep = run_bench(tiny_bundle, runtimes=["ort"], precisions=["fp32"], batches="1", rounds=2, warmup=0, image_size=(40, 48))
    assert {r.runtime for r in rep.results} == {"onnxruntime"} and len(rep.results) == 1
    assert rep.settings.runtimes == ["onnxruntime"] and rep.profile is None and rep.notes == []
    none = run_bench(tiny_bundle, runtimes=["openvino"], batches="1", rounds=1, warmup=0, image_size=(40, 48))
    assert none.results == [] and "no openvino artifact" in none.skipped[0].reason
    with pytest.raises(ConfigError, match="unknown runtime nope"):
        run_bench(tiny_bundle, runtimes=["nope"], rounds=1)
    with pytest.raises(ConfigError, match="no artifact at precision int8"):
        run_bench(tiny_bundle, precisions=["int8"], rounds=1)
    with pytest.raises(ConfigError, match="rounds"):
        run_bench(tiny_bundle, rounds=0)


def test_extra_runner_hook(tiny_bundle: Path) -> None:
    calls: list[tuple[int, tuple[int, ...]]] = []

    class StubRunner:  # stands in for the C++ runtime: takes decoded frames
        includes_preprocess = True

        def __call__(self, batch) -> object:
            calls.append((batch.batch, batch.images[0].shape))
            return None

    def stub_factory(request):
        return StubRunner() if request.artifact.format == "onnx" else None  # runs ONNX only

    def unbuilt(request):
        raise RunnerUnavailable("the C++ runtime module is not built")

    class Crashing:
        includes_preprocess = False

        def __call__(self, batch) -> object:
            raise RuntimeError("boom")

    rep = run_bench(
        tiny_bundle,
        runtimes=["cpp", "unbuilt", "crashing"],
        batches=[1],
        rounds=3,
        warmup=2,
        image_size=(40, 48),
        extra_runners={"cpp": stub_factory, "unbuilt": unbuilt, "crashing": lambda r: Crashing()},
    )
    assert [(r.runtime, r.engine, r.format, r.includes_preprocess) for r in rep.results] == [("cpp", "onnxruntime", "onnx", True)]
    assert calls == [(1, (40, 48, 3))] * 5  # 2 warm-up + 3 timed, on frames of the asked size
    reasons = {(s.runtime, s.format): s.reason for s in rep.skipped}
    assert reasons[("unbuilt", "onnx")] == reasons[("unbuilt", "torchscript")] == "the C++ runtime module is not built"
    assert reasons[("crashing", "onnx")].startswith("failed: RuntimeError: boom")

    register_runner("stub-rt", stub_factory)
    try:
        assert "stub-rt" in runner_factories() and "onnxruntime" in runner_factories()
        with pytest.raises(ConfigError, match="registered already"):
            register_runner("stub-rt", stub_factory)
        register_runner("stub-rt", stub_factory, replace=True)
        rep = run_bench(tiny_bundle, runtimes=["stub-rt"], batches=[1], rounds=1, warmup=0, image_size=(40, 48))
        assert [r.runtime for r in rep.results] == ["stub-rt"]
    finally:
        unregister_runner("stub-rt")
    assert "stub-rt" not in runner_factories()
    with pytest.raises(ConfigError, match="built-in"):
        register_runner("onnxruntime", stub_factory)


def test_entry_point_runner(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An installed package adds a runtime through the edgeclf.bench_runners entry-point group."""
    dist = tmp_path / "edgeclf_bench_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: edgeclf-bench-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[edgeclf.bench_runners]\nstub = edgeclf_bench_plugin:factory\nbroken = edgeclf_bench_plugin:no_such_factory\n"
    )
    (tmp_path / "edgeclf_bench_plugin.py").write_text(
        "class Runner:\n"
        "    includes_preprocess = False\n"
        "    def __call__(self, batch):\n"
        "        return batch.tensor.sum()\n"
        "def factory(request):\n"
        "    return Runner() if request.artifact.format == 'onnx' else None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    factories = runner_factories()
    assert "stub" in factories and "broken" not in factories
    assert "could not be loaded" in caplog.text  # a broken plug-in is reported, the others still run
    rep = run_bench(tiny_bundle, runtimes=["stub"], batches=[1], rounds=1, warmup=0, image_size=(40, 48))
    assert [(r.runtime, r.format) for r in rep.results] == [("stub", "onnx")]


# --- comparing results ---------------------------------------------------------------------


def test_compare_reports_and_pytest_benchmark(report, tmp_path: Path) -> None:
    a = write_report(tmp_path / "a" / "run.json", report)
    doc = report.to_json_dict()
    doc["environment"]["cpu_model"] = "Other CPU"
    for r in doc["results"]:
        r["latency"]["p50_ms"] *= 2
    b = tmp_path / "b" / "run.json"
    b.parent.mkdir()
    b.write_text(json.dumps(doc))
    first = report.results[0]
    pb = tmp_path / "pb.json"
    pb.write_text(
        json.dumps(
            {
                "machine_info": {"cpu": {"brand_raw": "Bench CPU"}},
                "datetime": "2025-01-01T00:00:00",
                "benchmarks": [
                    {
                        "name": "test_latency[x]",
                        "extra_info": first.extra_info(report.environment, "test-device", "tiny"),
                        "stats": {"median": 0.5, "mean": 0.5},
                    },
                    {
                        "name": "test_latency[y]",
                        "extra_info": {"runtime": "openvino", "precision": "int8", "batch": 4},
                        "stats": {"median": 0.002, "mean": 0.004},
                    },
                    {"name": "test_index_throughput[1]", "extra_info": {"workers": 1}, "stats": {"median": 1.0}},
                ],
            }
        )
    )
    cmp = compare([a, b, pb])
    assert [s.label for s in cmp.sources] == ["a/run.json", "b/run.json", "pb.json"]  # same names: parent added
    group = [r for r in cmp.rows if r.key == cmp.rows[0].key]
    assert [r.source for r in group] == ["a/run.json", "b/run.json", "pb.json"]
    assert group[0].p50_ratio == 1.0 and group[1].p50_ratio == pytest.approx(2.0, abs=1e-3)
    assert group[2].p50_ms == first.latency.p50_ms  # extra_info wins over pytest-benchmark's own median
    assert group[0].verdict == "fits" and group[2].verdict == "fits"
    fallback = next(r for r in cmp.rows if r.runtime == "openvino")
    assert fallback.p50_ms == pytest.approx(2.0) and fallback.p95_ms is None and fallback.images_per_s == 1000
    assert fallback.cpu_model == "Bench CPU"
    assert cmp.sources[2].ignored == 1 and any("different CPUs" in n for n in cmp.notes)
    assert len(cmp.rows) == 2 * len(report.results) + 2
    with pytest.raises(BenchError, match="neither"):
        (tmp_path / "x.json").write_text("[1, 2]")
        compare([tmp_path / "x.json"])
    with pytest.raises(BenchError, match="at least one"):
        compare([])


# --- command line ----------------------------------------------------------------------------


def test_cli_bench_json_out_table_and_compare(tiny_bundle: Path, tmp_path: Path) -> None:
    from edgeclf.cli import app

    cli = CliRunner()
    out = tmp_path / "r.json"
    res = cli.invoke(
        app,
        [
            "bench",
            str(tiny_bundle),
            "--runtime",
            "onnxruntime",
            "--batch",
            "1,2",
            "--rounds",
            "3",
            "--warmup",
            "1",
            "--json",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["kind"] == "edgeclf.bench" and [r["batch"] for r in doc["results"]] == [1, 2]
    assert json.loads(out.read_text()) == doc

    tight = make_profile(tmp_path / "tight.yaml", IMPOSSIBLE_MS)
    res = cli.invoke(
        app,
        [
            "bench",
            str(tiny_bundle),
            "--runtime",
            "ort",
            "--batch",
            "1",
            "--rounds",
            "2",
            "--warmup",
            "0",
            "--profile",
            str(tight),
            "--out",
            str(tmp_path / "t.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "over" in res.stdout and "only mean something when measured on the target device" in res.stdout
    assert read_report(tmp_path / "t.json").results[0].budget.verdict == "over"

    res = cli.invoke(app, ["bench", "--compare", str(out), str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    assert "×p50" in res.stdout and "r.json" in res.stdout and "t.json" in res.stdout
    res = cli.invoke(app, ["bench", "--compare", str(out), str(tmp_path / "t.json"), "--json"])
    cmp = json.loads(res.stdout)
    assert cmp["kind"] == "edgeclf.bench.compare" and len(cmp["rows"]) == 3

    res = cli.invoke(app, ["bench", str(out)])
    assert res.exit_code == 2 and "--compare" in res.output
    res = cli.invoke(app, ["bench", "--compare", str(out), "--rounds", "3"])
    assert res.exit_code == 2 and "not to --compare" in res.output


def test_cli_user_errors_are_one_line(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeclf.cli import main

    for args, expected in (
        (["bench", str(tiny_bundle), "--batch", "0"], "batch sizes must be within"),
        (["bench", str(tiny_bundle), "--runtime", "nope"], "unknown runtime nope"),
        (["bench", "--compare", str(tiny_bundle)], "is a directory"),
        (["bench", str(tmp_path / "nowhere")], "not an edgeclf bundle"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(args)
        err = capsys.readouterr().err
        assert exc.value.code == 1, args
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# --- the benchmark suite -------------------------------------------------------------------------


def run_suite(*args: str) -> subprocess.CompletedProcess[str]:
    import os

    # a suite of its own, not a worker of this run's pytest-xdist (which would turn benchmarks off)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_benchmark_suite_runs_as_tests(tiny_bundle: Path) -> None:
    """`pytest benchmarks --benchmark-disable`: every suite collects; the latency rows run once each."""
    proc = run_suite("benchmarks", "--benchmark-disable", "--bundle", str(tiny_bundle), "-k", "latency")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 2 artifacts x batch 1, 8 in Python, + the C runtime (cpp) on the ONNX artifact at batch 1, 8
    assert "6 passed" in proc.stdout and "deselected" in proc.stdout, proc.stdout


def test_benchmark_budget_check_fails_the_run(tiny_bundle: Path, tmp_path: Path) -> None:
    tight = make_profile(tmp_path / "tight.yaml", IMPOSSIBLE_MS)
    out = tmp_path / "pb.json"
    proc = run_suite(
        "benchmarks/test_bench_latency.py",
        "--benchmark-only",
        "--bundle",
        str(tiny_bundle),
        "--bench-batch",
        "1",
        "--bench-rounds",
        "2",
        "--bench-warmup",
        "0",
        "--bench-runtime",
        "onnxruntime",
        "--profile",
        str(tight),
        "--budget-check",
        "--benchmark-json",
        str(out),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "BUDGET CHECK FAILED: 1 of 1 rows over budget" in proc.stdout and "over the test-device" in proc.stdout
    rows = compare([out]).rows  # the suite's JSON feeds the comparison table
    assert [(r.runtime, r.batch, r.verdict) for r in rows] == [("onnxruntime", 1, "over")]
    ei = json.loads(out.read_text())["benchmarks"][0]["extra_info"]
    assert {"profile", "runtime", "precision", "versions", "cpu_model", "p50_ms", "p90_ms", "p99_ms", "peak_rss_mb"} <= set(ei)

    generous = make_profile(tmp_path / "generous.yaml", GENEROUS_MS)
    proc = run_suite(
        "benchmarks/test_bench_latency.py",
        "--benchmark-only",
        "--bundle",
        str(tiny_bundle),
        "--bench-batch",
        "1",
        "--bench-rounds",
        "2",
        "--bench-warmup",
        "0",
        "--profile",
        str(generous),
        "--budget-check",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # onnxruntime and the C runtime on the ONNX artifact; torch is not a runtime of the profile
    assert "budget check passed: 2 checked row(s) within budget" in proc.stdout, proc.stdout

    proc = run_suite("benchmarks/test_bench_latency.py", "--benchmark-disable", "--budget-check")
    assert proc.returncode == 4 and "--budget-check needs --profile" in proc.stderr
