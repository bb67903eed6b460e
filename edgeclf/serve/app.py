"""``edgeclf serve``: an HTTP API over the C runtime, with dynamic micro-batching.

:func:`create_app` returns a FastAPI (ASGI) app, importable for embedding; ``edgeclf serve``
runs it under uvicorn. Inference goes through :class:`edgeclf.runtime.Classifier` (never torch):
the same preprocessing, backend and calibrated probabilities a device program gets.

Routes: ``POST /v1/classify`` (one or more images as multipart files, or raw bytes with an image
content type; ``?top_k=``), ``GET /v1/model``, ``GET /healthz`` (alive), ``GET /readyz`` (a model
is loaded), ``GET /metrics`` (Prometheus text format), ``GET /docs`` (OpenAPI).

Requests that arrive within ``max_wait_ms`` of each other are classified in one batch call of
up to ``max_batch`` images; past ``max_queue`` waiting images the server answers 429 with
``Retry-After``. Bad input is never a 500: every refusal is JSON ``{"error": {"code", "message"}}``
with a stable ``code`` (:data:`ERROR_CODES`). With ``registry`` the app serves the registry's
``current`` version and follows promotions and rollbacks without a restart: the new version is
verified by content hash and loaded before it takes traffic (requests in flight finish on the
old one); a version that fails to verify or load is refused and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from edgeclf._provenance import usable_cpus
from edgeclf.errors import ConfigError

log = logging.getLogger("edgeclf.serve")

#: code -> HTTP status of every refusal the API makes
ERROR_CODES: dict[str, int] = {
    "empty_body": 400,
    "not_an_image": 400,
    "truncated_image": 400,
    "no_images": 400,
    "unauthorized": 401,
    "body_too_large": 413,
    "image_too_large": 413,
    "too_many_images": 413,
    "unsupported_media_type": 415,
    "invalid_top_k": 422,
    "invalid_request": 422,
    "overloaded": 429,
    "internal": 500,
    "not_ready": 503,
}
#: image content types accepted as a raw body (multipart parts may carry any image/* type)
IMAGE_TYPES = ("image/jpeg", "image/png", "image/bmp", "image/tiff", "image/webp", "image/gif", "image/x-portable-anymap")
#: seconds a 429 asks the client to wait
RETRY_AFTER_S = 1
#: how often registry mode looks at the ``current`` pointer
REGISTRY_POLL_S = 1.0
#: side of the grey image a new model classifies on every lane before it takes traffic
WARM_SIZE = 64


@dataclass(frozen=True)
class ServeOptions:
    """The server's limits (``edgeclf serve`` flags)."""

    max_batch: int = 8
    max_wait_ms: float = 2.0
    max_queue: int = 64
    max_body_mb: float = 16.0
    #: images one request may carry
    max_images: int = 64
    #: environment variable holding the API key (None: no key asked for)
    api_key_env: str | None = None
    threads: int = 0
    #: batches classified at the same time, each on its own inference thread and backend session
    #: (0: :func:`inference_lanes`' rule)
    lanes: int = 0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_images < 1:
            raise ConfigError("--max-batch, --max-queue and --max-images must be >= 1")
        if self.lanes < 0:
            raise ConfigError("--lanes must be >= 0 (0: automatic)")
        if self.max_wait_ms < 0 or self.max_body_mb <= 0:
            raise ConfigError("--max-wait-ms must be >= 0 and --max-body-mb > 0")


class ApiError(Exception):
    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers or {}
        self.status = ERROR_CODES[code]


# ---- the model being served -----------------------------------------------------------------


