"""scripts/repair_torchvision.py: its parsers, its stubs, and a real repair of this env."""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "repair_torchvision.py"

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF/Linux only")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("repair_torchvision", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


rt = load_script()

READELF_DYNSYMS = """
Symbol table '.dynsym' contains 6 entries:
   Num:    Value          Size Type    Bind   Vis      Ndx Name
     0: 0000000000000000     0 NOTYPE  LOCAL  DEFAULT  UND 
     1: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND _ZN3c104cuda12device_countEv
     2: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND cudaGetLastError@libcudart.so.13 (4)
     3: 0000000000000000     0 OBJECT  GLOBAL DEFAULT  UND _ZTISt9exception@GLIBCXX_3.4 (2)
     4: 0000000000000000     0 NOTYPE  WEAK   DEFAULT  UND __gmon_start__
     5: 0000000000000000     0 TLS     GLOBAL DEFAULT  UND _ZN3c104impl26raw_local_dispatch_key_setE
     6: 0000000000067a40    42 FUNC    GLOBAL DEFAULT   12 PyInit__C
"""

READELF_VERSIONS = """
Version definition section '.gnu.version_d' contains 1 entry:
  000000: Rev: 1  Flags: BASE  Index: 1  Cnt: 1  Name: _C.so

Version needs section '.gnu.version_r' contains 2 entries:
 Addr: 0x00000000000579d8  Offset: 0x000579d8  Link: 4 (.dynstr)
  000000: Version: 1  File: libcudart.so.13  Cnt: 1
  0x0010:   Name: libcudart.so.13  Flags: none  Version: 4
  0x0020: Version: 1  File: libstdc++.so.6  Cnt: 2
  0x0030:   Name: GLIBCXX_3.4.21  Flags: none  Version: 3
  0x0040:   Name: GLIBCXX_3.4  Flags: none  Version: 2
"""


def test_parse_undefined_symbols() -> None:
    symbols = rt.parse_undefined_symbols(READELF_DYNSYMS)
    assert [s.name for s in symbols] == [
        "_ZN3c104cuda12device_countEv",
        "cudaGetLastError",
        "_ZTISt9exception",
        "__gmon_start__",
        "_ZN3c104impl26raw_local_dispatch_key_setE",
    ]
    cuda = symbols[1]
    assert (cuda.kind, cuda.weak, cuda.version, cuda.version_index) == ("FUNC", False, "libcudart.so.13", 4)
    assert symbols[0].version is None and symbols[0].version_index is None
    assert symbols[2].kind == "OBJECT" and symbols[3].weak and symbols[4].kind == "TLS"


def test_parse_version_needs_ignores_definitions() -> None:
    assert rt.parse_version_needs(READELF_VERSIONS) == {
        4: "libcudart.so.13",
        3: "libstdc++.so.6",
        2: "libstdc++.so.6",
    }


def test_parse_defined_symbols_strips_versions() -> None:
    nm = (
        "0000000000001140 T cudaFree@@libcudart.so.13\n"
        "0000000000000000 A GLIBC_2.2.5\n"
        "00000000000020a0 B _ZN3c104cuda20CUDACachingAllocator9allocatorE\n"
    )
    assert rt.parse_defined_symbols(nm) == {"cudaFree", "GLIBC_2.2.5", "_ZN3c104cuda20CUDACachingAllocator9allocatorE"}


def test_parse_ldconfig_cache() -> None:
    text = (
        "2 libs found in cache `/etc/ld.so.cache'\n"
        "\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6\n"
        "\tlibc.so.6 (libc6) => /lib/i386-linux-gnu/libc.so.6\n"
    )
    assert rt.parse_ldconfig_cache(text) == {"libc.so.6": ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/i386-linux-gnu/libc.so.6"]}


def test_merge_runpath_keeps_origin_entries_once() -> None:
    stub = "$ORIGIN/_cpu_stubs"
    assert rt.merge_runpath(["/__w/build/lib"], stub) == ([stub], ["/__w/build/lib"])
    existing = ["$ORIGIN", "$ORIGIN/../torchvision.libs", stub]
    assert rt.merge_runpath(existing, stub) == (existing, [])


def test_stub_home_follows_namespace() -> None:
    homes = ["libc10_cuda.so", "libtorch_cuda.so"]
    assert rt.stub_home("_ZNK3c104cuda10CUDAStream6streamEv", homes) == "libc10_cuda.so"
    assert rt.stub_home("_ZN2at4cuda26getCurrentDevicePropertiesEv", homes) == "libtorch_cuda.so"


@linux_only
@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("nm") is None, reason="needs cc and binutils")
def test_built_stub_exports_versions_and_aborts_loudly(tmp_path: Path) -> None:
    symbols = [
        rt.UndefinedSymbol("cudaGetLastError", "FUNC", False, "libcudart.so.13", 4),
        rt.UndefinedSymbol("__cudaRegisterFatBinary", "FUNC", False, "libcudart.so.13", 4),
        rt.UndefinedSymbol("_ZN3c104cuda20CUDACachingAllocator9allocatorE", "OBJECT", False),
        rt.UndefinedSymbol("tls_value", "TLS", False),
    ]
    target = tmp_path / "libcudart.so.13"
    rt.build_stub("cc", "libcudart.so.13", symbols, target)

    nm = subprocess.run(["nm", "-D", "--defined-only", str(target)], capture_output=True, text=True, check=True).stdout
    assert "cudaGetLastError@@libcudart.so.13" in nm
    assert "_ZN3c104cuda20CUDACachingAllocator9allocatorE" in nm
    library = ctypes.CDLL(str(target))
    assert library.__cudaRegisterFatBinary() == 0  # load-time hook: harmless
    allocator = "_ZN3c104cuda20CUDACachingAllocator9allocatorE"
    assert ctypes.c_void_p.in_dll(library, allocator).value is None  # zero-filled data

    call = f"import ctypes; ctypes.CDLL({str(target)!r}).cudaGetLastError()"
    result = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True)
    assert result.returncode != 0
    assert "torchvision CPU stub: cudaGetLastError from libcudart.so.13 was called" in result.stderr


CHECK_TORCHVISION = """
import io, torch, torchvision
from PIL import Image
boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
buffer = io.BytesIO()
Image.new("RGB", (16, 8), (200, 30, 60)).save(buffer, format="JPEG", quality=95)
data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
image = torchvision.io.decode_jpeg(data)
assert tuple(image.shape) == (3, 8, 16), image.shape
assert abs(image[0].float().mean().item() - 200) < 8
"""


@linux_only
@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None or importlib.util.find_spec("PIL") is None,
    reason="needs torchvision and Pillow",
)
def test_repair_makes_torchvision_work_and_is_idempotent() -> None:
    first = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr

    check = subprocess.run([sys.executable, "-c", CHECK_TORCHVISION], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    second = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to do" in second.stdout
    assert second.stdout.count("\n") == 1
