"""What a measurement ran on: CPU model, library versions, and the process's resident memory.

Peak resident memory (RSS) per measurement: on Linux the kernel's high-water mark
(``VmHWM``) is reset before each artifact is loaded (``5`` written to
``/proc/self/clear_refs``, Linux 4.0+), so the peak read afterwards belongs to that
artifact's load and timed calls. Where that reset is not possible, the peak is
``getrusage(RUSAGE_SELF).ru_maxrss``: the peak of the whole process so far, which
includes every artifact measured before; the method used is recorded with the figures.
"""

from __future__ import annotations

import platform
import resource
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeclf._provenance import library_versions as _library_versions
from edgeclf._provenance import usable_cpus

__all__ = ["Environment", "MemoryProbe", "RssMethod", "cpu_model", "environment", "library_versions"]

#: Packages whose versions every result records (those installed).
VERSIONED_PACKAGES = ("edgeclf", "numpy", "onnxruntime", "openvino", "torch", "tensorrt")

RssMethod = Literal["vmhwm_reset", "ru_maxrss_process"]

_PROC = Path("/proc")


def _cpuinfo_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if sep and value and key not in fields:
            fields[key] = value
    return fields


def cpu_model(cpuinfo: str | None = None, device_tree_model: str | None = None) -> str:
    """The CPU's name: ``model name`` from ``/proc/cpuinfo`` (x86), else the board's model
    (Arm boards: ``Model`` in ``/proc/cpuinfo`` or ``/proc/device-tree/model``), else
    what :mod:`platform` reports.

    ``cpuinfo`` and ``device_tree_model`` replace the files' contents (for tests).
    """
    if cpuinfo is None:
        try:
            cpuinfo = (_PROC / "cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    fields = _cpuinfo_fields(cpuinfo)
    if fields.get("model name"):
        return fields["model name"]
    if device_tree_model is None:
        try:
            device_tree_model = (_PROC / "device-tree" / "model").read_bytes().decode("utf-8", "replace")
        except OSError:
            device_tree_model = ""
    for candidate in (fields.get("Model"), device_tree_model.strip("\x00 \n"), fields.get("Hardware")):
        if candidate:
            return candidate
    return platform.processor() or platform.machine() or "unknown"


def library_versions() -> dict[str, str]:
    """Python and the installed versions of :data:`VERSIONED_PACKAGES`."""
    return _library_versions(VERSIONED_PACKAGES)


class Environment(BaseModel):
    """The machine and software a measurement ran on."""

    model_config = ConfigDict(extra="ignore")  # forward compatible within a schema major version

    cpu_model: str = Field(description="From /proc/cpuinfo 'model name' (or the board model on Arm).")
    machine: str = Field(description="platform.machine(), e.g. x86_64 or aarch64.")
    system: str = Field(description="platform.platform().")
    cpu_count: int = Field(description="CPUs this process may run on.")
    versions: dict[str, str] = Field(description="python and library versions.")


def environment() -> Environment:
    """The :class:`Environment` of this process."""
    return Environment(
        cpu_model=cpu_model(),
        machine=platform.machine(),
        system=platform.platform(),
        cpu_count=usable_cpus(),
        versions=library_versions(),
    )


def _status_kb(field: str) -> float | None:
    try:
        for line in (_PROC / "self" / "status").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _ru_maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


class MemoryProbe:
    """Resident memory of this process around one measurement (MiB).

    ``start()`` notes the current RSS and resets the peak where the kernel allows;
    ``peak_mb()`` is the peak since then (or the process's lifetime peak, see ``method``).
    """

    def __init__(self) -> None:
        self.start_mb: float | None = None
        self.method: RssMethod = "ru_maxrss_process"

    @staticmethod
    def current_mb() -> float | None:
        kb = _status_kb("VmRSS")
        return None if kb is None else kb / 1024

    def start(self) -> None:
        self.start_mb = self.current_mb()
        self.method = "vmhwm_reset" if self._reset_peak() else "ru_maxrss_process"

    @staticmethod
    def _reset_peak() -> bool:
        try:
            with open(_PROC / "self" / "clear_refs", "w", encoding="ascii") as f:
                f.write("5")
        except OSError:
            return False
        return _status_kb("VmHWM") is not None

    def peak_mb(self) -> float:
        if self.method == "vmhwm_reset":
            kb = _status_kb("VmHWM")
            if kb is not None:
                return kb / 1024
        return _ru_maxrss_mb()

    def delta_mb(self) -> float | None:
        """Peak minus the RSS at ``start()``: what loading and running the artifact added."""
        return None if self.start_mb is None else max(0.0, self.peak_mb() - self.start_mb)
