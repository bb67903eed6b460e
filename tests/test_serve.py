"""``edgeclf serve``: the HTTP API over the C runtime, on a small real bundle — answers equal the
runtime's, requests are micro-batched, every bad input is a JSON error with a stable code (never a
500), the API key is checked, metrics are Prometheus text, and registry mode follows promotions
(a bad version is refused while the old one keeps serving)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
runtime = pytest.importorskip("edgeclf.runtime")

from fastapi.testclient import TestClient  # noqa: E402

from edgeclf.serve import ERROR_CODES, ServeOptions, create_app  # noqa: E402
from tests.conftest import blob_image, free_port, make_synthetic_bundle, png_bytes  # noqa: E402

_png = png_bytes


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return make_synthetic_bundle(tmp_path / "bundle", crop=32, labels=("a", "b", "c"))


def _client(app: object) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def test_classify_answers_what_the_runtime_answers(bundle: Path) -> None:
    imgs = [np.asarray(blob_image(i, 48)) for i in range(3)]
    with runtime.Classifier(bundle) as clf:
        want = clf.probabilities(imgs)
    with _client(create_app(bundle)) as c:
        r = c.post("/v1/classify?top_k=2", content=_png(imgs[0]), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert len(doc["results"]) == 1 and len(doc["results"][0]["top_k"]) == 2
        top = doc["results"][0]["top_k"][0]
        assert top["label"] == ["a", "b", "c"][int(np.argmax(want[0]))]
        assert abs(top["probability"] - float(want[0].max())) < 1e-5
        assert doc["model"]["content_hash"].startswith("sha256:") and doc["timing_ms"]["total"] > 0
        files = [("files", (f"{i}.png", _png(im), "image/png")) for i, im in enumerate(imgs)]
        r = c.post("/v1/classify", files=files)
        assert r.status_code == 200, r.text
        got = [{t["label"]: t["probability"] for t in res["top_k"]} for res in r.json()["results"]]
        for g, w in zip(got, want, strict=True):
            assert max(abs(g[lab] - float(p)) for lab, p in zip(["a", "b", "c"], w, strict=True)) < 1e-5
        assert [res["name"] for res in r.json()["results"]] == ["0.png", "1.png", "2.png"]
        m = c.get("/v1/model").json()
        assert m["labels"] == ["a", "b", "c"] and m["preprocess"]["crop_size"] == 32 and m["artifact"]["backend"]
        assert c.get("/healthz").json() == {"status": "ok"} and c.get("/readyz").status_code == 200
        assert c.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"content": b"", "headers": {"content-type": "image/png"}}, "empty_body"),
        ({"content": b"this is not an image", "headers": {"content-type": "image/jpeg"}}, "not_an_image"),
        ({"content": "TRUNCATED", "headers": {"content-type": "image/png"}}, "truncated_image"),
        ({"content": "BOMB", "headers": {"content-type": "image/png"}}, "image_too_large"),
        ({"content": b"{}", "headers": {"content-type": "application/json"}}, "unsupported_media_type"),
        ({"content": b"x" * (2 * 1024 * 1024), "headers": {"content-type": "image/png"}}, "body_too_large"),
        ({"files": {"field": (None, "no file")}}, "no_images"),
    ],
)
def test_bad_input_is_a_json_error_with_a_stable_code(bundle: Path, kwargs: dict, code: str) -> None:
    if kwargs.get("content") == "TRUNCATED":
        kwargs = {**kwargs, "content": _png(np.asarray(blob_image(1, 64)))[:120]}
    if kwargs.get("content") == "BOMB":  # a header that claims 200 M pixels: refused before decoding
        import struct
        import zlib

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        ihdr = struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0, 0, 0)
        kwargs = {**kwargs, "content": b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")}
    with _client(create_app(bundle, options=ServeOptions(max_body_mb=1))) as c:
        r = c.post("/v1/classify", **kwargs)
    assert r.status_code == ERROR_CODES[code], r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and "Traceback" not in r.text


def test_bad_top_k_and_too_many_images(bundle: Path) -> None:
    png = _png(np.asarray(blob_image(2, 40)))
    with _client(create_app(bundle, options=ServeOptions(max_images=2))) as c:
        for bad in ("0", "-3", "two"):
            r = c.post(f"/v1/classify?top_k={bad}", content=png, headers={"content-type": "image/png"})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_top_k"
        r = c.post("/v1/classify", files=[("f", (f"{i}.png", png, "image/png")) for i in range(3)])
        assert r.status_code in (413, 400) and r.json()["error"]["code"] in ("too_many_images", "not_an_image")


def test_api_key_is_required_when_configured(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLF_TEST_KEY", "s3cret")
    png = _png(np.asarray(blob_image(3, 40)))
    with _client(create_app(bundle, options=ServeOptions(api_key_env="EDGECLF_TEST_KEY"))) as c:
        r = c.post("/v1/classify", content=png, headers={"content-type": "image/png"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = c.post("/v1/classify", content=png, headers={"content-type": "image/png", "x-api-key": "wrong"})
        assert r.status_code == 401
        r = c.post("/v1/classify", content=png, headers={"content-type": "image/png", "authorization": "Bearer s3cret"})
        assert r.status_code == 200
        assert c.get("/healthz").status_code == 200  # health stays open for the orchestrator
    monkeypatch.delenv("EDGECLF_TEST_KEY")
    from edgeclf.errors import ConfigError

    with pytest.raises(ConfigError, match="EDGECLF_TEST_KEY"):
        create_app(bundle, options=ServeOptions(api_key_env="EDGECLF_TEST_KEY"))


def test_metrics_are_prometheus_text(bundle: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    png = _png(np.asarray(blob_image(4, 40)))
    with _client(create_app(bundle)) as c:
        for _ in range(3):
            c.post("/v1/classify", content=png, headers={"content-type": "image/png"})
        c.post("/v1/classify", content=b"", headers={"content-type": "image/png"})
        text = c.get("/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    reqs = {
        (s.labels["route"], s.labels["status"]): s.value for s in fams["edgeclf_requests"].samples if s.name.endswith("_total")
    }
    assert reqs[("/v1/classify", "200")] == 3 and reqs[("/v1/classify", "400")] == 1
    assert "edgeclf_batch_size" in fams and "edgeclf_queue_depth" in fams
    (info,) = [s for s in fams["edgeclf_model_info"].samples]
    assert info.labels["content_hash"].startswith("sha256:") and info.value == 1


def test_concurrent_requests_are_batched_and_a_full_queue_is_429(bundle: Path) -> None:
    import httpx

    png = _png(np.asarray(blob_image(5, 40)))

    async def burst(app: object, n: int) -> list[httpx.Response]:
        async with app.router.lifespan_context(app):  # type: ignore[attr-defined]
            transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                reqs = [client.post("/v1/classify", content=png, headers={"content-type": "image/png"}) for _ in range(n)]
                out = list(await asyncio.gather(*reqs))
                out.append(await client.get("/metrics"))
                return out

    app = create_app(bundle, options=ServeOptions(max_batch=8, max_wait_ms=50, max_queue=64))
    res = asyncio.run(burst(app, 16))
    assert all(r.status_code == 200 for r in res[:-1])
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(res[-1].text)}
    samples = {s.name: s.value for s in fams["edgeclf_batch_size"].samples if not s.labels.get("le")}
    assert samples["edgeclf_batch_size_sum"] == 16 and samples["edgeclf_batch_size_count"] < 16  # batched

    small = create_app(bundle, options=ServeOptions(max_batch=1, max_wait_ms=0, max_queue=2))
    res = asyncio.run(burst(small, 12))
    codes = [r.status_code for r in res[:-1]]
    assert 429 in codes and 200 in codes
    r429 = next(r for r in res[:-1] if r.status_code == 429)
    assert r429.headers["retry-after"] == "1" and r429.json()["error"]["code"] == "overloaded"


def _served_after(c: TestClient, version: str, seconds: float = 10.0) -> dict:
    """The served model's description once it is ``version`` (or when ``seconds`` have passed)."""
    import time

    deadline = time.time() + seconds
    doc = c.get("/v1/model").json()
    while doc["version"] != version and time.time() < deadline:
        time.sleep(0.2)
        doc = c.get("/v1/model").json()
    return doc