@dataclass
class ServedModel:
    """A loaded bundle and what the API says about it."""

    bundle_dir: Path
    version: str
    content_hash: str
    clf: Any  # edgeclf.runtime.Classifier
    info: dict[str, Any]

    @classmethod
    def load(cls, bundle_dir: Path, version: str | None, expected_hash: str | None, threads: int) -> ServedModel:
        from edgeclf.export.bundle import read_bundle
        from edgeclf.registry import content_hash
        from edgeclf.runtime import Classifier

        manifest = read_bundle(bundle_dir, verify=True)  # every artifact against its SHA-256
        digest = content_hash(bundle_dir, manifest)
        if expected_hash is not None and digest != expected_hash:
            raise ConfigError(f"{bundle_dir}: content hash {digest} is not the registry's {expected_hash}; not served")
        clf = Classifier(bundle_dir, threads=threads)
        info = {
            "name": manifest.name,
            "version": version or manifest.name,
            "content_hash": digest,
            "labels": list(manifest.labels),
            "preprocess": manifest.preprocess,
            "temperature": manifest.temperature,
            "metrics": manifest.metrics,
            "created": manifest.created,
            "artifact": {"file": clf.artifact, "backend": clf.backend, "precision": clf.precision, "device": clf.device},
            "autotune": clf.autotune,
            "decision_policy": clf.decision_policy,
        }
        return cls(Path(bundle_dir), version or manifest.name, digest, clf, info)


# ---- micro-batching -------------------------------------------------------------------------


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future[Any]
    model: ServedModel | None = None


