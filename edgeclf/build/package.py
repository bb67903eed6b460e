"""The device package: the bundle, libedgeclf (prebuilt for a same-architecture device) or its
sources, the C example with its image decoder and a README for the device, as one tarball."""

from __future__ import annotations

import os
import platform
import shutil
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeclf._io import atomic_write_text as write_text
from edgeclf._io import sha256_file
from edgeclf.build.options import BuildError, BuildOptions
from edgeclf.build.report import _fmt
from edgeclf.build.results import BenchmarkResult, EvaluateResult, PackageResult, SelectResult
from edgeclf.errors import EdgeclfError


def _runtime_files() -> Path:
    try:
        from edgeclf import _runtime
    except ImportError as e:
        raise BuildError(f"package: the C runtime is not built in this installation ({e})") from None
    return Path(_runtime.__file__).resolve().parent


#: gzip level of the device package: gzip's own default. Measured on a lite0 package (170 MB of
#: runtime libraries and model files, 2-core AMD EPYC): level 9 (Python's tarfile default) 16.2 s
#: for 83.0 MB, level 6 8.7 s for 84.0 MB, level 1 4.1 s for 89.0 MB: 6 halves the time for 1 % more.
PACKAGE_GZIP_LEVEL = 6

DEVICE_README = """# {name}: edgeclf device package for {device}

Built {created} by `edgeclf build --profile {profile}`.

* Model: {backbone} at {resolution} px, classes: {labels}
* Chosen for {profile}: {justification}
* Latency (p95, batch 1): {latency:.2f} ms — {latency_label}
* Validation macro-F1 {val_f1}; test macro-F1 {test_f1} (test set evaluated once)

## Contents

* `bundle/` — `edgeclf.json` (labels, preprocessing, temperature, hashes), the artifacts, `parity.json`
{lib_line}
* `include/edgeclf/edgeclf.h` — the C API (and `edgeclf.hpp`, a C++ wrapper)
* `src/` — the runtime's sources (CMake project)
* `examples/classify.c` — classifies a JPEG, PNG, PPM/PGM or raw camera frame and prints the top 5;
  `examples/third_party/stb/` holds the single-header JPEG/PNG decoder it uses (stb_image, public
  domain or MIT); libedgeclf itself takes decoded pixels

## Build on the device

```sh
cmake -S src -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j
```

It prints the backends it found: ONNX Runtime needs its C headers (`-DEDGECLF_ORT_INCLUDE_DIR=...`;
the library is opened at run time) and OpenVINO its CMake package. Then, on an image file as it is:

```sh
./build/edgeclf_classify bundle image.jpg
{sample}```

A raw frame: `./build/edgeclf_classify bundle frame.yuv 640 480 NV12` (or RGB8, BGR8, RGBA8, BGRA8, GRAY8).
{trt}
## Use from C

```c
edgeclf_model* model; edgeclf_session* session;
edgeclf_model_load("bundle", NULL, &model);          /* verifies every file's SHA-256 */
edgeclf_session_create(model, &session);            /* one session per thread */
edgeclf_image frame = {{pixels, width, height, stride, EDGECLF_PIXEL_NV12, NULL, 0}};
edgeclf_class_score top[5]; size_t n;
edgeclf_classify(session, &frame, top, 5, &n);      /* n = min(5, classes) */
```
"""


EXAMPLE_CMAKE = """cmake_minimum_required(VERSION 3.18)
project(edgeclf_example C)
find_package(edgeclf REQUIRED)
add_executable(edgeclf_classify classify.c)
target_link_libraries(edgeclf_classify PRIVATE edgeclf::edgeclf)
target_include_directories(edgeclf_classify SYSTEM PRIVATE third_party/stb)
"""

PREBUILT_USE = """
## Use the prebuilt library (this architecture)

```sh
cmake -S examples -B build-example -DCMAKE_PREFIX_PATH=$PWD && cmake --build build-example
./build-example/edgeclf_classify bundle image.jpg
{sample}```

`lib/` holds libedgeclf and the inference libraries it needs, found through its `$ORIGIN`
RUNPATH: nothing else to install. `EDGECLF_ONNXRUNTIME_LIBRARY` points it at another ONNX
Runtime (a CUDA/TensorRT build, say).
"""

