"""Provenance: the Python and library versions a record was produced with.

Every stage that writes a record of how something was made (a training run, a bundle's
``creator``, a cost-model calibration, a benchmark result) names its software through
:func:`library_versions`, each with the packages that matter to it.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from collections.abc import Iterable

__all__ = ["library_versions", "usable_cpus"]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else every CPU)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def library_versions(packages: Iterable[str]) -> dict[str, str]:
    """``{"python": ..., <package>: <version>, ...}`` for each of ``packages`` that is installed.

    A package that is not installed is left out, except edgeclf itself run from a source
    tree that was never installed: it is recorded as ``edgeclf.__version__``.
    """
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            if pkg == "edgeclf":
                from edgeclf import __version__

                out[pkg] = __version__
    return out
