"""The ONNX Runtime copy of an eager module that training and evaluation run their many forward passes on."""

from __future__ import annotations

import timm
import torch

from edgeclf._onnx_match import matching_session


def test_the_session_runs_the_slimmed_graph_and_matches_eager() -> None:
    """A TF-"same"-padding backbone computes its pads from shapes unless slimmed (1.5x slower on ORT);
    the session runs the slimmed graph, checked against eager like any other."""
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()
    x = torch.randn(4, 3, 64, 64)
    m = matching_session(model, x, rtol=1e-4)
    assert m.session is not None and m.slimmed and m.max_diff is not None and m.max_diff <= 1e-4
    got = m.session.run(None, {"x": torch.randn(5, 3, 64, 64).numpy()})[0]  # any batch size
    assert got.shape == (5, 3)


def test_a_module_that_does_not_match_stays_on_eager() -> None:
    class Noisy(torch.nn.Module):  # eager differs from any exported copy: dropout in training mode
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.dropout(x.mean((2, 3)), 0.5, training=True) * 100

    m = matching_session(Noisy(), torch.randn(4, 3, 8, 8), rtol=1e-4)
    assert m.session is None