# Inference libraries copied next to libedgeclf in a same-architecture device package.
_OPENVINO_LIBS = (
    "libopenvino.so.*",
    "libopenvino_intel_cpu_plugin.so",
    "libopenvino_ir_frontend.so.*",
    "libtbb.so.*",
    "libtbbmalloc.so.*",
    "libhwloc.so.*",
)


def _relocate_cmake_package(cmake_dir: Path) -> None:
    """Rewrite the wheel's CMake package (prefix: site-packages, files under edgeclf/) for the
    device package's layout (prefix: the package folder, files at its top): one folder level
    less above lib/cmake/edgeclf. A file of another shape is an error, not a broken package."""
    step = 'get_filename_component(_IMPORT_PREFIX "${_IMPORT_PREFIX}" PATH)\n'
    config_prefix = '"${CMAKE_CURRENT_LIST_DIR}/../../../../"'
    for f in sorted(cmake_dir.glob("*.cmake")):
        text = f.read_text(encoding="utf-8").replace("${_IMPORT_PREFIX}/edgeclf/", "${_IMPORT_PREFIX}/")
        if step in text:  # a targets file: it computes the prefix
            if text.count(step) != 4:
                raise BuildError(f"package: {f.name} does not have the wheel's layout; cannot relocate it")
            text = text.replace(step, "", 1)
        elif f.name == "edgeclfConfig.cmake":
            if config_prefix not in text:
                raise BuildError(f"package: {f.name} does not have the wheel's layout; cannot relocate it")
            text = text.replace(config_prefix, '"${CMAKE_CURRENT_LIST_DIR}/../../../"')
        write_text(f, text)


def _bundle_backend_libraries(manifest: Any, lib: Path) -> list[str]:
    """Copy the inference libraries the bundle's artifacts need next to libedgeclf."""
    import importlib.util

    formats = {a.format for a in manifest.artifacts}
    done: list[str] = []
    if "onnx" in formats and (spec := importlib.util.find_spec("onnxruntime")) and spec.origin:
        libs = sorted((Path(spec.origin).parent / "capi").glob("libonnxruntime.so*"))
        libs = [p for p in libs if "providers" not in p.name]
        if libs:
            shutil.copy2(libs[-1], lib / libs[-1].name)
            done.append("onnxruntime")
    if "openvino" in formats and (spec := importlib.util.find_spec("openvino")) and spec.origin:
        src = Path(spec.origin).parent / "libs"
        for pattern in _OPENVINO_LIBS:
            for p in sorted(src.glob(pattern)):
                shutil.copy2(p, lib / p.name)
        done.append("openvino")
    return done  # libedgeclf's RUNPATH has $ORIGIN (cpp/CMakeLists.txt): it finds them there


