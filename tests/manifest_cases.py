"""The bundle contract, written once: good and bad bundles that the Python loader and the C
runtime must accept or refuse identically (``tests/test_manifest_contract.py`` runs both).

Each case mutates a small but real bundle (``tests.conftest.make_synthetic_bundle``: a tiny
ONNX model, 3 labels) and says whether it must load. A refusal must name the problem; the
``match`` text is what both sides' messages must contain (case-insensitive), when given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Case:
    name: str
    mutate: Callable[[Path], None]
    ok: bool
    match: str = ""


def _manifest(b: Path) -> dict[str, Any]:
    return json.loads((b / "edgeclf.json").read_text(encoding="utf-8"))


def _write(b: Path, m: dict[str, Any]) -> None:
    (b / "edgeclf.json").write_text(json.dumps(m, sort_keys=True), encoding="utf-8")


def edit(fn: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def go(b: Path) -> None:
        m = _manifest(b)
        fn(m)
        _write(b, m)

    return go


def set_key(path: str, value: Any) -> Callable[[Path], None]:
    def fn(m: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node: Any = m
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit(fn)


def drop_key(path: str) -> Callable[[Path], None]:
    def fn(m: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node: Any = m
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        del node[last]

    return edit(fn)


def nothing(b: Path) -> None:
    pass


def old_schema(b: Path) -> None:  # a bundle written before the decision section existed
    m = _manifest(b)
    m.pop("decision", None)
    m["schema_version"] = "1.0.0"
    _write(b, m)


def outside_file(target: str) -> Callable[[Path], None]:
    """The artifact entry names a file outside the bundle, with that file's real hash and size."""

    def go(b: Path) -> None:
        import hashlib

        outside = b.parent / "outside.onnx"
        outside.write_bytes((b / "model.onnx").read_bytes())
        m = _manifest(b)
        m["artifacts"][0]["file"] = target.replace("{OUT}", str(outside))
        m["artifacts"][0]["sha256"] = hashlib.sha256(outside.read_bytes()).hexdigest()
        _write(b, m)

    return go


def symlink_out(b: Path) -> None:
    outside = b.parent / "outside.onnx"
    outside.write_bytes((b / "model.onnx").read_bytes())
    (b / "model.onnx").unlink()
    os.symlink(outside, b / "model.onnx")


def symlink_in(b: Path) -> None:
    (b / "real.onnx").write_bytes((b / "model.onnx").read_bytes())
    (b / "model.onnx").unlink()
    os.symlink("real.onnx", b / "model.onnx")


def garbage_with_its_hash(b: Path) -> None:
    import hashlib

    data = b"this is not an ONNX model" * 10
    (b / "model.onnx").write_bytes(data)
    m = _manifest(b)
    m["artifacts"][0].update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    _write(b, m)


def parity(text: str) -> Callable[[Path], None]:
    def go(b: Path) -> None:
        (b / "parity.json").write_text(text, encoding="utf-8")

    return go


def bom(b: Path) -> None:
    (b / "edgeclf.json").write_bytes(b"\xef\xbb\xbf" + (b / "edgeclf.json").read_bytes())


def manifest_is_a_folder(b: Path) -> None:
    (b / "edgeclf.json").unlink()
    (b / "edgeclf.json").mkdir()


def tamper(b: Path) -> None:
    data = bytearray((b / "model.onnx").read_bytes())
    data[-5] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))


GOOD_PARITY = json.dumps({"table": [{"format": "onnx", "precision": "fp32", "ms_per_image": 0.1, "status": "ok"}]})
#: the same report in the versioned layout (edgeclf.export.parity_schema, schema 1.0.0)
GOOD_PARITY_V1 = json.dumps(
    {
        "schema_version": "1.0.0",
        "split": "val",
        "images": 10,
        "temperature": 1.0,
        "artifacts": [],
        "table": [
            {
                "format": "onnx",
                "precision": "fp32",
                "status": "ok",
                "size_mb": 0.1,
                "macro_f1": 0.9,
                "delta_macro_f1": 0.0,
                "agreement": 1.0,
                "ms_per_image": 0.1,
                "error": None,
            }
        ],
        "robustness": None,
    }
)

