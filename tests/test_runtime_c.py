"""The C side: the C tests under AddressSanitizer + UndefinedBehaviorSanitizer, the fuzz
target for a bounded time, and the C example built against the installed CMake package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, blob_image, make_synthetic_bundle

pytestmark = pytest.mark.cpp
runtime = pytest.importorskip("edgeclf.runtime")
if shutil.which("cmake") is None:
    pytest.skip("cmake is not installed", allow_module_level=True)

ASAN_BUILD = REPO / "build" / "asan"


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def _generator() -> list[str]:
    return ["-G", "Ninja"] if shutil.which("ninja") else []


@pytest.fixture(scope="module")
def asan_build() -> Path:
    """cpp/ configured with EDGECLF_SANITIZE (cached in build/asan; rebuilt incrementally)."""
    cfg = _run(["cmake", "-S", str(REPO / "cpp"), "-B", str(ASAN_BUILD), *_generator(), "-DEDGECLF_SANITIZE=ON",
                "-DCMAKE_BUILD_TYPE=Debug", "-DEDGECLF_BUILD_EXAMPLES=OFF", f"-DPython_EXECUTABLE={sys.executable}"])
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    build = _run(["cmake", "--build", str(ASAN_BUILD), "--target", "edgeclf_test_capi", "edgeclf_fuzz",
                  "--parallel", str(os.cpu_count() or 2)])
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    return ASAN_BUILD


def _sanitizer_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:strict_string_checks=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", **extra)
    return env


def _bad_bundles(base: Path, good: Path) -> list[Path]:
    import json

    out = []
    t = base / "tampered"
    shutil.copytree(good, t)
    data = bytearray((t / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (t / "model.onnx").write_bytes(bytes(data))
    out.append(t)
    tr = base / "truncated"
    shutil.copytree(good, tr)
    (tr / "model.onnx").write_bytes((tr / "model.onnx").read_bytes()[:64])
    out.append(tr)
    sv = base / "schema"
    shutil.copytree(good, sv)
    m = json.loads((sv / "edgeclf.json").read_text())
    m["schema_version"] = "3.0.0"
    (sv / "edgeclf.json").write_text(json.dumps(m))
    out.append(sv)
    cut = base / "cut-manifest"
    shutil.copytree(good, cut)
    (cut / "edgeclf.json").write_text((cut / "edgeclf.json").read_text()[:200])
    out.append(cut)
    empty = base / "empty"
    empty.mkdir()
    out.append(empty)
    return out


@pytest.mark.parametrize("bands", ["1", "2"])
def test_c_api_under_sanitizers(asan_build: Path, tmp_path: Path, bands: str) -> None:
    # bands=2: images large enough for the second band's helper thread (see preprocess.cpp)
    crop, resize = (32, 40) if bands == "1" else (72, 80)
    good = make_synthetic_bundle(tmp_path / "good", crop=crop, resize=resize)
    bad = _bad_bundles(tmp_path, good)
    r = _run([str(asan_build / "edgeclf_test_capi")],
             env=_sanitizer_env(EDGECLF_TEST_BUNDLE=str(good), EDGECLF_TEST_BAD_BUNDLES=":".join(map(str, bad)),
                                EDGECLF_PREPROCESS_BANDS=bands))
    assert r.returncode == 0, r.stdout + r.stderr[-6000:]
    assert "tests passed" in r.stdout
    assert "runtime error" not in r.stderr and "AddressSanitizer" not in r.stderr


@pytest.mark.slow
def test_fuzz_bounded(asan_build: Path, tmp_path: Path) -> None:
    """The fuzz target (libFuzzer under clang, a random driver otherwise) for 60 s under ASan/UBSan."""
    bundle = make_synthetic_bundle(tmp_path / "b", crop=16, resize=20, interpolation="bilinear")
    exe = asan_build / "edgeclf_fuzz"
    env = _sanitizer_env(EDGECLF_FUZZ_BUNDLE=str(bundle), EDGECLF_FUZZ_SECONDS="60")
    r = _run([str(exe), "-max_total_time=60"] if "clang" in _run(["cmake", "-L", "-N", str(asan_build)]).stdout.lower()
             else [str(exe), "7"], env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert "no failure" in r.stdout or "Done" in r.stderr


def _site_package() -> Path:
    import edgeclf._runtime as mod

    return Path(mod.__file__).resolve().parent


def test_c_example_against_installed_package(tmp_path: Path) -> None:
    """A plain C project finds the installed package (find_package(edgeclf)), builds
    classify.c and prints the same top-1 as Python for real pixels."""
    pkg = _site_package()
    cmake_dir = pkg / "lib" / "cmake" / "edgeclf"
    assert (cmake_dir / "edgeclfConfig.cmake").is_file(), "the wheel ships the CMake package"
    assert (pkg / "include" / "edgeclf" / "edgeclf.h").is_file()
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(pkg / "examples" / "classify.c", proj / "classify.c")
    (proj / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(classify_example C)\n"
        "find_package(edgeclf 0.1 REQUIRED)\nadd_executable(classify classify.c)\n"
        "target_link_libraries(classify PRIVATE edgeclf::edgeclf)\n")
    cfg = _run(["cmake", "-S", str(proj), "-B", str(proj / "build"), *_generator(), f"-DCMAKE_PREFIX_PATH={pkg}"])
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    b = _run(["cmake", "--build", str(proj / "build")])
    assert b.returncode == 0, b.stdout + b.stderr

    bundle = make_synthetic_bundle(tmp_path / "bundle", crop=48, resize=56, labels=("red", "green", "blue", "grey"))
    from tests.conftest import SHARED_DATASETS

    files = sorted((SHARED_DATASETS / "trashnet-150").rglob("*.jpg"))[:2]
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files] or [np.asarray(blob_image(9, 77))]
    import edgeclf

    for i, rgb in enumerate(images):
        ppm = tmp_path / f"im{i}.ppm"
        Image.fromarray(rgb).save(ppm)
        r = _run([str(proj / "build" / "classify"), str(bundle), str(ppm)], env={k: v for k, v in os.environ.items()
                                                                                if not k.startswith("EDGECLF_")})
        assert r.returncode == 0, r.stdout + r.stderr
        lines = [ln.split("\t") for ln in r.stdout.splitlines() if not ln.startswith("#")]
        assert [ln[0] for ln in lines] == ["1", "2", "3", "4"]
        py = edgeclf.predict(bundle, rgb, top_k=4)[0]
        assert lines[0][1] == py.label
        assert abs(float(lines[0][2]) - py.probabilities[0]) < 1e-5
    r = _run([str(proj / "build" / "classify"), str(tmp_path / "nowhere"), str(ppm)])
    assert r.returncode == 1 and "not an edgeclf bundle" in r.stderr
