"""``synthdet serve``: the REST API and web page (:mod:`synthdet.serve`) for one detector, with uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthdet.cli._io import fail, note


def serve(
    detector: Annotated[Path | None, typer.Argument(help="Detector folder (default: the shipped one).")] = None,
    localizer: Annotated[Path | None, typer.Option(help="Task B localizer folder (`synthdet localize train`) for "
                                                        "/v1/localize and the page's map (default: the shipped one).")] = None,
    no_localizer: Annotated[bool, typer.Option("--no-localizer", help="Serve without /v1/localize (501).")] = False,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs an API key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="SYNTHDET_API_KEY",
                                                help="Required as X-API-Key on /v1/* and /metrics.")] = None,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Request body limit (413 beyond).")] = 25.0,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images with more pixels (413). 50 Mpx holds phones' "
                                                        "48 Mpx photos and 45-50 Mpx cameras; the model sees a 768-px "
                                                        "copy, so more pixels only cost decoding (~200 MB, ~0.5 CPU-s "
                                                        "each).")] = 50_000_000,
    max_request_pixels: Annotated[int, typer.Option(min=1, help="Refuse a batch whose files hold more pixels together "
                                                                "(413, read from headers before decoding).")
                                  ] = 100_000_000,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request (504 beyond).")] = 30.0,
    queue: Annotated[int, typer.Option(min=1, help="Requests admitted at once; more get 503 + Retry-After.")] = 32,
    max_batch: Annotated[int, typer.Option(min=1, help="Requests per forward pass (1: no micro-batching).")] = 8,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="Wait for more requests to batch, in ms.")] = 5.0,
    workers: Annotated[int, typer.Option(min=1, help="Decoding threads.")] = 2,
    body_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds for a request body to arrive (408 beyond); "
                                                              "no queue slot is held meanwhile.")] = 10.0,
    head_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds for a connection's request head to arrive "
                                                              "(closed beyond).")] = 10.0,
    max_connections_per_client: Annotated[int, typer.Option(min=1, help="Open connections from one address; more "
                                                                        "are closed at once.")] = 32,
    runtime: Annotated[str, typer.Option(help="auto (onnxruntime from the detector's and the localizer's ONNX graphs "
                                         "when they have one, else torch), torch or onnx.")] = "auto",
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve a REST API (/v1/score, /v1/score/batch, /v1/detector, /healthz, /metrics, /docs) and a web page (/)."""
    from synthdet.engines.base import scoring_engine
    from synthdet.serve import Settings, is_loopback, run

    if not is_loopback(host) and not api_key:
        raise fail(f"--host {host} exposes the service beyond this machine: give --api-key (or SYNTHDET_API_KEY)")
    settings = Settings(max_body_bytes=int(max_body_mb * 1024 * 1024), max_pixels=max_pixels,
                        max_request_pixels=max_request_pixels, timeout_s=timeout,
                        queue_size=queue, max_batch=max_batch, max_wait_ms=max_wait_ms, workers=workers,
                        api_key=api_key, body_timeout_s=body_timeout, head_timeout_s=head_timeout,
                        max_connections_per_client=max_connections_per_client)
    if port and (busy := port_in_use(host, port)):  # before the model loads: a second server fails at once
        raise fail(f"{host}:{port} is in use ({busy}): stop the other server or pass --port")
    det = scoring_engine(runtime, detector).load(detector)
    if no_localizer and localizer is not None:
        raise fail("--localizer and --no-localizer: give one")
    loc = None
    if not no_localizer:
        from synthdet.localization.graph import open_localizer

        loc = open_localizer(localizer, runtime=runtime)  # the folder's ONNX graph when it has one (auto)
    note(f"synthdet serve: http://{host}:{port}/  (API docs: /docs; detector {detector or 'shipped default'}; localizer "
         f"{'none' if loc is None else localizer or 'shipped default'})")
    run(det, host=host, port=port, settings=settings, log_level=log_level, localizer=loc)


def port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (the OS's words), or None when it can."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return None