def inference_lanes(opts: ServeOptions, cores: int | None = None) -> tuple[int, int]:
    """(lanes, intra-op threads per lane) for ``opts`` on ``cores`` cores.

    A lane is an inference thread with its own backend session, classifying one batch while the
    other lanes classify theirs. The rule, unless the flags say otherwise: two lanes, the cores
    split between them. One lane with every core is the lowest latency for a lone request, but a
    loaded server is short of CPU, not of parallelism: a session's intra-op threads wait on each
    other at every layer (ONNX Runtime on lite0, 2 cores: 12.5 core-ms per image with 2 threads
    against 10.7 with 1), and a second lane runs its batch while the first one's results go back
    through Python. ``--threads T`` alone gives ``min(2, cores // T)`` lanes; ``--lanes L`` alone gives
    each lane ``cores // L`` threads.
    """
    n = cores or usable_cpus()
    if opts.lanes and opts.threads:
        return opts.lanes, opts.threads
    if opts.lanes:
        return opts.lanes, max(1, n // opts.lanes)
    if opts.threads:
        return max(1, min(2, n // opts.threads)), opts.threads
    lanes = min(2, n)
    return lanes, max(1, n // lanes)


@dataclass
class MicroBatcher:
    """Collects single images into batch calls of at most ``max_batch`` images, waiting at most
    ``max_wait_ms`` for a batch to fill, and runs up to ``lanes`` batches at a time, each on its own
    inference thread (the C runtime's session for that thread)."""

    opts: ServeOptions
    current: Any  # () -> ServedModel | None
    on_batch: Any  # (size) -> None
    lanes: int = 1
    queue: asyncio.Queue[_Item] | None = None
    _task: asyncio.Task[None] | None = None
    _running: set[asyncio.Task[None]] = field(default_factory=set)
    #: one single-thread executor per lane (so each lane's thread keeps its own backend session)
    _executors: list[ThreadPoolExecutor] = field(default_factory=list)
    #: the lanes with no batch in flight
    _idle: asyncio.Queue[ThreadPoolExecutor] | None = None

    def __post_init__(self) -> None:
        self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"edgeclf-infer-{i}") for i in range(self.lanes)]

    def warm(self, model: ServedModel, image: np.ndarray) -> None:
        """Classify ``image`` once on every lane's thread (from any thread; it waits for batches in
        flight): each lane's backend session for ``model`` exists before real traffic reaches it, and a
        model that cannot classify raises here, before it is installed."""
        for f in [ex.submit(model.clf.infer, [image]) for ex in self._executors]:
            f.result()

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._idle = asyncio.Queue()
        for ex in self._executors:
            self._idle.put_nowait(ex)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._running:  # batches already handed to a lane finish (their requests are waiting)
            await asyncio.gather(*self._running, return_exceptions=True)
        for ex in self._executors:
            ex.shutdown(wait=True)

    def depth(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    async def submit(self, images: list[np.ndarray]) -> tuple[ServedModel, list[tuple[np.ndarray, Any]]]:
        """(probabilities, decision) per image, all from the same model version."""
        assert self.queue is not None
        if self.queue.qsize() + len(images) > self.opts.max_queue:
            raise ApiError(
                "overloaded",
                f"the server is at its queue limit ({self.opts.max_queue} images waiting); retry shortly",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        model = self.current()
        if model is None:
            raise ApiError("not_ready", "no model is loaded yet")
        loop = asyncio.get_running_loop()
        items = [_Item(im, loop.create_future(), model) for im in images]
        for it in items:
            self.queue.put_nowait(it)
        return model, list(await asyncio.gather(*(it.future for it in items)))

    def _dispatch(self, batch: list[_Item], lane: ThreadPoolExecutor) -> None:
        """Classifies ``batch`` on ``lane`` (an idle one the caller took) and puts the lane back when done."""
        task = asyncio.get_running_loop().create_task(self._classify(batch, lane))
        self._running.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._running.discard(t)
            self._idle.put_nowait(lane)  # type: ignore[union-attr]

        task.add_done_callback(done)

    async def _run(self) -> None:
        assert self.queue is not None and self._idle is not None
        loop = asyncio.get_running_loop()
        while True:
            # an idle lane first: while every lane is busy the images wait in the queue, so the next
            # batch is as full as the queue allows when a lane frees
            lane = await self._idle.get()
            try:
                first = await self.queue.get()
            except asyncio.CancelledError:
                self._idle.put_nowait(lane)
                raise
            batch = [first]
            deadline = loop.time() + self.opts.max_wait_ms / 1000.0
            while len(batch) < self.opts.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self.queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if nxt.model is not first.model:  # a model switch: that image starts the next batch
                    self._dispatch(batch, lane)
                    lane = await self._idle.get()
                    batch = [nxt]
                    first = nxt
                    deadline = loop.time() + self.opts.max_wait_ms / 1000.0
                    continue
                batch.append(nxt)
            self._dispatch(batch, lane)

    async def _classify(self, batch: list[_Item], lane: ThreadPoolExecutor) -> None:
        model = batch[0].model
        assert model is not None
        self.on_batch(len(batch))
        try:
            probs = await asyncio.get_running_loop().run_in_executor(lane, model.clf.infer, [it.image for it in batch])
        except Exception as e:  # noqa: BLE001 - handed to each waiting request
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(e)
            return
        for it, p, d in zip(batch, *probs, strict=True):
            if not it.future.done():
                it.future.set_result((p, d))


class _AsgiMiddleware:
    """A plain ASGI middleware calling ``handler(scope, receive, send, inner_app)``."""

    def __init__(self, app: Any, handler: Any) -> None:
        self.app, self.handler = app, handler

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.handler(scope, receive, send, self.app)


# ---- decoding -------------------------------------------------------------------------------


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Encoded bytes -> H x W x 3 uint8 RGB by the audit's rules (same pixel limit), or an ApiError."""
    from edgeclf.data._image import ImageDecodeError, load_rgb

    if not data:
        raise ApiError("empty_body", f"{name}: no bytes")
    try:
        return np.asarray(load_rgb(data))
    except ImageDecodeError as e:
        text = str(e)
        if text.startswith("refused"):
            raise ApiError("image_too_large", f"{name}: {text}") from None
        if "truncated" in text:
            raise ApiError("truncated_image", f"{name}: {text}") from None
        raise ApiError("not_an_image", f"{name}: {text}") from None


def _warm_decoding() -> None:
    import io

    from PIL import Image

    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.new("RGB", (WARM_SIZE, WARM_SIZE), (128, 128, 128)).save(buf, format=fmt)
        decode_image(buf.getvalue(), f"warm-up {fmt}")


# ---- the app --------------------------------------------------------------------------------


def create_app(
    bundle: str | Path | None = None, *, registry: str | Path | None = None, options: ServeOptions | None = None
) -> Any:
    """The ASGI app serving ``bundle``, or the ``current`` version of the registry at ``registry``."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    if (bundle is None) == (registry is None):
        raise ConfigError("serve a bundle directory or a registry (--registry ROOT), not both and not neither")
    opts = options or ServeOptions()
    api_key: str | None = None
    if opts.api_key_env:
        api_key = os.environ.get(opts.api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env {opts.api_key_env}: the environment variable is not set (or empty)")

    prom = CollectorRegistry()
    requests_total = Counter("edgeclf_requests", "HTTP requests", ["route", "status"], registry=prom)
    latency = Histogram(
        "edgeclf_request_seconds",
        "Request latency",
        ["route"],
        buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
        registry=prom,
    )
    batch_sizes = Histogram("edgeclf_batch_size", "Images per inference call", buckets=(1, 2, 4, 8, 16, 32, 64), registry=prom)
    queue_depth = Gauge("edgeclf_queue_depth", "Images waiting for inference", registry=prom)
    model_info = Gauge("edgeclf_model_info", "The model being served (1)", ["version", "content_hash"], registry=prom)
    refused_versions = Counter(
        "edgeclf_model_refused", "Registry versions refused (failed to verify or load)", ["version"], registry=prom
    )

    state: dict[str, Any] = {"model": None}

    def current() -> ServedModel | None:
        return state["model"]

    def install(m: ServedModel) -> None:
        old = state["model"]
        state["model"] = m  # one reference swap: new requests go to it; requests in flight keep theirs
        if old is not None:
            model_info.remove(old.version, old.content_hash)
        model_info.labels(m.version, m.content_hash).set(1)
        log.info("serving %s (%s) from %s", m.version, m.content_hash, m.bundle_dir)

    lanes, threads = inference_lanes(opts)
    batcher = MicroBatcher(opts, current, lambda n: batch_sizes.observe(n), lanes)
    # decoding off the event loop (PIL releases the GIL): the next request's JPEG decodes while
    # the inference thread runs the current batch, and the loop keeps parsing HTTP meanwhile
    pools: dict[str, ThreadPoolExecutor] = {}

    def load(bundle_dir: Path, version: str | None, expected_hash: str | None) -> ServedModel:
        """Load, verify and warm a model: it classifies a grey image once on every lane before it is
        installed, so no request pays for a lane's session and a model that cannot classify is refused."""
        m = ServedModel.load(bundle_dir, version, expected_hash, threads)
        batcher.warm(m, np.full((WARM_SIZE, WARM_SIZE, 3), 128, np.uint8))
        return m

    def load_registry_current(reg: Any) -> None:
        p = reg.current()
        if p is None:
            return
        m = state["model"]
        if m is not None and m.version == p.version and m.content_hash == p.content_hash:
            return
        try:
            install(load(reg.root / p.path, p.version, p.content_hash))
        except Exception as e:  # noqa: BLE001 - a bad version is refused; the old one keeps serving
            if state.get("refused") != (p.version, p.content_hash):
                refused_versions.labels(p.version).inc()
                log.error("refusing registry version %s: %s; still serving %s", p.version, e, m.version if m else "nothing")
            state["refused"] = (p.version, p.content_hash)

    async def watch_registry(reg: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(REGISTRY_POLL_S)
            try:
                await loop.run_in_executor(None, load_registry_current, reg)
            except Exception as e:  # noqa: BLE001 - a damaged pointer: keep serving, say so
                log.error("registry %s: %s", reg.root, e)

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        watcher = None
        if bundle is not None:
            install(load(Path(bundle), None, None))
        else:
            from edgeclf.registry import Registry

            reg = Registry(Path(registry))  # type: ignore[arg-type]
            load_registry_current(reg)
            watcher = asyncio.get_running_loop().create_task(watch_registry(reg))
        batcher.start()
        pools["decode"] = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="edgeclf-decode")
        # the decoders' imports and first PNG/JPEG decode happen here, not in the first request (~0.2 s)
        await asyncio.get_running_loop().run_in_executor(pools["decode"], _warm_decoding)
        try:
            yield
        finally:  # graceful shutdown: uvicorn stops accepting, in-flight requests finish first
            if watcher is not None:
                watcher.cancel()
            await batcher.stop()
            pools.pop("decode").shutdown(wait=True)
            m = state["model"]
            if m is not None:
                m.clf.close()

    app = FastAPI(
        title="edgeclf",
        summary="Image classification over the edgeclf C runtime",
        lifespan=lifespan,
    )

    def error(code: str, message: str, headers: dict[str, str] | None = None) -> Any:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=ERROR_CODES[code], headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, e: ApiError) -> Any:
        return error(e.code, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, e: RequestValidationError) -> Any:
        first = (e.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error("invalid_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, e: Exception) -> Any:  # never a stack trace to the client
        log.exception("internal error")
        return error("internal", f"internal error ({type(e).__name__}); see the server log")

    async def observe(scope: Any, receive: Any, send: Any, inner: Any) -> None:
        """Counts and times every request and asks ``/v1/`` routes for the API key: plain ASGI, not
        Starlette's ``BaseHTTPMiddleware`` (whose extra task and stream per request cost about a
        millisecond of the event loop's time under load)."""
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        t0 = time.perf_counter()
        if api_key is not None and route.startswith("/v1/"):
            headers = dict(scope.get("headers") or ())
            given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
            if not hmac.compare_digest(given, api_key.encode("utf-8")):
                resp = error("unauthorized", "a valid API key is required (X-API-Key or Authorization: Bearer)")
                await resp(scope, receive, send)
                requests_total.labels(route, str(resp.status_code)).inc()
                return
        status = {"code": 500, "started": False}

        async def send_observed(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        try:
            await inner(scope, receive, send_observed)
        except Exception as e:  # noqa: BLE001 - never a stack trace to the client
            log.exception("internal error")
            if status["started"]:
                raise
            resp = error("internal", f"internal error ({type(e).__name__}); see the server log")
            await resp(scope, receive, send_observed)
        requests_total.labels(route, str(status["code"])).inc()
        latency.labels(route).observe(time.perf_counter() - t0)

    app.add_middleware(_AsgiMiddleware, handler=observe)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        """Ready: a model is loaded."""
        m = current()
        if m is None:
            return error("not_ready", "no model is loaded yet")
        return {"status": "ready", "version": m.version, "content_hash": m.content_hash}

    @app.get("/metrics")
    async def metrics() -> Any:
        queue_depth.set(batcher.depth())
        return PlainTextResponse(generate_latest(prom).decode("utf-8"), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model")
    async def model() -> Any:
        """Labels, preprocessing, metrics, version and content hash of the model being served."""
        m = current()
        if m is None:
            raise ApiError("not_ready", "no model is loaded yet")
        return {**m.info, "serving": {"lanes": lanes, "threads_per_lane": threads, "max_batch": opts.max_batch}}

    async def read_images(request: Request) -> list[tuple[str, bytes]]:
        limit = int(opts.max_body_mb * 1024 * 1024)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError("body_too_large", f"the body is {int(declared):,} bytes; the limit is {limit:,} (--max-body-mb)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError("body_too_large", f"the body exceeds {limit:,} bytes (--max-body-mb)")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype.startswith("multipart/form-data"):
            from starlette.datastructures import UploadFile
            from starlette.formparsers import MultiPartException, MultiPartParser

            async def once() -> Any:
                yield bytes(body)

            try:
                form = await MultiPartParser(
                    request.headers, once(), max_files=opts.max_images, max_fields=16, max_part_size=limit
                ).parse()
            except MultiPartException as e:
                raise ApiError("not_an_image", f"the multipart body cannot be read: {e}") from None
            parts = []
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    parts.append((value.filename or key, await value.read()))
            if not parts:
                raise ApiError("no_images", "the multipart body holds no file part")
            return parts
        if ctype in IMAGE_TYPES or ctype == "application/octet-stream":
            if not body:
                raise ApiError("empty_body", "the request body is empty; send an image")
            return [("body", bytes(body))]
        raise ApiError(
            "unsupported_media_type",
            f"content type {ctype or '(none)'} is not accepted; send multipart/form-data files or an image type "
            f"({', '.join(IMAGE_TYPES)})",
        )

    @app.post("/v1/classify")
    async def classify(request: Request, top_k: str = "5") -> Any:
        """Calibrated top-k labels per image: multipart files, or one image as the raw body."""
        t0 = time.perf_counter()
        try:
            k = int(top_k)
        except ValueError:
            raise ApiError("invalid_top_k", f"top_k must be an integer >= 1, got {top_k!r}") from None
        if k < 1:
            raise ApiError("invalid_top_k", f"top_k must be an integer >= 1, got {k}")
        parts = await read_images(request)
        if len(parts) > opts.max_images:
            raise ApiError("too_many_images", f"{len(parts)} images in one request; the limit is {opts.max_images}")
        loop = asyncio.get_running_loop()
        images = list(
            await asyncio.gather(*(loop.run_in_executor(pools["decode"], decode_image, data, name) for name, data in parts))
        )
        t1 = time.perf_counter()
        m, probs = await batcher.submit(images)
        t2 = time.perf_counter()
        labels = m.info["labels"]
        results = []
        for (name, _), (p, d) in zip(parts, probs, strict=True):
            order = np.argsort(-p, kind="stable")[: min(k, len(labels))]
            results.append(
                {
                    "name": name,
                    "top_k": [{"label": labels[i], "probability": float(p[i])} for i in order],
                    # the bundle's decision policy (argmax, adjusted priors, costs, reject -> null)
                    "label": d.label,
                    "decision": {
                        "label": d.label,
                        "unknown": d.label is None,
                        "rule": d.rule,
                        "probability": d.probability,
                        "score": d.score,
                    },
                }
            )
        # a JSONResponse as is: FastAPI's jsonable_encoder walk of a plain dict costs more than the JSON
        return JSONResponse(
            {
                "model": {"version": m.version, "content_hash": m.content_hash},
                "results": results,
                "timing_ms": {
                    "decode": round((t1 - t0) * 1e3, 3),
                    "inference": round((t2 - t1) * 1e3, 3),
                    "total": round((time.perf_counter() - t0) * 1e3, 3),
                },
            }
        )

    ROUTES = {"/healthz", "/readyz", "/metrics", "/v1/model", "/v1/classify", "/docs", "/openapi.json"}
    return app


#: ``edgeclf serve --workers N``: each worker process builds its app from this environment variable
#: (uvicorn starts workers from an import string, so the settings travel as JSON).
WORKER_ENV = "EDGECLF_SERVE_APP"


def app_from_environment() -> Any:
    """The app of one ``--workers`` process: :func:`create_app` with the settings in :data:`WORKER_ENV`."""
    import json
    from dataclasses import fields

    try:
        doc = json.loads(os.environ[WORKER_ENV])
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{WORKER_ENV} is missing or not JSON ({e}); start workers with `edgeclf serve --workers N`") from None
    names = {f.name for f in fields(ServeOptions)}
    opts = ServeOptions(**{k: v for k, v in (doc.get("options") or {}).items() if k in names})
    return create_app(doc.get("bundle"), registry=doc.get("registry"), options=opts)
