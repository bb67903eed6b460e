"""The host the build runs on: the data it reads, and whether its latency stands for the device's."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from edgeclf.build.options import Log
from edgeclf.errors import ConfigError


def resolve_data(data: str | Path, out: Path, log: Log) -> Path:
    """``elpv`` (the embedded default data set, from PyPI) or an ImageFolder directory."""
    if str(data) == "elpv":
        from edgeclf.data.datasets import materialize_elpv

        dest = out / "data-elpv"
        if not (dest / "metadata.csv").is_file():
            log("laying out the elpv data set (PyPI elpv-dataset)")
            materialize_elpv(dest)
        return dest
    p = Path(data)
    if not p.is_dir():
        raise ConfigError(f"--data {data}: not a directory (an ImageFolder tree, one sub-folder per class), nor 'elpv'")
    return p


def host_is_target(profile: Any) -> tuple[bool, str]:
    """Whether latency measured here stands for the profile's device.

    It does for the built-in profile of this host's ISA class, and for a profile measured
    on a host with this CPU (``edgeclf profiles calibrate``: it has a ``cost_model`` section).
    """
    from edgeclf.select.calibration import _cpuinfo, host_cpu_model, match_host_profile

    info = _cpuinfo()
    arch = platform.machine().lower()
    matched = match_host_profile(arch, set(info.get("flags", info.get("Features", "")).split()))
    if profile.compute.target != "cpu":
        return False, f"the profile's models run on its {profile.compute.target.upper()}; this host has none"
    same_arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch) == profile.cpu.arch
    if getattr(profile, "cost_model", None) is not None and same_arch and profile.cpu.model == host_cpu_model(info):
        return True, f"this host has the CPU {profile.name} was measured on ({profile.cpu.model})"
    if matched != profile.name:
        return False, f"this host ({arch}, matches profile {matched or 'none'}) is not a {profile.name}"
    return True, f"this host matches {profile.name}"


def host_profile() -> str:
    """The built-in profile that describes this host (for ``--profile auto``)."""
    from edgeclf.select.calibration import _cpuinfo, match_host_profile

    info = _cpuinfo()
    name = match_host_profile(platform.machine().lower(), set(info.get("flags", info.get("Features", "")).split()))
    if name is None:
        raise ConfigError(f"no built-in profile describes this host ({platform.machine()}); pass --profile NAME")
    return name