def test_registry_mode_follows_promotions_and_refuses_a_bad_version(tmp_path: Path) -> None:
    import time

    from edgeclf.registry import Registry
    from tests.test_registry import make_bundle

    reg = Registry(tmp_path / "reg")
    v1 = reg.add(make_bundle(tmp_path / "b1", seed=1)).entry
    v2 = reg.add(make_bundle(tmp_path / "b2", seed=2)).entry
    reg.promote(v1.version)
    png = _png(np.asarray(blob_image(7, 40)))
    with _client(create_app(registry=tmp_path / "reg")) as c:
        assert c.get("/v1/model").json()["version"] == v1.version
        reg.promote(v2.version)
        assert _served_after(c, v2.version)["content_hash"] == v2.content_hash
        r = c.post("/v1/classify", content=png, headers={"content-type": "image/png"})
        assert r.json()["model"] == {"version": v2.version, "content_hash": v2.content_hash}
        reg.rollback()  # back to v1, then forward to v2 again: both followed without a restart
        assert _served_after(c, v1.version)["content_hash"] == v1.content_hash
        reg.promote(v2.version)
        assert _served_after(c, v2.version)["version"] == v2.version
        # a version whose files no longer match: refused, v2 keeps serving
        v3 = reg.add(make_bundle(tmp_path / "b3", seed=3)).entry.version
        reg.promote(v3)
        onnx = reg.version_dir(v3) / "model.onnx"
        data = bytearray(onnx.read_bytes())
        data[-5] ^= 0xFF
        onnx.write_bytes(bytes(data))
        time.sleep(2.5)
        assert c.get("/v1/model").json()["version"] == v2.version
        text = c.get("/metrics").text
        assert f'edgeclf_model_refused_total{{version="{v3}"}} 1.0' in text


