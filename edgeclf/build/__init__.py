"""``edgeclf build``: the whole chain for one hardware profile, resumable stage by stage.

audit -> split -> select -> train -> evaluate (val; test once) -> export (+ parity gates,
the C runtime included) -> benchmark (measured when this host is the target, else
estimated and labelled so) -> device package (bundle, C library and headers or the sources
to build them, the C example, a README for the device) -> report.

Every stage records its inputs' key and its result in ``OUT/stages/<stage>.json`` when it
finishes; a re-run skips a stage whose key and outputs are unchanged and whose result still
validates, and redoes it (and what depends on it) otherwise. Stage outputs are written to
temporary names and renamed, so an interrupted build never leaves a stage that looks finished.

The package, in the order its modules import each other:

* ``options`` — :class:`BuildOptions`, :class:`BuildError`, the log callback's type, :func:`demo_options`;
* ``host`` — the data set to read, and whether this host stands for the profile's device;
* ``results`` — each stage's result (a model per stage, as ``OUT/stages/<stage>.json`` records it),
  :class:`BuildRun` (what :func:`build` returns) and :class:`BuildRecord` (``build.json``);
* ``stages`` — the stages audit to benchmark;
* ``report`` — ``report.md`` and ``build.json``;
* ``package`` — the device package;
* ``chain`` — :func:`build` and the stage cache (:class:`Stages`).
"""

from __future__ import annotations

# The public surface, then (``name as name``) the stage functions the tests drive one at a time.
from edgeclf.build.chain import STAGES, StageRecord, Stages, build, data_listing_key
from edgeclf.build.host import host_is_target, host_profile, resolve_data
from edgeclf.build.options import DEMO_OUT, BuildError, BuildOptions, Log, demo_options
from edgeclf.build.report import _decision_lines as _decision_lines
from edgeclf.build.report import weak_classes
from edgeclf.build.results import BuildRecord, BuildResults, BuildRun, StageResult
from edgeclf.build.stages import _stage_benchmark as _stage_benchmark
from edgeclf.build.stages import _stage_evaluate as _stage_evaluate
from edgeclf.build.stages import _stage_select as _stage_select

__all__ = [
    "DEMO_OUT",
    "STAGES",
    "BuildError",
    "BuildOptions",
    "BuildRecord",
    "BuildResults",
    "BuildRun",
    "Log",
    "StageRecord",
    "StageResult",
    "Stages",
    "build",
    "data_listing_key",
    "demo_options",
    "host_is_target",
    "host_profile",
    "resolve_data",
    "weak_classes",
]
