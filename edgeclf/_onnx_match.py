"""An ONNX Runtime copy of an eager module, trusted only where it reproduces eager.

Training (the frozen trunk's cached pass) and evaluation (every split, the robustness
suites) run thousands of forward passes that eager PyTorch runs several times slower than
ONNX Runtime on a CPU. :func:`matching_session` exports the module in memory, runs both on
a check batch and returns the session only if every output matches within ``rtol``
(relative to the output's largest magnitude, at least 1); otherwise, or on any export or
runtime failure, it returns None and the caller stays on eager, which is always right.

A TF-"same"-padding backbone (``tf_efficientnet_lite*``) is traced under
:func:`static_same_padding`, so its pads are constants of the traced size instead of shape
arithmetic evaluated node by node at run time, which made the session ~1.5x slower (12.0 vs
7.9 ms per image for lite0 at 224 px, batch 64, on a 2-core AVX2 host). The graph is then
slimmed with onnxslim, as the export's own ONNX model is. The slimmed graph must match eager
like any other (shape included); if slimming fails or does not match, the unslimmed graph is
tried.
"""

from __future__ import annotations

import importlib
import io
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import nn


@contextmanager
def static_same_padding() -> Iterator[None]:
    """While tracing a graph of fixed height and width, timm's TF-"same" padding becomes constant pads.

    timm pads ``Conv2dSame`` / ``MaxPool2dSame`` / ``AvgPool2dSame`` inputs with amounts computed from
    the input's size; traced, that is a chain of Shape/Gather/Div/Ceil/Sub/Max nodes before every
    such layer. The exports here fix H and W (only the batch is dynamic), so the amounts are
    computed in Python from the traced size and written as constants: the same numbers, and a graph
    that no optimiser has to fold. (onnxslim 0.1 folded that arithmetic wrongly whenever a stride-2
    layer met an odd size: lite2 at 260 px gave a 32 x 32 map where eager gives 33 x 33.)
    Outside tracing nothing changes; without timm this does nothing.
    """
    try:  # by module path: ``timm.layers.conv2d_same`` is also the name of a function there
        padding, *users = (
            importlib.import_module(f"timm.layers.{m}") for m in ("padding", "conv2d_same", "pool2d_same", "std_conv")
        )
    except ImportError:
        yield
        return

    padding_pad_same = padding.pad_same

    def pad_same(x: torch.Tensor, kernel_size: Any, stride: Any, dilation: Any = (1, 1), value: float = 0) -> torch.Tensor:
        if not torch.jit.is_tracing():
            return padding_pad_same(x, kernel_size, stride, dilation, value)
        ih, iw = (int(v) for v in x.shape[-2:])  # constants of the traced size
        pad_h = padding.get_same_padding(ih, kernel_size[0], stride[0], dilation[0])
        pad_w = padding.get_same_padding(iw, kernel_size[1], stride[1], dilation[1])
        return torch.nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=value)

    with ExitStack() as stack:  # the callers silence the tracer's warnings around the export
        for module in users:
            if getattr(module, "pad_same", None) is padding_pad_same:
                stack.enter_context(mock.patch.object(module, "pad_same", pad_same))
        yield


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
        with warnings.catch_warnings(), static_same_padding():
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
        diff: float | None = None
        shapes: str | None = None
        for slimmed, graph in ((True, _slimmed(buf.getvalue())), (False, buf.getvalue())):
            if graph is None:
                continue
            sess = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
            got = sess.run(None, {"x": example.contiguous().numpy()})
            if [g.shape for g in got] != [r.shape for r in refs]:
                # e.g. a slimmed TF-"same"-padding graph that folded its pads for another size
                shapes = f"output shape {[tuple(g.shape) for g in got]} vs eager {[tuple(r.shape) for r in refs]}"
                continue
            diff = max(float(np.abs(g - r).max()) / max(1.0, float(np.abs(r).max())) for g, r in zip(got, refs, strict=True))
            if diff <= rtol:
                return Match(sess, diff, None, slimmed)
        return Match(None, diff, shapes if diff is None else None)
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