CASES: list[Case] = [
    Case("as written", nothing, True),
    Case("schema 1.0.0 without a decision section", old_schema, True),
    Case("decision null", set_key("decision", None), True),
    Case("a good parity report", parity(GOOD_PARITY), True),
    Case("a good parity report of schema 1.0.0", parity(GOOD_PARITY_V1), True),
    Case("a link to a file inside the bundle", symlink_in, True),
    Case("temperature as an integer", set_key("temperature", 2), True),
    # paths
    Case("absolute artifact path", outside_file("{OUT}"), False, "file name"),
    Case("artifact path with ..", outside_file("../outside.onnx"), False, "file name"),
    Case("artifact path in a folder", set_key("artifacts.0.file", "sub/model.onnx"), False, "file name"),
    Case("a link out of the bundle", symlink_out, False, "bundle"),
    Case("tampered artifact", tamper, False, "sha-256"),
    Case("hash matches, model does not load", garbage_with_its_hash, False, "model.onnx"),
    # parity.json
    Case("parity.json truncated", parity(GOOD_PARITY[:25]), False, "parity.json"),
    Case("parity.json row without format", parity(json.dumps({"table": [{"precision": "fp32"}]})), False, "parity.json"),
    Case("parity.json without a table", parity(json.dumps({"rows": []})), False, "parity.json"),
    Case(
        "parity.json ms_per_image as text",
        parity(json.dumps({"table": [{"format": "onnx", "precision": "fp32", "ms_per_image": "fast"}]})),
        False,
        "parity.json",
    ),
    Case(
        "parity.json row with an unknown status",
        parity(json.dumps({"table": [{"format": "onnx", "precision": "fp32", "ms_per_image": 0.1, "status": "great"}]})),
        False,
        "status",
    ),
    Case(
        "parity.json status as a number",
        parity(json.dumps({"table": [{"format": "onnx", "precision": "fp32", "status": 1}]})),
        False,
        "status",
    ),
    Case("parity.json of schema 2.0.0", parity(GOOD_PARITY_V1.replace('"1.0.0"', '"2.0.0"')), False, "upgrade edgeclf"),
    Case("parity.json of schema 0.9.0", parity(GOOD_PARITY_V1.replace('"1.0.0"', '"0.9.0"')), False, "re-export"),
    Case("parity.json of schema 1.x", parity(GOOD_PARITY_V1.replace('"1.0.0"', '"1.x"')), False, "semantic version"),
    Case("parity.json of a newer minor schema", parity(GOOD_PARITY_V1.replace('"1.0.0"', '"1.7.2"')), True),
    Case("parity.json as a list", parity("[]"), False, "not a JSON object"),
    Case(
        "parity.json of schema 1.0.0 without a row's size",
        parity(GOOD_PARITY_V1.replace('"size_mb": 0.1, ', "")),
        False,
        "size_mb",
    ),
    Case("parity.json of schema 1.0.0 without its split", parity(GOOD_PARITY_V1.replace('"split": "val", ', "")), False, "split"),
    Case(
        "parity.json agreement as text",
        parity(json.dumps({"table": [{"format": "onnx", "precision": "fp32", "agreement": "high"}]})),
        False,
        "agreement",
    ),
    # values
    Case("temperature 0", set_key("temperature", 0.0), False, "temperature"),
    Case("temperature -1", set_key("temperature", -1.0), False, "temperature"),
    Case("temperature NaN", set_key("temperature", float("nan")), False, ""),
    Case("temperature as text", set_key("temperature", "1.5"), False, "temperature"),
    Case("resize_size 100000", set_key("preprocess.resize_size", 100000), False, "8192"),
    Case("crop_size as a float", set_key("preprocess.crop_size", 32.0), False, "crop_size"),
    Case("crop larger than resize", set_key("preprocess.crop_size", 64), False, "crop_size"),
    Case("std 0", set_key("preprocess.std", [0.2, 0.0, 0.2]), False, "std"),
    # the C reader converts mean, std and scale to float32 before it checks them
    Case("std 0 as a float32", set_key("preprocess.std", [0.2, 1e-50, 0.2]), False, "std"),
    Case("mean beyond float32", set_key("preprocess.mean", [0.5, 1e39, 0.5]), False, "mean"),
    Case("scale 0 as a float32", set_key("preprocess.scale", 1e-50), False, "scale"),
    Case("unknown interpolation", set_key("preprocess.interpolation", "lanczos"), False, "interpolation"),
    Case("BGR colour order", set_key("preprocess.color_order", "BGR"), False, "color_order"),
    Case("unknown preprocessing key", set_key("preprocess.gamma", 2.2), False, "gamma"),
    Case("preprocessing version 2", set_key("preprocess.version", 2), False, "version"),
    Case("min_runtime_version from the future", set_key("min_runtime_version", "99.0.0"), False, "99.0.0"),
    Case("min_runtime_version missing", drop_key("min_runtime_version"), False, "min_runtime_version"),
    Case("schema_version 2.0.0", set_key("schema_version", "2.0.0"), False, "schema_version"),
    Case("schema_version not semver", set_key("schema_version", "1.x"), False, "schema_version"),
    Case("unknown top-level key", set_key("colour", "blue"), False, "colour"),
    Case("UTF-8 byte-order mark", bom, False, "byte-order mark"),
    Case("edgeclf.json is a folder", manifest_is_a_folder, False, "edgeclf.json"),
    Case("labels empty", set_key("labels", []), False, "labels"),
    Case("duplicate labels", set_key("labels", ["a", "b", "a"]), False, "more than once"),
    Case("fewer labels than outputs", set_key("labels", ["a", "b"]), False, "labels"),
    Case("more labels than outputs", set_key("labels", ["a", "b", "c", "d"]), False, "labels"),
    Case("label not a string", set_key("labels", ["a", "b", 3]), False, "labels"),
    Case("creator value not a string", set_key("creator", {"edgeclf": 1}), False, "creator"),
    Case("name missing", drop_key("name"), False, "name"),
    # artifacts
    Case("artifact without status", drop_key("artifacts.0.status"), False, "status"),
    Case("unknown artifact key", set_key("artifacts.0.colour", "blue"), False, "colour"),
    Case("negative size", set_key("artifacts.0.size_bytes", -1), False, "size_bytes"),
    Case("sha256 not hex", set_key("artifacts.0.sha256", "z" * 64), False, "sha"),
    Case("size as text", set_key("artifacts.0.size_bytes", "12"), False, "size_bytes"),
]
