"""Load on ``edgeclf serve`` (loopback only): throughput, p50/p99 and errors, batching on and off,
against the usual hand-written server (FastAPI + eager timm on the same backbone) in the same run.

    pytest benchmarks/test_bench_serve.py --benchmark-only --bundle BUNDLE_DIR -s

16 concurrent clients send a real 640x480 JPEG (``--serve-requests`` in all, default 2,000; the
run also stops after ``--serve-seconds``); each configuration's figures go to ``extra_info``
and are printed. Every server runs in its own process (``edgeclf serve``; the baseline via
``python -m benchmarks.test_bench_serve BUNDLE PORT``), so the load generator's event loop does not
share a GIL with it. The eager baseline decodes with PIL, resizes and normalises with torchvision
and runs the timm model in fp32 (random weights: the speed is what is compared).
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from fastapi import FastAPI, Request  # noqa: E402

from benchmarks.conftest import versions  # noqa: E402

CLIENTS = 16


def _jpeg() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    base = np.stack([(xx // 3) % 256, (yy // 2) % 256, ((xx + yy) // 5) % 256], axis=2)
    img = (base + rng.integers(0, 30, (480, 640, 3))).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """A server in its own process (as it runs in production: the load generator's event loop and GIL
    stay out of its way), started from ``cmd`` with ``{port}`` filled in; ready when ``/readyz`` answers."""

    def __init__(self, cmd: list[str]) -> None:
        import subprocess
        import sys
        import tempfile

        self.port = _free_port()
        argv = [sys.executable, *(a.replace("{port}", str(self.port)) for a in cmd)]
        # its log goes to a file, not a pipe nobody drains (a full pipe would stall the server)
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            argv, cwd=Path(__file__).resolve().parents[1], stdout=self.log, stderr=subprocess.STDOUT, text=True
        )

    def __enter__(self) -> str:
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise AssertionError(f"the server exited: {self.log.read()[-2000:]}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("the server did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.proc.kill()
        self.log.close()


async def _load(url: str, body: bytes, n: int, seconds: float, during: Any = None, clients: int = CLIENTS) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    sent = 0
    versions_seen: dict[str, int] = {}
    t_end = time.perf_counter() + seconds

    async def client(c: Any) -> None:
        nonlocal errors, sent
        while sent < n and time.perf_counter() < t_end:
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await c.post("/v1/classify?top_k=1", content=body, headers={"content-type": "image/jpeg"})
                ok = r.status_code == 200
                if ok and during is not None:
                    v = r.json().get("model", {}).get("version", "?")
                    versions_seen[v] = versions_seen.get(v, 0) + 1
            except httpx.HTTPError:
                ok = False
            lat.append(time.perf_counter() - t0)
            errors += 0 if ok else 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(client(c)) for _ in range(clients)]
        if during is not None:
            await asyncio.sleep(0.5)
            await asyncio.get_running_loop().run_in_executor(None, during)
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    ms = np.array(lat) * 1e3
    return {
        "requests": len(lat),
        "errors": errors,
        "images_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "seconds": wall,
        **({"answered_by_version": versions_seen} if during is not None else {}),
    }


def _eager_app(bundle: Path) -> Any:
    """The usual hand-written endpoint: FastAPI + PIL + torchvision transforms + eager timm, one image per call."""
    import timm
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from edgeclf.export.bundle import read_bundle

    m = read_bundle(bundle, verify=False)
    spec = m.spec()
    arch = (m.source_run or {}).get("timm_arch") or (m.source_run or {}).get("backbone") or "tf_efficientnet_lite0"
    model = timm.create_model(arch, pretrained=False, num_classes=len(m.labels)).eval()
    tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(spec.resize_size, antialias=True),
            v2.CenterCrop(spec.crop_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(spec.mean), list(spec.std)),
        ]
    )
    app = FastAPI()
    lock = threading.Lock()

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/classify")
    async def classify(request: Request) -> dict[str, Any]:
        img = Image.open(io.BytesIO(await request.body())).convert("RGB")
        with lock, torch.no_grad():
            p = model(tf(img)[None]).softmax(1)[0]
        i = int(p.argmax())
        return {"label": m.labels[i], "probability": float(p[i])}

    return app


def _registry_with_two_versions(bundle: Path, root: Path) -> Any:
    """A registry holding ``bundle`` as 1.0.0 (promoted) and a copy of it (new manifest date) as 1.0.1."""
    import shutil

    from edgeclf.export.bundle import read_bundle, write_manifest
    from edgeclf.registry import Registry, RegistryError

    reg = Registry(root)
    reg.add(bundle, "1.0.0")
    try:
        reg.promote("1.0.0")
    except RegistryError as e:
        pytest.skip(f"the hot swap needs a bundle the registry promotes: {str(e)[:200]}")
    copy = root.parent / "bundle-1.0.1"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("autotune.json"))
    write_manifest(copy, read_bundle(copy, verify=False).model_copy(update={"created": "2030-01-01T00:00:00+00:00"}))
    reg.add(copy, "1.0.1")
    return reg


@pytest.mark.parametrize(
    "config",
    [
        "edgeclf-batched",
        "edgeclf-unbatched",
        "fastapi-eager-timm",
        "edgeclf-hot-swap",
        "edgeclf-one-client",
        "fastapi-eager-timm-one-client",
    ],
)
def test_serve_load(benchmark: Any, bundle_dir: Path, request: pytest.FixtureRequest, config: str, tmp_path: Path) -> None:
    """Each configuration under the same load; ``edgeclf-hot-swap`` serves a registry and promotes a
    new version half a second into the run (every request must still answer 200). The ``-one-client``
    runs send one request at a time (a quarter of the count): the latency of a lone request."""
    n = int(request.config.getoption("--serve-requests"))
    clients = CLIENTS
    if config.endswith("-one-client"):
        clients, n = 1, max(50, n // 4)
    seconds = float(request.config.getoption("--serve-seconds"))
    during = None
    max_batch = "1" if config == "edgeclf-unbatched" else "8"
    serve = [
        "-m",
        "edgeclf.cli",
        "serve",
        "--port",
        "{port}",
        "--max-batch",
        max_batch,
        "--max-wait-ms",
        "2",
        "--max-queue",
        "256",
    ]
    if config.startswith("fastapi-eager-timm"):
        cmd = ["-m", "benchmarks.test_bench_serve", str(bundle_dir), "{port}"]
    elif config == "edgeclf-hot-swap":
        reg = _registry_with_two_versions(bundle_dir, tmp_path / "registry")
        cmd = [*serve, "--registry", str(reg.root)]

        def during() -> None:
            reg.promote("1.0.1")
    else:
        cmd = [*serve, str(bundle_dir)]
    body = _jpeg()
    with _Server(cmd) as url:
        asyncio.run(_load(url, body, min(64, n), 30))  # warm-up
        res = asyncio.run(_load(url, body, n, seconds, during, clients))
        if config == "edgeclf-hot-swap":
            with httpx.Client(base_url=url) as c:
                assert c.get("/v1/model").json()["version"] == "1.0.1", "the promoted version is not served"
            assert res["answered_by_version"].get("1.0.1"), "no request was answered by the promoted version"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(kind="serve-load", config=config, clients=clients, frame="640x480 JPEG", **res, **versions())
    print(f"\n{config}: {res}")
    assert res["errors"] == 0


if __name__ == "__main__":  # the eager baseline in its own process: python -m benchmarks.test_bench_serve BUNDLE PORT
    import sys

    uvicorn.run(_eager_app(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