def test_serve_refuses_both_or_neither_source(bundle: Path) -> None:
    from edgeclf.errors import ConfigError

    with pytest.raises(ConfigError, match="not both"):
        create_app(bundle, registry=bundle.parent)
    with pytest.raises(ConfigError, match="not both"):
        create_app()


def test_an_internal_failure_is_a_json_500_without_a_traceback(bundle: Path) -> None:
    app = create_app(bundle)
    with _client(app) as c:
        from edgeclf.runtime import Classifier

        def boom(self: object, images: object, pixel_format: object = None) -> None:
            raise RuntimeError("secret internals at /opt/x")

        orig = Classifier.infer
        Classifier.infer = boom  # type: ignore[method-assign]
        try:
            r = c.post("/v1/classify", content=_png(np.asarray(blob_image(8, 40))), headers={"content-type": "image/png"})
        finally:
            Classifier.infer = orig  # type: ignore[method-assign]
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal"
    assert "Traceback" not in r.text and "/opt/x" not in r.text


@contextlib.contextmanager
def _serve_process(bundle: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    """`edgeclf serve BUNDLE ARGS` in its own process, ready (``/readyz``) on a free port; killed if still
    running at the end. Yields the process, the port, and a list that holds its output once it ended."""
    import sys
    import time

    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "edgeclf.cli", "serve", str(bundle), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield proc, port, output
    finally:
        if proc.poll() is None:
            proc.kill()
        output.append(proc.stdout.read() if proc.stdout else "")


def test_sigterm_drains_the_request_in_flight_then_exits(bundle: Path) -> None:
    """`edgeclf serve` in its own process: a request waiting in the batcher when SIGTERM arrives is
    still answered (uvicorn drains), then the process exits cleanly."""
    import signal
    import threading
    import time

    import httpx

    with _serve_process(bundle, "--max-wait-ms", "1500") as (proc, port, output):
        result: dict[str, object] = {}

        def call() -> None:
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/classify",
                content=_png(np.asarray(blob_image(9, 40))),
                headers={"content-type": "image/png"},
                timeout=30,
            )
            result["status"] = r.status_code

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.5)  # the request now waits for its batch to fill (1.5 s)
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=30)
        assert result.get("status") == 200
        # uvicorn shuts down, then re-raises the signal it caught (exit by SIGTERM, as the default would)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Traceback" not in output[0] and "Application shutdown complete" in output[0]


