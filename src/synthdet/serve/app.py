"""The FastAPI application: thin routes over :mod:`synthdet.detectors.assess`, with the safety a public endpoint needs.

Every request that scores is admitted against ``queue_size`` first (``503`` + ``Retry-After`` when full), its body
read into memory up to ``max_body_bytes`` (``413`` beyond; multipart parts are never spooled to disk), decoded by
content sniffing (:func:`~synthdet.io.pixels.load_image`: never the file name) under the ``max_pixels`` bomb guard (a
batch's files together under ``max_request_pixels``, counted from their headers before any decoding), and answered
within ``timeout_s`` (``504``); the memory of a large decode goes back to the OS after it (:mod:`.budget`). Decoding
runs on a small thread pool; scoring on the one worker that owns the model (:class:`~synthdet.serve.batcher.
MicroBatcher`). No file is written, and no path a client sends is opened.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from swagger_ui_bundle import swagger_ui_path

from synthdet.detectors.assess import (
    CHECK_SETS,
    Assessment,
    Pending,
    assess_image,
    assessment_images,
    band_of,
    check_names,
    prepare,
)
from synthdet.detectors.scoring import detector_id
from synthdet.io.pixels import ImageLoadError, peek_size
from synthdet.serve.batcher import MicroBatcher
from synthdet.serve.budget import header_pixels, release_after

#: The Swagger UI files ``/docs`` needs, served from the ``swagger-ui-bundle`` package (no CDN).
_DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                "favicon-32x32.png": "image/png"}

def _warmup_image() -> bytes:
    """A 256-px photo-like JPEG: what the service scores once at start to build its caches and time a request."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:256, 0:256]
    base = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.float64) + rng.normal(0, 8, (256, 256, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


#: HTTP status for each reason :func:`~synthdet.io.pixels.load_image` gives.
STATUS_BY_REASON = {"empty-file": 400, "not-an-image": 415, "truncated": 422, "corrupt": 422, "too-large": 413}


#: Pixels one uploaded image may have (413 beyond). 50 Mpx holds every phone's full-resolution photo (48 Mpx modes:
#: 8064×6048) and full-frame cameras to 50 Mpx (45–46 Mpx bodies); the model sees at most a 768-px reduced copy, so
#: more pixels add only decoding: up to ~200 MB (palette or alpha plus the RGB copy) and ~0.5 CPU-s per image.
#: 61 Mpx and medium-format files need ``--max-pixels`` raised. (The library's own default stays 100 Mpx.)
SERVE_MAX_PIXELS = 50_000_000
#: Pixels all the files of one batch request may have together, counted from their headers before any decoding:
#: eight 12-Mpx photos, or two images at the per-image limit (a 16-file batch of 48 Mpx images was 19 CPU-s).
SERVE_MAX_REQUEST_PIXELS = 100_000_000


class Settings(BaseModel):
    """Limits and batching of one service."""

    max_body_bytes: int = Field(25 * 1024 * 1024, ge=1)  # request body limit (413 beyond)
    max_pixels: int = Field(SERVE_MAX_PIXELS, ge=1)  # per image, decompression-bomb guard (413 too-large beyond)
    max_request_pixels: int = Field(SERVE_MAX_REQUEST_PIXELS, ge=1)  # a batch's files together (413 too-many-pixels)
    max_files: int = Field(16, ge=1)  # files in one /v1/score/batch request
    timeout_s: float = Field(30.0, gt=0)  # per request, decode to answer (504 beyond)
    queue_size: int = Field(32, ge=1)  # requests admitted at once; more get 503 + Retry-After
    retry_after_s: int = Field(1, ge=0)
    workers: int = Field(2, ge=1)  # decoding threads
    max_batch: int = Field(8, ge=1)  # requests gathered into one forward pass (1: micro-batching off)
    max_wait_ms: float = Field(5.0, ge=0)  # how long the first request of a batch waits for company
    api_key: str | None = None  # required as X-API-Key (or Bearer) on /v1/* and /metrics when set
    body_timeout_s: float = Field(10.0, gt=0)  # the body must arrive within this (408 beyond); no queue slot meanwhile
    head_timeout_s: float = Field(10.0, gt=0)  # a connection's request head must arrive within this (closed beyond)
    max_connections_per_client: int = Field(32, ge=1)  # open connections from one address; more are closed at once


class ServiceError(Exception):
    """An answer other than 200: status, a machine-readable reason and a sentence."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers or {}


def check_setting(value: str) -> str:
    """The ``checks`` query parameter as a :data:`~synthdet.detectors.assess.CHECK_SETS` name (``true``/``false``
    stand for ``quick``/``off``); 422 for anything else, before the body is read."""
    key = {"true": "quick", "false": "off"}.get(value.lower(), value.lower())
    try:
        check_names(key)
    except ValueError:
        raise ServiceError(422, "bad-checks", f"checks={value[:40]!r}: use one of {', '.join(CHECK_SETS)}") from None
    return key


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser with file parts kept in memory (the body is already bounded)."""

    def __init__(self, headers: Headers, body: bytes, limit: int) -> None:
        async def stream() -> AsyncGenerator[bytes, None]:
            yield body

        super().__init__(headers, stream(), max_files=limit, max_fields=limit)
        self.spool_max_size = len(body) + 1


#: Shed load when the estimated wait reaches this share of the timeout: decoding and the answer take the rest.
SHED_AT = 0.8


class _Load:
    """Seconds of worker time an image costs through the network (a request's photos, its checks and heatmap tiles
    each count): a moving average of the forward passes, seeded by a warm-up pass at start, so overload is refused
    before work starts whatever mix of check settings is queued."""

    def __init__(self) -> None:
        self.seconds_per_image = 0.0

    def observe(self, seconds: float) -> None:
        prev = self.seconds_per_image
        self.seconds_per_image = seconds if prev == 0.0 else 0.8 * prev + 0.2 * seconds


class _Metrics:
    def __init__(self, depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("synthdet_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("synthdet_request_duration_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.errors = Counter("synthdet_errors", "Requests refused or failed, by reason", ["reason"], registry=r)
        self.depth = Gauge("synthdet_queue_depth", "Requests admitted and not yet answered", registry=r)
        self.depth.set_function(depth)
        self.batch = Histogram("synthdet_batch_requests", "Requests scored per forward pass",
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.forward = Histogram("synthdet_forward_seconds", "Seconds per forward pass (all images of a batch)",
                                 registry=r)

    def on_batch(self, n_requests: int, n_images: int, seconds: float) -> None:
        self.batch.observe(n_requests)
        self.forward.observe(seconds)


def _error(e: ServiceError) -> JSONResponse:
    return JSONResponse({"error": {"reason": e.reason, "detail": e.detail}}, status_code=e.status, headers=e.headers)


def _load_error(e: ImageLoadError, name: str) -> ServiceError:
    return ServiceError(STATUS_BY_REASON.get(e.reason, 422), e.reason, f"{name}: {e.reason}" +
                        (f" ({e.detail})" if e.detail else ""))


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}
_BATCH_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}


def localize_bytes(localizer: Any, data: bytes, *, max_pixels: int, fmt: str) -> tuple[bytes, dict[str, str]]:
    """A Task B answer for one upload: the per-pixel probability map at the image's own size, as an 8-bit PNG
    (probability × 255) or a float16 ``.npz`` (key ``mask``), and the image-level decision in headers (score,
    thresholds, ``X-Verdict`` in words, the share of pixels flagged and of the largest flagged region)."""
    import io

    import numpy as np
    from PIL import Image

    from synthdet.io.pixels import load_image

    img = load_image(data, max_pixels=max_pixels)
    prob = localizer.predict_image(img)  # torch or onnxruntime: each runs without gradients
    summary = localizer.summary(prob)
    buf = io.BytesIO()
    if fmt == "npz":
        np.savez_compressed(buf, mask=prob.astype(np.float16))
    else:
        Image.fromarray(np.clip(prob * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue(), {"X-Image-Score": f"{summary['score']:.6f}", "X-Threshold": f"{summary['threshold']:.6f}",
                            "X-Loc-Threshold": f"{summary['loc_threshold']:.6f}",
                            "X-Manipulated": "true" if summary["manipulated"] else "false",
                            "X-Verdict": summary["verdict"], "X-Coverage": f"{summary['coverage']:.6f}",
                            "X-Largest-Region": f"{summary['largest_region']:.6f}"}


def create_app(detector: Any, *, settings: Settings | None = None, localizer: Any = None) -> FastAPI:
    """The service for one loaded detector (a :class:`~synthdet.detectors.detector.Detector` or an ensemble) and, optionally,
    a Task B localizer (:func:`synthdet.localization.models.load_localizer`) for ``/v1/localize``."""
    s = settings or Settings()
    det = detector
    det_id = detector_id(det)
    admitted = 0
    metrics = _Metrics(lambda: admitted)
    load = _Load()

    def on_batch(n_requests: int, n_images: int, seconds: float) -> None:
        metrics.on_batch(n_requests, n_images, seconds)
        load.observe(seconds / max(1, n_images))

    batcher = MicroBatcher(det, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms, on_batch=on_batch,
                           in_flight=lambda: admitted)
    pool = ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="synthdet-decode")
    page = (resources.files("synthdet.serve") / "static" / "index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        image = _warmup_image()  # one request's work (with checks) builds the network before the first request,
        warm = time.perf_counter()  # and times it: the load estimate's first value
        assess_image(det, image, checks="quick", heatmap=False)
        load.observe((time.perf_counter() - warm) / assessment_images("quick", heatmap=False))
        routes.update(getattr(r, "path", "") for r in app.routes)  # every route is registered by now
        batcher.start()
        yield
        batcher.stop()
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="synthdet", version=str(det.card.synthdet_version), lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Is this image AI-generated? A score, a verdict in words, stability checks and "
                              "evidence. Errors are JSON: {\"error\": {\"reason\", \"detail\"}}.")

    app.openapi_version = "3.0.3"  # what the packaged Swagger UI 4 renders; no route here needs 3.1

    routes: set[str] = set()  # the app's route paths, read once at start (lifespan)

    def route_label(path: str) -> str:
        """The metrics label of a request path: the path of the route it names, or ``other``."""
        return path if path in routes else "docs-assets" if path.startswith("/docs-assets/") else "other"

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable) -> Response:
        """API key, per-endpoint metrics and one JSON shape for every refusal."""
        start = time.perf_counter()
        path = request.url.path
        endpoint = route_label(path)  # a route's own path, or "other": a bounded label set whatever clients send
        if s.api_key and path.startswith(("/v1/", "/metrics")):
            given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), s.api_key.encode()):
                response: Response = _error(ServiceError(401, "unauthorized", "a valid X-API-Key header is required"))
                metrics.errors.labels("unauthorized").inc()
                metrics.requests.labels(endpoint, "401").inc()
                return response
        response = await call_next(request)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, e: ServiceError) -> JSONResponse:
        metrics.errors.labels(e.reason).inc()
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        """404, 405 … from routing, in the documented shape (not FastAPI's ``{"detail": …}``)."""
        reason = {404: "not-found", 405: "method-not-allowed"}.get(e.status_code, "http-error")
        detail = f"{request.method} {request.url.path[:80]}: {e.detail}"
        return await service_error(request, ServiceError(e.status_code, reason, detail, headers=dict(e.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
        """A query or form parameter that does not validate: 422 in the documented shape, naming the parameter."""
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return await service_error(request, ServiceError(422, "invalid-parameter",
                                                         f"{where}: {first.get('msg', 'invalid')}"[:200]))

    queued_images = 0  # images the admitted requests send through the network

    def admit(images: int = 1) -> None:
        nonlocal admitted, queued_images
        if admitted >= s.queue_size:
            raise ServiceError(503, "queue-full", f"{admitted} requests in progress (queue size {s.queue_size}); "
                               f"retry after {s.retry_after_s} s", headers={"Retry-After": str(s.retry_after_s)})
        admitted += 1
        queued_images += images

    def release(images: int = 1) -> None:
        nonlocal admitted, queued_images
        admitted -= 1
        queued_images -= images

    async def read_uploads(request: Request, *, many: bool) -> list[tuple[str, bytes]]:
        """``(name, bytes)`` of the uploaded files: multipart parts, or the raw body as one file."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > s.max_body_bytes:
            raise ServiceError(413, "body-too-large", f"request body of {int(length):,} bytes exceeds the limit of "
                               f"{s.max_body_bytes:,} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > s.max_body_bytes:
                raise ServiceError(413, "body-too-large", f"request body exceeds the limit of {s.max_body_bytes:,} "
                                   f"bytes")
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return [("<body>", bytes(body))]
        try:
            form = await _InMemoryParser(request.headers, bytes(body), s.max_files + 8).parse()
        except MultiPartException as e:
            raise ServiceError(400, "bad-multipart", f"the multipart body cannot be parsed: {e.message}") from None
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise ServiceError(400, "no-file", "the multipart body holds no file part")
        if len(files) > (s.max_files if many else 1):
            raise ServiceError(400, "too-many-files", f"{len(files)} files; this endpoint takes "
                               + (f"at most {s.max_files}" if many else "one (use /v1/score/batch)"))
        out = []
        for f in files:
            out.append(((f.filename or "<file>")[:200], await f.read()))
            await f.close()
        return out

    def prepare_bounded(name: str, data: bytes, *, checks: str, heatmap: bool) -> Pending:
        """:func:`prepare` on a decoding thread, then a large image's memory back to the OS (its full-size decode is
        garbage by the time prepare returns: only the bounded copy lives on)."""
        size: tuple[int, int] | None = None
        try:
            pending = prepare(det, data, name=name, checks=checks, heatmap=heatmap, max_pixels=s.max_pixels)
            size = pending.size
            return pending
        finally:
            release_after(size or peek_size(data))  # a refused or damaged image may have been decoded too

    async def assess(uploads: list[tuple[str, bytes]], heatmap: bool, checks: str
                     ) -> list[Assessment | ServiceError]:
        """Decode on the pool, score on the worker; per-file errors in place."""
        loop = asyncio.get_running_loop()

        async def decode(name: str, data: bytes) -> Pending | ServiceError:
            try:
                return await loop.run_in_executor(pool, partial(
                    prepare_bounded, name, data, checks=checks, heatmap=heatmap))
            except ImageLoadError as e:
                return _load_error(e, name)

        prepared = await asyncio.gather(*(decode(name, data) for name, data in uploads))
        futures = [batcher.submit(p) if isinstance(p, Pending) else p for p in prepared]
        try:
            out: list[Assessment | ServiceError] = []
            for f in futures:
                if isinstance(f, ServiceError):
                    out.append(f)
                else:
                    done: Assessment = await asyncio.wrap_future(f)
                    out.append(done)
            return out
        finally:
            for f in futures:
                if not isinstance(f, ServiceError):
                    f.cancel()  # a request that timed out leaves nothing for the worker

    async def run(request: Request, heatmap: bool, checks: str, many: bool
                  ) -> list[tuple[str, Assessment | ServiceError]]:
        """``(file name, result)`` per upload: the body read first, within its own deadline and holding no queue
        slot (a slow sender starves nobody); then admitted, or refused with 503 before any work when the queue's
        estimated wait would pass the timeout; then answered within the timeout."""
        checks = check_setting(checks)
        try:
            uploads = await asyncio.wait_for(read_uploads(request, many=many), timeout=s.body_timeout_s)
        except TimeoutError:
            raise ServiceError(408, "body-timeout", f"the request body did not arrive within {s.body_timeout_s:g} s"
                               ) from None
        if len(uploads) > 1 and (total := header_pixels([data for _, data in uploads])) > s.max_request_pixels:
            raise ServiceError(413, "too-many-pixels", f"{len(uploads)} files of {total:,} px in all exceed the limit "
                               f"of {s.max_request_pixels:,} px per request (--max-request-pixels): send fewer")
        images = len(uploads) * assessment_images(checks, heatmap)
        wait = (queued_images + images) * load.seconds_per_image
        if admitted and wait > SHED_AT * s.timeout_s:  # alone, a request is tried whatever its cost
            retry = max(s.retry_after_s, round(wait - SHED_AT * s.timeout_s))
            raise ServiceError(503, "overloaded", f"about {wait:.1f} s of work is queued (timeout {s.timeout_s:g} s); "
                               f"retry after {retry} s", headers={"Retry-After": str(retry)})
        admit(images)
        try:
            results = await asyncio.wait_for(assess(uploads, heatmap, checks), timeout=s.timeout_s)
            return [(name, r) for (name, _), r in zip(uploads, results)]
        except TimeoutError:
            raise ServiceError(504, "timeout", f"no answer within {s.timeout_s:g} s") from None
        finally:
            release(images)

    def payload(a: Assessment, start: float) -> dict[str, Any]:
        out = a.model_dump(mode="json")
        out["timings_ms"]["total"] = round((time.perf_counter() - start) * 1e3, 2)
        return out

    @app.post("/v1/score", openapi_extra=_UPLOAD_BODY, summary="Assess one image (multipart field or raw body)")
    async def score(request: Request, heatmap: bool = False, checks: str = "quick") -> JSONResponse:
        """Probability, label, threshold, detector, verdict in words with reasons, stability checks (``checks=quick``:
        one re-shared copy; ``full``: JPEG 75, 0.5x resize and crop apart; ``off``), evidence and (``heatmap=true``)
        3x3 patch scores. Errors: 400/413/415/422 with a reason, 503 + Retry-After, 504."""
        start = time.perf_counter()
        ((_, result),) = await run(request, heatmap, checks, many=False)
        if isinstance(result, ServiceError):
            raise result
        return JSONResponse(payload(result, start))

    @app.post("/v1/score/batch", openapi_extra=_BATCH_BODY, summary="Assess several images (multipart files)")
    async def score_batch(request: Request, heatmap: bool = False, checks: str = "quick") -> JSONResponse:
        """One result per file, in order: an assessment, or ``{"name", "status", "error": {reason, detail}}``."""
        start = time.perf_counter()
        results = await run(request, heatmap, checks, many=True)
        for _, r in results:
            if isinstance(r, ServiceError):
                metrics.errors.labels(r.reason).inc()
        return JSONResponse({"results": [
            payload(r, start) if isinstance(r, Assessment)
            else {"name": name, "status": r.status, "error": {"reason": r.reason, "detail": r.detail}}
            for name, r in results]})

    loc_lock = threading.Lock()  # one localizer forward at a time: the network is not shared across threads

    @app.post("/v1/localize", openapi_extra=_UPLOAD_BODY, summary="Where was the image manipulated (Task B mask)")
    async def localize(request: Request, format: str = "png") -> Response:
        """The per-pixel probability map at the image's own size (``format=png``: 8-bit grey, ``npz``: float16
        ``mask``) and, in headers, the image-level score, thresholds and decision. 501 without a localizer."""
        if localizer is None:
            raise ServiceError(501, "no-localizer", "no localizer is loaded: start the service with --localizer DIR "
                               "(train one with `synthdet localize train`); /v1/score?heatmap=true gives patch scores")
        if format not in ("png", "npz"):
            raise ServiceError(400, "bad-format", f"format={format!r}: png or npz")
        loop = asyncio.get_running_loop()

        def work_sync(data: bytes) -> tuple[bytes, dict[str, str]]:
            try:
                with loc_lock:
                    return localize_bytes(localizer, data, max_pixels=s.max_pixels, fmt=format)
            finally:
                release_after(peek_size(data))  # the localizer works on the full-size decode

        async def work() -> tuple[bytes, dict[str, str]]:
            ((name, data),) = await read_uploads(request, many=False)
            try:
                return await loop.run_in_executor(pool, work_sync, data)
            except ImageLoadError as e:
                raise _load_error(e, name) from None

        admit()
        try:
            body, headers = await asyncio.wait_for(work(), timeout=s.timeout_s)
        except TimeoutError:
            raise ServiceError(504, "timeout", f"no answer within {s.timeout_s:g} s") from None
        finally:
            release()
        media = "image/png" if format == "png" else "application/octet-stream"
        return Response(body, media_type=media, headers=headers)

    @app.get("/v1/detector", summary="The detector's card: threshold, band, metrics and the rows behind them")
    async def detector_card() -> JSONResponse:
        (low, high), source = band_of(det)
        loc = None if localizer is None else {"model": localizer.card.model, "threshold": localizer.threshold,
                                              "loc_threshold": localizer.card.loc_threshold,
                                              "image_score": localizer.card.image_score}
        return JSONResponse({"id": det_id, "threshold": det.threshold, "band": [low, high], "band_source": source,
                             "card": det.card.model_dump(mode="json", exclude={"rows"}), "localizer": loc})

    @app.get("/healthz", summary="Liveness: the worker and the queue")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "detector": det_id, "in_progress": admitted,
                             "queue_size": s.queue_size, "waiting_for_model": batcher.depth})

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Swagger UI from the packaged ``swagger-ui-bundle`` files: the docs work on a machine without internet."""
        return get_swagger_ui_html(openapi_url="/openapi.json", title="synthdet API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in _DOCS_ASSETS:  # a fixed list: no client path is ever opened
            raise ServiceError(404, "not-found", f"no such asset {name[:80]!r}")
        return Response((Path(swagger_ui_path) / name).read_bytes(), media_type=_DOCS_ASSETS[name],
                        headers={"Cache-Control": "max-age=86400"})

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: "
                                           "data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                                           "frame-ancestors 'none'"})

    return app
