"""An ONNX Runtime copy of an eager module, trusted only where it reproduces eager.

Training (the frozen trunk's cached pass) and evaluation (every split, the robustness
suites) run thousands of forward passes that eager PyTorch runs several times slower than
ONNX Runtime on a CPU. :func:`matching_session` exports the module in memory, runs both on
a check batch and returns the session only if every output matches within ``rtol``
(relative to the output's largest magnitude, at least 1); otherwise, or on any export or
runtime failure, it returns None and the caller stays on eager, which is always right.

The exported graph is slimmed with onnxslim first, as the export's own ONNX model is: a
legacy-exported TF-"same"-padding backbone (``tf_efficientnet_lite*``) otherwise computes
its pads from tensor shapes at run time, node by node, which made the session ~1.5x slower
(12.0 vs 7.9 ms per image for lite0 at 224 px, batch 64, on a 2-core AVX2 host). The slimmed
graph must match eager like any other; if slimming fails or does not match, the unslimmed
graph is tried.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class Match:
    session: Any | None  # an onnxruntime.InferenceSession, or None: use eager
    max_diff: float | None  # the largest relative difference seen on the check batch
    error: str | None  # why there is no session, when export or ORT failed
    slimmed: bool = False  # the session runs the onnxslim graph (else the graph as exported)


def matching_session(module: nn.Module, example: torch.Tensor, rtol: float, n_outputs: int = 1) -> Match:
    """Export ``module`` (input ``x``, ``n_outputs`` outputs, dynamic batch) and check it against eager."""
    try:
        import onnxruntime as ort

        names = [f"y{i}" for i in range(n_outputs)]
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example[:1].contiguous(),),
                buf,
                input_names=["x"],
                output_names=names,
                dynamic_axes={k: {0: "n"} for k in ["x", *names]},
                dynamo=False,
                opset_version=17,
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        so.log_severity_level = 3
        with torch.no_grad():
            ref = module(example.contiguous(memory_format=torch.channels_last))
        refs = [r.float().numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        diff = None
        for slimmed, graph in ((True, _slimmed(buf.getvalue())), (False, buf.getvalue())):
            if graph is None:
                continue
            sess = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
            got = sess.run(None, {"x": example.contiguous().numpy()})
            diff = max(float(np.abs(g - r).max()) / max(1.0, float(np.abs(r).max())) for g, r in zip(got, refs, strict=False))
            if diff <= rtol:
                return Match(sess, diff, None, slimmed)
        return Match(None, diff, None)
    except Exception as e:  # noqa: BLE001 - any export/runtime failure: eager is always right
        return Match(None, None, f"{type(e).__name__}: {str(e)[:120]}")


def _slimmed(graph: bytes) -> bytes | None:
    """``graph`` through onnxslim (constant shapes folded), or None when that fails."""
    try:
        import onnx
        import onnxslim

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(onnx.load_from_string(graph))
        return slim.SerializeToString() if slim is not None else None
    except Exception:  # noqa: BLE001 - slimming is an optimisation; the unslimmed graph is still tried
        return None