def _stage_package(opts: BuildOptions, out: Path, sel: SelectResult, ev: EvaluateResult, bench: BenchmarkResult) -> PackageResult:
    from edgeclf.export.bundle import read_bundle, read_parity
    from edgeclf.profiles import load_profile

    profile = load_profile(opts.profile)
    pkg = _runtime_files()
    manifest = read_bundle(out / "bundle", verify=True)
    same_arch = profile.cpu.arch == platform.machine().lower() or (
        profile.cpu.arch in ("x86_64", "x86-64", "amd64") and platform.machine().lower() in ("x86_64", "amd64")
    )
    name = f"{Path(opts.out).name}-{profile.name}"
    tmp = Path(tempfile.mkdtemp(prefix=".package.", dir=out))
    root = tmp / name
    shutil.copytree(out / "bundle", root / "bundle")
    shutil.copytree(pkg / "include", root / "include")
    src = pkg / "cpp-src"
    shutil.copytree(src, root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "examples").mkdir()
    shutil.copy(src / "examples" / "classify.c", root / "examples" / "classify.c")
    stb = src / "third_party" / "stb"  # the example's JPEG/PNG decoder and its licence
    if not (stb / "stb_image.h").is_file():
        raise BuildError(
            f"package: {stb / 'stb_image.h'} (the C example's image decoder) is missing from this "
            "installation's runtime sources; reinstall edgeclf"
        )
    shutil.copytree(stb, root / "examples" / "third_party" / "stb")
    # A test image of the data set, for the README's second command line (JPEG first: the
    # example reads the file as it is, as `edgeclf predict` does).
    import shlex

    from edgeclf.data.manifest import read_manifest

    try:
        tests = read_manifest(out / "splits.csv").split_rows("test")
    except EdgeclfError:
        tests = []
    rank = {".jpg": 0, ".jpeg": 0, ".png": 1, ".ppm": 2, ".pgm": 2}
    tests = sorted(
        (r for r in tests if Path(r.path).suffix.lower() in rank), key=lambda r: (rank[Path(r.path).suffix.lower()], r.path)
    )
    shown = (
        (
            f"bundle {shlex.quote(f'{Path(opts.data_dir).name}/{tests[0].path}')}   "
            f"# a test image of the data set (labelled {tests[0].label}), copied over\n"
        )
        if tests
        else ""
    )

    def sample(exe: str) -> str:
        return f"{exe} {shown}" if shown else ""

    if same_arch:
        (root / "lib").mkdir()
        for f in sorted((pkg / "lib").glob("libedgeclf*")):
            if f.is_symlink():
                os.symlink(os.readlink(f), root / "lib" / f.name)
            else:
                shutil.copy2(f, root / "lib" / f.name)
        shutil.copytree(pkg / "lib" / "cmake", root / "lib" / "cmake")
        _relocate_cmake_package(root / "lib" / "cmake" / "edgeclf")
        backends = _bundle_backend_libraries(manifest, root / "lib")
        lib_line = (
            f"* `lib/` — libedgeclf built for {platform.machine()} (shared + static), its CMake package "
            "(`find_package(edgeclf)` with `-DCMAKE_PREFIX_PATH=<this folder>`) and the inference "
            f"libraries it runs the bundle with ({', '.join(backends) or 'none'}; RUNPATH `$ORIGIN`)"
        )
        (root / "examples" / "CMakeLists.txt").write_text(EXAMPLE_CMAKE, encoding="utf-8")
        prebuilt = PREBUILT_USE.format(sample=sample("./build-example/edgeclf_classify"))
    else:
        lib_line = (
            f"* no prebuilt library: this host is {platform.machine()}, the device is {profile.cpu.arch}; "
            "build it from `src/` (one line below)"
        )
        prebuilt = ""
    trt = ""
    report = read_parity(out / "bundle")
    for a in report.artifacts if report is not None else []:
        # the exporter's details are format-specific: TensorRT's carry its build commands
        cmd = a.details.get("trt_command")
        if cmd:
            cal = a.details.get("trt_calibration_command")
            if cal:
                trt += (
                    "\nTensorRT int8: first the calibration cache, with TensorRT's entropy calibrator over "
                    "`model.calib.npy` (the calibration batch, preprocessed), with `edgeclf tensorrt build` "
                    "(needs the `tensorrt` Python package and edgeclf on the device), in "
                    f"`bundle/`:\n\n```sh\n{cal}\n```\n\nthen the engine:\n"
                )
            else:
                trt += f"\nTensorRT {a.precision} engine (build it on the device, in `bundle/`):\n"
            trt += f"\n```sh\n{cmd}\n```\n"
    write_text(
        root / "README.md",
        DEVICE_README.format(
            name=name,
            device=profile.device,
            created=datetime.now(timezone.utc).date().isoformat(),
            profile=profile.name,
            backbone=sel.backbone,
            resolution=sel.resolution,
            labels=", ".join(manifest.labels),
            justification=sel.justification,
            latency=bench.latency_ms_p95,
            latency_label=bench.label,
            val_f1=_fmt(ev.val.macro_f1),
            test_f1=_fmt(ev.test.macro_f1),
            lib_line=lib_line,
            sample=sample("./build/edgeclf_classify"),
            trt=trt + prebuilt,
        ),
    )
    tar_tmp = out / f".{name}.tar.gz.tmp"
    with tarfile.open(tar_tmp, "w:gz", compresslevel=PACKAGE_GZIP_LEVEL) as tar:
        tar.add(root, arcname=name)
    final = out / f"{name}.tar.gz"
    os.replace(tar_tmp, final)
    shutil.rmtree(tmp, ignore_errors=True)
    return PackageResult(
        package=final.name,
        sha256=sha256_file(final),
        size_mb=round(final.stat().st_size / 1e6, 2),
        prebuilt_library=same_arch,
    )
