#!/usr/bin/env bash
# Create or refresh edgeclf's local environment (.venv) — idempotent and fast when
# nothing changed: a stamp of the install inputs skips every pip call on a re-run.
#
# What it does, in order:
#   1. a virtual environment with Python >= 3.10 in .venv (override: EDGECLF_VENV);
#   2. torch first, pinned by constraints.txt, so no later dependency can pull a CUDA build;
#   3. the C++ runtime's inputs: OpenVINO and ONNX Runtime wheels, and the ONNX Runtime and
#      nlohmann/json headers (scripts/fetch_cpp_deps.sh, into build/deps);
#   4. edgeclf itself in editable mode with its dev extras — this compiles libedgeclf and the
#      edgeclf._runtime module — under the same constraints;
#   5. the torchvision repair for CPU-only torch (a no-op where torchvision imports).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${EDGECLF_VENV:-$root/.venv}"
stamp="$venv/.edgeclf-install-stamp"

pick_python() {
  for py in "${EDGECLF_PYTHON:-}" python3.11 python3.12 python3.10 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "edgeclf needs Python >= 3.10 (set EDGECLF_PYTHON to its path)" >&2
  return 1
}

inputs_hash() {
  { cat pyproject.toml constraints.txt CMakeLists.txt scripts/bootstrap.sh scripts/repair_torchvision.py \
        scripts/fetch_cpp_deps.sh
    find cpp -type f | LC_ALL=C sort | xargs cat; } | sha256sum | cut -d' ' -f1
}

want="$(inputs_hash)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  py="$(pick_python)"
  echo "edgeclf: creating $venv with $("$py" --version)" >&2
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
export PIP_CONSTRAINT="$root/constraints.txt"

echo "edgeclf: installing pinned torch" >&2
"${pip[@]}" install -q "torch==$(sed -n 's/^torch==//p' constraints.txt)"
echo "edgeclf: installing build tools and the inference SDKs the C++ runtime builds against" >&2
"${pip[@]}" install -q "scikit-build-core>=0.10" "pybind11>=2.12" "openvino>=2024.2" "onnxruntime>=1.18"
scripts/fetch_cpp_deps.sh
echo "edgeclf: installing edgeclf (editable, C++ runtime included) and its dependencies" >&2
"${pip[@]}" install -q --no-build-isolation -e ".[dev]"
"$venv/bin/python" scripts/repair_torchvision.py

echo "$want" > "$stamp.tmp" && mv "$stamp.tmp" "$stamp"
echo "edgeclf: environment ready in $venv" >&2
