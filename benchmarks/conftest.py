"""Shared benchmark fixtures and the library versions every result carries."""

from __future__ import annotations

import importlib.metadata as md
import platform
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    for pkg in ("edgeclf", "torch", "torchvision", "timm", "onnxruntime", "openvino"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{name} not available at ../shared/datasets")
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bundle", default=None, help="bundle directory to benchmark (from `edgeclf export`)")
    parser.addoption("--profile", default=None, help="hardware profile name recorded with the results")


@pytest.fixture(scope="session")
def bundle_dir(request: pytest.FixtureRequest) -> Path:
    b = request.config.getoption("--bundle")
    if not b:
        pytest.skip("no --bundle given (pytest benchmarks --benchmark-only --bundle BUNDLE_DIR)")
    return Path(b)
