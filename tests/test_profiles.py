"""Hardware profile schema and loader (edgeclf.profiles)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeclf import profiles
from edgeclf.errors import EdgeclfError, ProfileError
from edgeclf.profiles import (
    HardwareProfile,
    ProfileSummary,
    builtin_profiles_dir,
    list_profiles,
    load_profile,
    parse_profile,
)

BUILTIN = ["jetson-orin", "jetson-orin-nano", "raspberry-pi-5", "x86-64-avx2", "x86-64-avx512"]


def builtin_data(name: str = "raspberry-pi-5") -> dict[str, Any]:
    """A built-in profile as plain YAML data, to mutate into test cases."""
    text = (builtin_profiles_dir() / f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def write_profile(tmp_path: Path, data: Any, filename: str = "my-device.yaml") -> Path:
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def load_error(tmp_path: Path, data: Any, filename: str = "my-device.yaml") -> str:
    path = write_profile(tmp_path, data, filename)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert str(path) in message, "every profile error names the file"
    return message


# ------------------------------------------------------------------- built-in profiles


def test_list_profiles_returns_the_builtin_names_sorted():
    names = list_profiles()
    assert set(BUILTIN) <= set(names)
    assert names == sorted(names)
    on_disk = sorted(p.name.rsplit(".", 1)[0] for p in builtin_profiles_dir().iterdir() if p.name.endswith((".yaml", ".yml")))
    assert names == on_disk


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_profile_loads_and_is_consistent(name: str):
    profile = load_profile(name)
    assert isinstance(profile, HardwareProfile)
    assert profile.name == name
    assert profile.runtimes
    for rt in profile.runtimes:
        assert rt.target == profile.compute.target
        for precision in rt.precisions:
            assert profile.compute.peak_gops(precision) > 0
    assert profile.budgets.memory_mb <= profile.memory.ram_gb * 1024
    assert profile.budgets.model_file_mb <= profile.budgets.memory_mb


def test_builtin_profiles_carry_the_requested_runtimes():
    def offered(name: str) -> dict[str, set[str]]:
        return {rt.label: set(rt.precisions) for rt in load_profile(name).runtimes}

    for jetson in ("jetson-orin", "jetson-orin-nano"):
        got = offered(jetson)
        assert got["tensorrt/GPU"] == {"fp32", "fp16", "int8"}
        assert "onnxruntime/CUDA" in got and "onnxruntime/Tensorrt" in got
        assert load_profile(jetson).gpu.cuda_compute_capability == "8.7"
    for x86 in ("x86-64-avx2", "x86-64-avx512"):
        got = offered(x86)
        assert got["onnxruntime/CPU"] == {"fp32", "int8"}
        assert got["openvino/CPU"] == {"fp32", "fp16", "int8"}
    assert offered("raspberry-pi-5") == {"onnxruntime/CPU": {"fp32", "int8"}}


def test_builtin_figures_are_dense_and_ordered():
    orin = load_profile("jetson-orin")
    # 275 TOPS is the sparse GPU+DLA total; the cost model takes the dense GPU figure.
    assert orin.compute.peak_int8_gops == 85_000
    assert orin.compute.memory_bandwidth_gb_per_s == pytest.approx(204.8)
    nano = load_profile("jetson-orin-nano")
    assert nano.compute.peak_int8_gops == 20_000  # 40 sparse TOPS / 2
    assert nano.accelerator is None  # the DLAs are fused off on Orin Nano
    pi = load_profile("raspberry-pi-5")
    assert pi.compute.peak_fp32_gflops == pytest.approx(4 * 2.4 * 16)
    avx512 = load_profile("x86-64-avx512").compute
    avx2 = load_profile("x86-64-avx2").compute
    assert avx512.peak_int8_gops / avx512.peak_fp32_gflops == pytest.approx(4)  # VNNI
    # Budgets get tighter as the device gets faster.
    budgets = {n: load_profile(n).budgets.latency_ms_p95 for n in BUILTIN}
    assert budgets["jetson-orin"] < budgets["jetson-orin-nano"] < budgets["raspberry-pi-5"]
    assert budgets["x86-64-avx512"] <= budgets["x86-64-avx2"] < budgets["raspberry-pi-5"]
    assert avx2.peak_fp32_gflops < avx512.peak_fp32_gflops


def test_summary_and_json():
    profile = load_profile("jetson-orin")
    summary = profile.summary()
    assert isinstance(summary, ProfileSummary)
    assert summary.name == "jetson-orin"
    assert summary.device == profile.device
    assert "tensorrt/GPU (fp32, fp16, int8)" in summary.runtimes
    assert summary.latency_budget_ms_p95 == 10
    assert summary.memory_budget_mb == profile.budgets.memory_mb
    assert summary.model_file_budget_mb == profile.budgets.model_file_mb
    data = json.loads(json.dumps(profile.to_json_dict()))
    assert data["budgets"]["latency_ms_p95"] == 10
    assert HardwareProfile.model_validate(data) == profile


# ----------------------------------------------------------------------------- loading


def test_load_by_path_object_and_string(tmp_path: Path):
    data = builtin_data()
    data["name"] = "my-pi"
    path = write_profile(tmp_path, data)
    for arg in (path, str(path)):
        profile = load_profile(arg)
        assert profile.name == "my-pi"
        assert profile.compute.threads == 4


def test_load_by_bare_existing_filename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = builtin_data()
    data["name"] = "bare"
    write_profile(tmp_path, data, filename="bare-profile")
    monkeypatch.chdir(tmp_path)
    assert load_profile("bare-profile").name == "bare"


def test_builtin_name_wins_over_a_file_of_the_same_name(tmp_path, monkeypatch):
    data = builtin_data()
    data["name"] = "impostor"
    write_profile(tmp_path, data, filename="jetson-orin")
    monkeypatch.chdir(tmp_path)
    assert load_profile("jetson-orin").name == "jetson-orin"


def test_unknown_name_lists_available_profiles():
    with pytest.raises(ProfileError) as info:
        load_profile("jetson-orin-nanoo")
    message = str(info.value)
    assert "'jetson-orin-nanoo'" in message
    for name in BUILTIN:
        assert name in message
    assert "did you mean 'jetson-orin-nano'" in message
    assert isinstance(info.value, EdgeclfError)


def test_missing_file_is_a_profile_error(tmp_path: Path):
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "nope.yaml")


def test_packaged_profiles_are_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    packaged = tmp_path / "hardware_profiles"
    packaged.mkdir()
    data = builtin_data()
    data["name"] = "packaged-only"
    write_profile(packaged, data, filename="packaged-only.yaml")
    monkeypatch.setattr(profiles.resources, "files", lambda package: tmp_path)
    assert list_profiles() == ["packaged-only"]
    assert load_profile("packaged-only").name == "packaged-only"


def test_source_checkout_fallback_when_not_packaged(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles.resources, "files", lambda package: tmp_path / "empty")
    directory = builtin_profiles_dir()
    assert Path(str(directory)) == Path(profiles.__file__).resolve().parent.parent / "hardware_profiles"
    assert set(BUILTIN) <= set(list_profiles())


def test_builtin_file_name_must_match_name_field(tmp_path, monkeypatch):
    packaged = tmp_path / "hardware_profiles"
    packaged.mkdir()
    write_profile(packaged, builtin_data(), filename="wrong-name.yaml")
    monkeypatch.setattr(profiles.resources, "files", lambda package: tmp_path)
    with pytest.raises(ProfileError, match="must match"):
        load_profile("wrong-name")


# ------------------------------------------------------------------------ YAML errors


def test_invalid_yaml_names_file_and_line(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\ndevice: x\ncpu: [unclosed\nmemory: {}\n", encoding="utf-8")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert f"{path}:" in message
    line = int(message.split(f"{path}:", 1)[1].split(":", 1)[0])
    assert line in (3, 4, 5)  # the unclosed flow sequence opened on line 3
    assert "invalid YAML" in message


def test_duplicate_key_is_rejected(tmp_path: Path):
    text = yaml.safe_dump(builtin_data(), sort_keys=False) + "name: again\n"
    path = tmp_path / "dup.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError, match="duplicate key 'name'"):
        load_profile(path)


@pytest.mark.parametrize("content", ["", "- a\n- b\n"])
def test_non_mapping_yaml_is_rejected(tmp_path: Path, content: str):
    path = tmp_path / "odd.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ProfileError, match="YAML mapping"):
        load_profile(path)


# ------------------------------------------------------------------ validation errors


def test_missing_field_names_the_field_path(tmp_path: Path):
    data = builtin_data()
    del data["budgets"]["latency_ms_p95"]
    message = load_error(tmp_path, data)
    assert "budgets.latency_ms_p95: field required" in message


def test_typo_field_is_rejected_with_a_suggestion(tmp_path: Path):
    data = builtin_data()
    data["budgets"]["latency_ms_p59"] = data["budgets"].pop("latency_ms_p95")
    message = load_error(tmp_path, data)
    assert "budgets.latency_ms_p59: unknown field (did you mean 'latency_ms_p95'?)" in message
    assert "budgets.latency_ms_p95: field required" in message


def test_extra_top_level_field_is_rejected(tmp_path: Path):
    data = builtin_data()
    data["vendor"] = "someone"
    assert "vendor: unknown field" in load_error(tmp_path, data)


def test_runtime_precision_without_peak_is_rejected(tmp_path: Path):
    data = builtin_data()
    del data["compute"]["peak_int8_gops"]
    message = load_error(tmp_path, data)
    assert "runtimes[0]" in message
    assert "int8" in message and "compute.peak_int8_gops" in message


def test_unused_peak_may_be_absent(tmp_path: Path):
    data = builtin_data()
    del data["compute"]["peak_fp16_gflops"]  # no runtime on the Pi lists fp16
    assert load_profile(write_profile(tmp_path, data)).compute.peak_fp16_gflops is None


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("compute", "peak_fp32_gflops"),
        ("compute", "memory_bandwidth_gb_per_s"),
        ("budgets", "latency_ms_p95"),
        ("memory", "ram_gb"),
        ("cpu", "cores"),
    ],
)
def test_negative_figure_is_rejected(tmp_path: Path, section: str, field: str):
    data = builtin_data()
    data[section][field] = -1
    message = load_error(tmp_path, data)
    assert f"{section}.{field}: Input should be greater than 0" in message


def test_empty_precisions_are_rejected(tmp_path: Path):
    data = builtin_data()
    data["runtimes"][0]["precisions"] = []
    assert "runtimes[0].precisions" in load_error(tmp_path, data)


def test_unknown_precision_and_runtime_are_rejected(tmp_path: Path):
    data = builtin_data()
    data["runtimes"][0]["precisions"] = ["fp32", "fp8"]
    data["runtimes"].append({"runtime": "tvm", "precisions": ["fp32"]})
    message = load_error(tmp_path, data)
    assert "runtimes[0].precisions[1]" in message and "'fp8'" in message
    assert "runtimes[1].runtime" in message


def test_numbers_are_not_coerced_from_strings_or_bools(tmp_path: Path):
    data = builtin_data()
    data["cpu"]["cores"] = "4"
    data["memory"]["shared_with_gpu"] = "yes please"
    data["compute"]["threads"] = True
    message = load_error(tmp_path, data)
    assert "cpu.cores" in message
    assert "memory.shared_with_gpu" in message
    assert "compute.threads" in message


def test_bad_slug_is_rejected(tmp_path: Path):
    data = builtin_data()
    data["name"] = "My Device"
    assert "name:" in load_error(tmp_path, data)


def test_tensorrt_needs_a_cuda_gpu(tmp_path: Path):
    data = builtin_data("jetson-orin-nano")
    del data["gpu"]["cuda_compute_capability"]
    assert "needs an NVIDIA GPU" in load_error(tmp_path, data)


def test_compute_capability_must_be_quoted(tmp_path: Path):
    data = builtin_data("jetson-orin")
    data["gpu"]["cuda_compute_capability"] = 8.7
    assert "quoted string" in load_error(tmp_path, data)


def test_runtime_must_run_on_the_compute_target(tmp_path: Path):
    data = builtin_data("jetson-orin")
    data["runtimes"].append({"runtime": "onnxruntime", "execution_provider": "CPUExecutionProvider", "precisions": ["fp32"]})
    message = load_error(tmp_path, data)
    assert "runtimes[3]" in message and "compute.target is gpu" in message


def test_execution_provider_typo_and_misuse(tmp_path: Path):
    data = builtin_data()
    data["runtimes"][0]["execution_provider"] = "CPUExecutionProvidr"
    assert "did you mean 'CPUExecutionProvider'" in load_error(tmp_path, data)
    data = builtin_data("x86-64-avx2")
    data["runtimes"][1]["execution_provider"] = "CPUExecutionProvider"  # on openvino
    assert "onnxruntime only" in load_error(tmp_path, data)


def test_duplicate_runtime_entry_is_rejected(tmp_path: Path):
    data = builtin_data()
    data["runtimes"].append(copy.deepcopy(data["runtimes"][0]))
    assert "repeats runtimes[0]" in load_error(tmp_path, data)


def test_isa_feature_checks(tmp_path: Path):
    data = builtin_data()
    data["cpu"]["isa_features"] = ["neon", "avx2"]
    assert "'avx2' is an x86_64 feature but arch is aarch64" in load_error(tmp_path, data)
    data = builtin_data("x86-64-avx512")
    data["cpu"]["isa_features"] = ["avx521f"]
    assert "did you mean 'avx512f'" in load_error(tmp_path, data)


def test_budgets_must_fit_the_device(tmp_path: Path):
    data = builtin_data()
    data["budgets"]["memory_mb"] = 9 * 1024  # the Pi has 8 GB
    assert "budgets.memory_mb" in load_error(tmp_path, data)
    data = builtin_data()
    data["budgets"]["model_file_mb"] = data["budgets"]["memory_mb"] + 1
    assert "budgets.model_file_mb" in load_error(tmp_path, data)


def test_threads_cannot_exceed_hardware_threads(tmp_path: Path):
    data = builtin_data()
    data["compute"]["threads"] = 16
    assert "compute.threads (16) exceeds" in load_error(tmp_path, data)


def test_cpu_target_needs_threads(tmp_path: Path):
    data = builtin_data()
    del data["compute"]["threads"]
    assert "threads is required" in load_error(tmp_path, data)


def test_parse_profile_names_the_source():
    with pytest.raises(ProfileError, match=r"^inline: invalid hardware profile: .*name: field required"):
        parse_profile("device: x\n", source="inline")
