"""edgeclf: from a folder of labelled images to a classifier running inside an edge device."""

from importlib.metadata import PackageNotFoundError, version

from edgeclf.errors import ConfigError, DataError, EdgeclfError, ProfileError

try:
    __version__ = version("edgeclf")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["ConfigError", "DataError", "EdgeclfError", "ProfileError", "__version__", "predict"]


def __getattr__(name: str):  # noqa: ANN202 - lazy: `import edgeclf` stays light (no torch)
    if name == "predict":
        from edgeclf.runtime.reference import predict

        return predict
    raise AttributeError(f"module 'edgeclf' has no attribute {name!r}")