def test_responses_carry_the_bundles_decision(tmp_path: Path) -> None:
    """A reject policy answers "unknown" (label null) where the C runtime's decision does, and the
    response says which rule decided."""
    from edgeclf.evaluate.decision import DecisionPolicy, RejectRule

    imgs = [np.asarray(blob_image(i, 48)) for i in range(6)]
    plain = make_synthetic_bundle(tmp_path / "plain", crop=32, labels=("a", "b", "c"))
    with runtime.Classifier(plain) as clf:
        top = clf.probabilities(imgs).max(axis=1)
    threshold = float(np.median(top))  # half the images fall below it
    policy = DecisionPolicy(
        objectives=["reject"],
        reject=RejectRule(score="max_probability", threshold=threshold),
    )
    b = make_synthetic_bundle(tmp_path / "b", crop=32, labels=("a", "b", "c"), decision=policy)
    with runtime.Classifier(b) as clf:
        want = clf.classify_decision(imgs)
        probs = clf.probabilities(imgs)
    assert any(d.label is None for d in want) and any(d.label is not None for d in want)
    with _client(create_app(b)) as c:
        for im, w, p in zip(imgs, want, probs, strict=True):
            r = c.post("/v1/classify", content=_png(im), headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            res = r.json()["results"][0]
            assert res["label"] == w.label and res["decision"]["label"] == w.label
            assert res["decision"]["unknown"] == (w.label is None) and res["decision"]["rule"] == w.rule
            assert abs(res["decision"]["probability"] - w.probability) < 1e-5
            assert abs(res["top_k"][0]["probability"] - float(p.max())) < 1e-5


def test_workers_serve_from_several_processes(bundle: Path) -> None:
    """`edgeclf serve --workers 2`: two processes, each with its own model, answer the same port; SIGTERM
    stops them all."""
    import signal

    import httpx

    with runtime.Classifier(bundle) as clf:
        want = clf.probabilities([np.asarray(blob_image(3, 40))])[0]
    with _serve_process(bundle, "--workers", "2") as (proc, port, output):
        for _ in range(6):
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/classify",
                content=_png(np.asarray(blob_image(3, 40))),
                headers={"content-type": "image/png"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            assert abs(r.json()["results"][0]["top_k"][0]["probability"] - float(want.max())) < 1e-5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Traceback" not in output[0] and output[0].count("Started server process") == 2


def test_inference_lanes_rule_and_flags() -> None:
    from edgeclf.serve.app import inference_lanes

    assert inference_lanes(ServeOptions(), cores=1) == (1, 1)
    assert inference_lanes(ServeOptions(), cores=2) == (2, 1)
    assert inference_lanes(ServeOptions(), cores=8) == (2, 4)
    assert inference_lanes(ServeOptions(threads=2), cores=2) == (1, 2)  # --threads alone: the cores it leaves
    assert inference_lanes(ServeOptions(threads=1), cores=8) == (2, 1)
    assert inference_lanes(ServeOptions(lanes=3), cores=8) == (3, 2)
    assert inference_lanes(ServeOptions(lanes=4, threads=3), cores=2) == (4, 3)  # both given: as given
    with pytest.raises(Exception, match="lanes"):
        ServeOptions(lanes=-1)


@pytest.mark.parametrize("lanes", [1, 2])
def test_lanes_classify_batches_at_the_same_time_and_answer_each_image(lanes: int) -> None:
    import threading
    import time
    from types import SimpleNamespace

    from edgeclf.serve.app import MicroBatcher

    busy = {"now": 0, "most": 0}
    lock = threading.Lock()

    def infer(images: list[np.ndarray]) -> tuple[list[np.ndarray], list[str]]:
        with lock:
            busy["now"] += 1
            busy["most"] = max(busy["most"], busy["now"])
        time.sleep(0.15)
        with lock:
            busy["now"] -= 1
        return [im * 2 for im in images], [f"d{int(im[0])}" for im in images]

    model = SimpleNamespace(clf=SimpleNamespace(infer=infer))
    sizes: list[int] = []

    async def run() -> list[tuple[object, list]]:
        b = MicroBatcher(ServeOptions(max_batch=4, max_wait_ms=5, max_queue=64), lambda: model, sizes.append, lanes)
        b.start()
        try:
            return list(await asyncio.gather(*(b.submit([np.array([float(i)])]) for i in range(16))))
        finally:
            await b.stop()

    out = asyncio.run(run())
    assert [float(res[0][0][0]) for _, res in out] == [2.0 * i for i in range(16)]  # each its own answer
    assert [res[0][1] for _, res in out] == [f"d{i}" for i in range(16)]
    assert sum(sizes) == 16 and max(sizes) <= 4
    assert busy["most"] == lanes  # two lanes: two batches in the engine at once; one lane: never


def test_warm_classifies_once_on_every_lane_and_raises_for_a_model_that_cannot() -> None:
    import threading
    from types import SimpleNamespace

    from edgeclf.serve.app import MicroBatcher

    seen: list[str] = []

    def infer(images: list[np.ndarray]) -> tuple[list[np.ndarray], list[str]]:
        seen.append(threading.current_thread().name)
        return [images[0]], ["d"]

    b = MicroBatcher(ServeOptions(), lambda: None, lambda n: None, 2)
    img = np.zeros((8, 8, 3), np.uint8)
    b.warm(SimpleNamespace(clf=SimpleNamespace(infer=infer)), img)
    assert len(seen) == 2 and len(set(seen)) == 2  # one call on each lane's own thread

    def broken(images: list[np.ndarray]) -> None:
        raise RuntimeError("cannot classify")

    with pytest.raises(RuntimeError, match="cannot classify"):
        b.warm(SimpleNamespace(clf=SimpleNamespace(infer=broken)), img)
    asyncio.run(b.stop())
