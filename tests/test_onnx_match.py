"""The ONNX Runtime copy of an eager module that training and evaluation run their many forward passes on."""

from __future__ import annotations

import io

import pytest
import timm
import torch

from edgeclf._onnx_match import matching_session, static_same_padding


@pytest.mark.parametrize("size", [64, 100])  # 100 px: stride-2 layers meet odd sizes (25 -> 13)
def test_the_session_runs_the_slimmed_graph_and_matches_eager(size: int) -> None:
    """A TF-"same"-padding backbone's pads are traced as constants (shape arithmetic ran 1.5x slower
    on ORT, and onnxslim folded it wrongly at odd sizes); the session runs the slimmed graph,
    checked against eager like any other, for the whole model and for a trunk (a 4-D output)."""
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()
    x = torch.randn(4, 3, size, size)
    m = matching_session(model, x, rtol=1e-4)
    assert m.session is not None and m.slimmed and m.max_diff is not None and m.max_diff <= 1e-4
    got = m.session.run(None, {"x": torch.randn(5, 3, size, size).numpy()})[0]  # any batch size
    assert got.shape == (5, 3)
    trunk = torch.nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:3]).eval()
    t = matching_session(trunk, x, rtol=1e-4)
    assert t.session is not None and t.slimmed, (t.max_diff, t.error)
    assert t.session.run(None, {"x": x.numpy()})[0].shape == tuple(trunk(x).shape)


def test_static_same_padding_changes_nothing_outside_tracing() -> None:
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()
    x = torch.randn(2, 3, 100, 100)
    with torch.no_grad():
        ref = model(x)
        with static_same_padding():
            assert torch.equal(model(x), ref)  # eager calls keep timm's own padding
            assert model(torch.randn(1, 3, 73, 73)).shape == (1, 3)  # and any other size still works


def test_a_session_with_the_wrong_output_shape_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph whose output shape differs from eager's is rejected like one whose values differ
    (and the next graph is tried), never an error that skips the unslimmed graph."""
    import edgeclf._onnx_match as om

    class Crop(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 1:, 1:] * 2

    def bad_slim(graph: bytes) -> bytes:  # a "slimmed" graph of another module: one pixel smaller
        buf = io.BytesIO()
        torch.onnx.export(
            Crop(), (torch.randn(1, 3, 8, 8),), buf, input_names=["x"], output_names=["y0"],
            dynamic_axes={"x": {0: "n"}, "y0": {0: "n"}}, dynamo=False, opset_version=17,
        )  # fmt: skip
        return buf.getvalue()

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    monkeypatch.setattr(om, "_slimmed", bad_slim)
    m = om.matching_session(Double(), torch.randn(2, 3, 8, 8), rtol=1e-4)
    assert m.session is not None and not m.slimmed and m.max_diff == 0.0


def test_a_module_that_does_not_match_stays_on_eager() -> None:
    class Noisy(torch.nn.Module):  # eager differs from any exported copy: dropout in training mode
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.dropout(x.mean((2, 3)), 0.5, training=True) * 100

    m = matching_session(Noisy(), torch.randn(4, 3, 8, 8), rtol=1e-4)
    assert m.session is None
