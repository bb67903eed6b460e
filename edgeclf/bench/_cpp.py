"""The C runtime as a runner of ``edgeclf.bench``.

Entry point ``edgeclf.bench_runners: cpp``; bench imports the runtime, not the reverse.

Rows labelled ``cpp`` time frames in, probabilities out: the C++ preprocessing from the
bundle's manifest, the backend and the calibrated softmax — what a device program pays.
"""

from __future__ import annotations

from typing import Any

from edgeclf.bench import BenchInput, RunnerRequest, RunnerUnavailable
from edgeclf.errors import EdgeclfError


class CppRunner:
    includes_preprocess = True

    def __init__(self, request: RunnerRequest) -> None:
        from edgeclf.runtime import Classifier

        a = request.artifact
        self.clf = Classifier(
            request.bundle_dir, backend=a.runtime, precision=a.precision, threads=request.threads or 0, verify=False
        )
        if self.clf.artifact != a.file:  # keep the row's label true
            raise RunnerUnavailable(f"the C runtime chose {self.clf.artifact}, not {a.file}")

    def __call__(self, batch: BenchInput) -> Any:
        return self.clf.probabilities(batch.images)

    def close(self) -> None:
        self.clf.close()


def cpp_factory(request: RunnerRequest) -> CppRunner | None:
    if request.artifact.runtime not in ("onnxruntime", "openvino"):
        return None  # not a backend of the C runtime: no row
    try:
        return CppRunner(request)
    except EdgeclfError as e:  # not built, backend missing, artifact refused
        raise RunnerUnavailable(str(e)) from None
