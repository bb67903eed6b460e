"""An ONNX Runtime copy of an eager module, trusted only where it reproduces eager.

Training (the frozen trunk's cached pass) and evaluation (every split, the robustness
suites) run thousands of forward passes that eager PyTorch runs several times slower than
ONNX Runtime on a CPU. :func:`matching_session` exports the module in memory, runs both on
a check batch and returns the session only if every output matches within ``rtol``
(relative to the output's largest magnitude, at least 1); otherwise, or on any export or
runtime failure, it returns None and the caller stays on eager, which is always right.
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
        sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            ref = module(example.contiguous(memory_format=torch.channels_last))
        refs = [r.float().numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        got = sess.run(None, {"x": example.contiguous().numpy()})
        diff = max(float(np.abs(g - r).max()) / max(1.0, float(np.abs(r).max())) for g, r in zip(got, refs, strict=False))
        return Match(sess if diff <= rtol else None, diff, None)
    except Exception as e:  # noqa: BLE001 - any export/runtime failure: eager is always right
        return Match(None, None, f"{type(e).__name__}: {str(e)[:120]}")
