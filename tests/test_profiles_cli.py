"""`edgeclf profiles calibrate` (a device's measured profile), `profiles calibrate-costmodel` and
`tensorrt build`: the commands, the profiles they write, and the error contract.

The host probes (a 2048^3 GEMM, a 256 MiB copy) are replaced by fixed figures, so that the
tests take no timing and give the same profile on every machine.
"""

from __future__ import annotations

import json
import runpy
import warnings
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgeclf.cli import app, main
from edgeclf.errors import ConfigError, ProfileError
from edgeclf.profiles import load_profile

runner = CliRunner()

GEMM_PER_THREAD = 50.0  # GFLOP/s the fake GEMM probe reports per thread
COPY_GB_PER_S = 20.0


@pytest.fixture
def fast_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed host figures instead of the GEMM and copy probes (and no busy-CPU check)."""
    from edgeclf.bench import calibrate
    from edgeclf.select import calibration

    monkeypatch.setattr(calibration, "_gemm_gflops", lambda threads, *a, **k: GEMM_PER_THREAD * threads)
    monkeypatch.setattr(calibration, "_copy_bandwidth_gb_per_s", lambda *a, **k: COPY_GB_PER_S)
    monkeypatch.setattr(calibrate, "_cpu_busy_fraction", lambda *a, **k: 0.0)


def _calibrate(tmp_path: Path, *args: str, name: str = "my-device.yaml") -> tuple[Path, dict]:
    out = tmp_path / name
    res = runner.invoke(app, ["profiles", "calibrate", "--out", str(out), "--json", *args])
    assert res.exit_code == 0, (res.output, res.exception)
    return out, json.loads(res.stdout)


def _error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the console entry point; assert the error contract; return the one stderr line."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "cmd",
    [["profiles", "calibrate"], ["profiles", "calibrate-costmodel"], ["tensorrt"], ["tensorrt", "build"]],
)
def test_new_commands_have_help(cmd: list[str]) -> None:
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


# ----------------------------------------------------------------------------- profiles calibrate


def test_calibrate_writes_a_profile_that_loads_and_selects(fast_probe: None, tmp_path: Path) -> None:
    from edgeclf.bench.device_profile import physical_cores
    from edgeclf.select import select_backbone
    from edgeclf.select.calibration import GEMM_EFFICIENCY

    out, doc = _calibrate(tmp_path, "--name", "my-device", "--runtimes", "onnxruntime")
    assert doc["path"] == str(out) and doc["fitted"] is False
    by_path, by_text = load_profile(out), load_profile(str(out))
    assert by_path == by_text and by_path.name == "my-device"
    prof = by_path
    threads = physical_cores()
    assert prof.compute.target == "cpu" and prof.compute.threads == threads
    assert prof.compute.peak_fp32_gflops == pytest.approx(GEMM_PER_THREAD * threads / GEMM_EFFICIENCY, abs=0.1)
    assert prof.compute.memory_bandwidth_gb_per_s == COPY_GB_PER_S
    assert [rt.label for rt in prof.runtimes] == ["onnxruntime/CPU"]
    assert prof.budgets.latency_ms_p95 == 50 and prof.budgets.model_file_mb <= prof.budgets.memory_mb
    assert prof.cost_model is not None
    keys = {(f.runtime, f.precision) for f in prof.cost_model.latency}
    assert keys == {("onnxruntime", "fp32"), ("onnxruntime", "int8")}
    assert doc["profile"] == prof.to_json_dict()
    assert out.read_text(encoding="utf-8").startswith("# Hardware profile of ")

    res = select_backbone(out)  # by path, as `edgeclf build --profile my-device.yaml` passes it
    assert res.profile == "my-device" and res.choice.fits
    assert {c.runtime for c in res.candidates} == {"onnxruntime/CPU"}


def test_the_estimates_come_from_the_profile_figures_and_factors(fast_probe: None, tmp_path: Path) -> None:
    from edgeclf.select import select_backbone

    out, _ = _calibrate(tmp_path, "--name", "my-device", "--runtimes", "onnxruntime")
    base = {(c.backbone, c.resolution, c.precision): c.latency_ms_p95 for c in select_backbone(out).candidates}

    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    doc["compute"]["peak_fp32_gflops"] *= 2  # a faster device: fp32 estimates drop
    for f in doc["cost_model"]["latency"]:
        if f["precision"] == "int8":
            f["call_overhead_ms"] += 100.0  # the profile's own factors are the ones used
    faster = tmp_path / "faster.yaml"
    faster.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    rows = select_backbone(faster).candidates
    for c in rows:
        before = base[(c.backbone, c.resolution, c.precision)]
        if c.precision == "fp32":
            assert c.latency_ms_p95 < before
        else:
            assert c.latency_ms_p95 > before + 100 and not c.fits
    assert {c.precision for c in rows if c.fits} == {"fp32"}


def test_copied_factors_are_those_of_this_hosts_class(fast_probe: None, tmp_path: Path) -> None:
    """Without --measure-backbones the profile carries the factors `--profile auto` would use here:
    the calibration of this host's class where one ships (an AVX2 host's own int8 factors)."""
    from edgeclf.select import CostModel, detect_host

    out, _ = _calibrate(tmp_path, "--runtimes", "onnxruntime")
    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    matched = detect_host(1).matched_profile
    model = CostModel().for_profile(load_profile(matched)) if matched else CostModel()
    int8 = next(f for f in doc["cost_model"]["latency"] if f["precision"] == "int8")
    want = model.latency_factors("cpu", "onnxruntime", "CPUExecutionProvider", "int8")
    assert int8["compute_efficiency"] == pytest.approx(want.compute_efficiency)
    assert int8["node_overhead_ms"] == pytest.approx(want.node_overhead_ms)
    assert model.calibration is not None and f"an {model.calibration.host.matched_profile} host" in doc["cost_model"]["origin"]


def test_build_selection_stage_runs_on_the_profile_file(fast_probe: None, tmp_path: Path) -> None:
    from edgeclf.build import BuildOptions
    from edgeclf.build.host import host_is_target
    from edgeclf.build.stages import _stage_select

    out, _ = _calibrate(tmp_path, "--name", "my-device", "--runtimes", "onnxruntime")
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    sel = _stage_select(BuildOptions(profile=str(out), data_dir=tmp_path, out=build_dir), build_dir)
    assert sel.runtime == "onnxruntime/CPU" and sel.latency_source == "estimate"
    assert json.loads((build_dir / "selection.json").read_text(encoding="utf-8"))["profile"] == "my-device"
    # measured on this host's CPU: latency measured here stands for the device's
    assert host_is_target(load_profile(out))[0]


def test_budgets_from_base_and_options(fast_probe: None, tmp_path: Path) -> None:
    pi = load_profile("raspberry-pi-5").budgets
    _, doc = _calibrate(tmp_path, "--base", "raspberry-pi-5", "--runtimes", "onnxruntime")
    assert doc["profile"]["budgets"] == pi.model_dump()
    _, doc = _calibrate(tmp_path, "--base", "raspberry-pi-5", "--latency-ms", "12.5", "--runtimes", "onnxruntime")
    assert doc["profile"]["budgets"] == {**pi.model_dump(), "latency_ms_p95": 12.5}


def test_default_name_is_a_slug_of_the_host(fast_probe: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    monkeypatch.setattr(platform, "node", lambda: "Lab_Box.07.example.org")
    _, doc = _calibrate(tmp_path, "--runtimes", "onnxruntime")
    assert doc["profile"]["name"] == "lab-box"


def test_measure_backbones_fits_the_factors_with_the_cost_model_calibration(
    fast_probe: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeclf.bench import calibrate
    from edgeclf.bench.device_profile import PROFILE_BACKBONES
    from edgeclf.select import detect_host, load_calibration

    stored = load_calibration()
    if stored is None:
        pytest.skip("no calibration.json in this installation")
    calls: list[dict] = []

    def fake_calibrate(backbones, **kw):  # the measuring is calibrate()'s; here only the wiring
        calls.append({"backbones": backbones, **kw})
        return stored.model_copy(update={"host": detect_host(kw["threads"])})

    monkeypatch.setattr(calibrate, "calibrate", fake_calibrate)
    out, doc = _calibrate(tmp_path, "--measure-backbones", "--runtimes", "onnxruntime", "--seconds", "0.5")
    (call,) = calls
    assert call["backbones"] == list(PROFILE_BACKBONES) and call["runtimes"] == ["onnxruntime"]
    assert call["out"] is None and call["validation_out"] is None  # calibration.json is left alone
    assert call["seconds_per_point"] == 0.5
    prof = load_profile(out)
    assert doc["fitted"] is True and prof.cost_model.origin.startswith("fitted on this device")
    fitted = {f.key: f for f in stored.latency}
    for f in prof.cost_model.latency:
        assert f == fitted[f.key]

    res = runner.invoke(app, ["profiles", "calibrate", "--out", str(out), "--backbones", "resnet18"])
    assert res.exit_code == 2 and "--measure-backbones" in res.output


def test_calibrate_option_errors(fast_probe: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line(capsys, "profiles", "calibrate", "--out", str(tmp_path / "dev.txt"))
    assert ".yaml" in line
    line = _error_line(capsys, "profiles", "calibrate", "--out", str(tmp_path / "d.yaml"), "--name", "My Device")
    assert "My Device" in line and "lowercase" in line
    line = _error_line(capsys, "profiles", "calibrate", "--out", str(tmp_path / "d.yaml"), "--base", "no-such-device")
    assert "unknown hardware profile 'no-such-device'" in line
    line = _error_line(
        capsys, "profiles", "calibrate", "--out", str(tmp_path / "d.yaml"), "--runtimes", "onnxruntime", "--memory-mb", "1e9"
    )
    assert "budgets.memory_mb" in line and "--memory-mb" in line
    assert not (tmp_path / "d.yaml").exists()  # nothing written on an error


# ----------------------------------------------------------------------------- invalid profiles


def test_tampered_profile_is_a_clear_error(fast_probe: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = _calibrate(tmp_path, "--runtimes", "onnxruntime")
    good = yaml.safe_load(out.read_text(encoding="utf-8"))

    def tampered(edit, name: str) -> Path:
        doc = yaml.safe_load(yaml.safe_dump(good))
        edit(doc)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    cases = [
        (lambda d: d["cost_model"]["latency"][0].update(compute_efficiency=-1), "cost_model.latency[0].compute_efficiency"),
        (lambda d: d["cost_model"]["latency"][0].update(compute_efficency=0.5), "did you mean 'compute_efficiency'"),
        (lambda d: d["cost_model"]["latency"][0].update(target="gpu"), "compute.target is cpu"),
        (lambda d: d["cost_model"]["latency"].append(d["cost_model"]["latency"][0]), "repeats latency[0]"),
        (lambda d: d["compute"].update(peak_fp32_gflops="fast"), "compute.peak_fp32_gflops"),
        (lambda d: d["compute"].pop("memory_bandwidth_gb_per_s"), "compute.memory_bandwidth_gb_per_s: field required"),
    ]
    for i, (edit, expected) in enumerate(cases):
        path = tampered(edit, f"bad{i}.yaml")
        with pytest.raises(ProfileError) as exc:
            load_profile(path)
        assert str(path) in str(exc.value) and expected in str(exc.value), str(exc.value)

    broken = tmp_path / "broken.yaml"
    broken.write_text(out.read_text(encoding="utf-8").replace("compute:", "compute: [", 1), encoding="utf-8")
    with pytest.raises(ProfileError, match="invalid YAML"):
        load_profile(broken)
    line = _error_line(capsys, "profiles", "show", str(broken))
    assert str(broken) in line and "invalid YAML" in line
    line = _error_line(capsys, "build", "--profile", str(tmp_path / "bad0.yaml"), "--data", "elpv", "--out", str(tmp_path / "b"))
    assert "bad0.yaml" in line and "compute_efficiency" in line


# ----------------------------------------------------------------------------- calibrate-costmodel


def test_calibrate_costmodel_validate_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeclf.select.costmodel import CALIBRATION_PATH

    if not CALIBRATION_PATH.is_file():
        pytest.skip("no calibration.json in this installation")
    table = tmp_path / "validation.json"
    res = runner.invoke(
        app, ["profiles", "calibrate-costmodel", "--validate", "--out", str(CALIBRATION_PATH), "--validation-out", str(table)]
    )
    assert res.exit_code == 0, (res.output, res.exception)
    assert "p50 error: max" in res.stdout and json.loads(table.read_text(encoding="utf-8"))["rows"]

    line = _error_line(capsys, "profiles", "calibrate-costmodel", "--validate-only", "--out", str(tmp_path / "none.json"))
    assert "no cost-model calibration" in line and "without --validate-only" in line
    res = runner.invoke(app, ["profiles", "calibrate-costmodel", "--validate-only", "--backbones", "resnet18"])
    assert res.exit_code == 2 and "--backbones" in res.output


def test_old_module_commands_point_to_the_cli() -> None:
    """``python -m`` of the two former tools exits non-zero, naming the command that replaced it."""
    import edgeclf.bench.calibrate as cal
    import edgeclf.export.tensorrt_export as trt

    assert not hasattr(cal, "main") and not hasattr(trt, "main")
    for module, command in (
        ("edgeclf.bench.calibrate", "edgeclf profiles calibrate-costmodel"),
        ("edgeclf.export.tensorrt_export", "edgeclf tensorrt build"),
    ):
        with warnings.catch_warnings(), pytest.raises(SystemExit) as exc:
            warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules": it is imported already
            runpy.run_module(module, run_name="__main__")  # what `python -m MODULE` runs
        # a message as the exit code: Python prints it on stderr and exits 1
        assert isinstance(exc.value.code, str) and command in exc.value.code


# ----------------------------------------------------------------------------- tensorrt build


def test_tensorrt_build_without_tensorrt_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgeclf.export import tensorrt_export
    from edgeclf.export.formats import TRT_NOT_INSTALLED

    monkeypatch.setattr(tensorrt_export, "tensorrt_available", lambda: (False, TRT_NOT_INSTALLED))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    res = runner.invoke(app, ["tensorrt", "build", "--onnx", str(onnx), "--precision", "fp16"])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
    assert TRT_NOT_INSTALLED in str(res.exception)
    line = _error_line(capsys, "tensorrt", "build", "--onnx", str(onnx))
    assert TRT_NOT_INSTALLED in line and "edgeclf tensorrt build" in line

    # the command a bundle's device README prints parses as this command's options
    cmd = tensorrt_export.trt_commands("model.onnx", "int8", 224)["trt_calibration_command"]
    assert cmd.startswith("edgeclf tensorrt build --onnx model.onnx --precision int8 --calibration model.calib.npy")
    res = runner.invoke(app, cmd.split()[1:])
    assert res.exit_code == 1 and isinstance(res.exception, ConfigError), res.output

    res = runner.invoke(app, ["tensorrt", "build", "--onnx", str(onnx), "--precision", "int4"])
    assert res.exit_code == 2 and "int4" in res.output


def test_measuring_options_are_refused_where_nothing_is_measured() -> None:
    r = runner.invoke(app, ["profiles", "calibrate-costmodel", "--validate-only", "--threads", "2", "--passes", "3"])
    assert r.exit_code != 0
    text = " ".join(r.output.replace("│", " ").split())
    assert "--threads, --passes apply to measuring, not to --validate-only" in text
