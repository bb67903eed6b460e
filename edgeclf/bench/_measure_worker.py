"""Time one model file with one runtime, batch 1, in a process of its own; print JSON.

Run by :func:`edgeclf.bench.calibrate.calibrate` as a script (not ``-m``), so that the
process imports only numpy and the runtime: its resident memory is the runtime's, not
torch's, and no other work of the parent (threads, allocator state) disturbs the timing.

Timing: ``warmup`` runs, then ``blocks`` blocks of runs, each block about
``seconds / blocks`` long (at least ``min_runs`` runs in all, at most ``max_runs``).
``p50_ms`` and ``p95_ms`` are the median and 95th percentile of the quietest block (the
one with the lowest median): other work on a shared machine only ever slows a block
down, so the quietest block is the closest to the model on a machine of its own.
``median_block_p50_ms`` (median of the block medians) and the pooled figures are kept
for the record. Memory, in MiB: ``VmRSS`` after importing numpy (``python_rss_mib``), after
importing the runtime (``baseline_rss_mib``), after loading the model
(``loaded_rss_mib``), and ``VmHWM`` (peak resident) after the timed runs (``peak_rss_mib``).

Standard library + numpy + the runtime only; no edgeclf import.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

# A block's median and 95th percentile need a handful of runs to mean anything.
_MIN_RUNS_PER_BLOCK = 10


def _status_mib(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _median(values: list[float]) -> float:
    return _percentile(values, 50.0)


def _ort_runner(path: str, threads: int, optimized_path: str | None):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x}), f"onnxruntime {ort.__version__}"


def _openvino_runner(path: str, threads: int, precision: str):  # type: ignore[no-untyped-def]
    import openvino as ov

    core = ov.Core()
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        # fp32 and fp16 models compute in fp32 (the profiles' assumption for CPUs without
        # AVX512_FP16); without this OpenVINO would pick bf16 on CPUs that have it.
        "INFERENCE_PRECISION_HINT": "f32",
    }
    compiled = core.compile_model(path, "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x}), f"openvino {ov.get_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--resolution", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--min-runs", type=int, default=15)
    parser.add_argument("--max-runs", type=int, default=300)
    parser.add_argument("--optimized-model", default=None, help="ONNX Runtime: save the optimised graph here")
    args = parser.parse_args(argv)

    import numpy as np

    python_rss = _status_mib("VmRSS")
    import importlib

    importlib.import_module(args.runtime)  # the runtime's libraries count in the baseline
    baseline = _status_mib("VmRSS")
    if args.runtime == "onnxruntime":
        run, version = _ort_runner(args.model, args.threads, args.optimized_model)
    else:
        run, version = _openvino_runner(args.model, args.threads, args.precision)
    x = np.random.default_rng(0).standard_normal((1, 3, args.resolution, args.resolution)).astype(np.float32)
    after_load = _status_mib("VmRSS")
    for _ in range(max(1, args.warmup)):
        run(x)
    start = time.perf_counter()
    run(x)
    one = max(time.perf_counter() - start, 1e-6)
    total = int(min(args.max_runs, max(args.min_runs, args.seconds / one)))
    per_block = max(_MIN_RUNS_PER_BLOCK, math.ceil(total / args.blocks))
    medians: list[float] = []
    p95s: list[float] = []
    every: list[float] = []
    for _ in range(args.blocks):
        samples = []
        for _ in range(per_block):
            t0 = time.perf_counter()
            run(x)
            samples.append((time.perf_counter() - t0) * 1000.0)
        medians.append(_median(samples))
        p95s.append(_percentile(samples, 95.0))
        every.extend(samples)
    json.dump(
        {
            "runtime_version": version,
            "runs": len(every),
            "p50_ms": min(medians),
            "p95_ms": p95s[medians.index(min(medians))],
            "median_block_p50_ms": _median(medians),
            "pooled_p50_ms": _median(every),
            "pooled_p95_ms": _percentile(every, 95.0),
            "min_ms": min(every),
            "python_rss_mib": python_rss,
            "baseline_rss_mib": baseline,
            "loaded_rss_mib": after_load,
            "peak_rss_mib": _status_mib("VmHWM"),
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
