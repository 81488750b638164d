"""A real uvicorn server on a free loopback port, in a thread of the test process (the detector is loaded once)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(detector: Any, localizer: Any = None, **settings: Any) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of ``create_app(detector, settings=Settings(**settings), localizer=localizer)``,
    configured as ``synthdet serve`` configures it (:func:`~synthdet.serve.connections.server_config`), until the
    block ends."""
    import uvicorn

    from synthdet.serve import Settings, create_app
    from synthdet.serve.connections import server_config

    port = free_port()
    s = Settings(**settings)
    config = server_config(create_app(detector, settings=s, localizer=localizer), host="127.0.0.1", port=port,
                           log_level="warning", backlog=2048, head_timeout_s=s.head_timeout_s,
                           per_client=s.max_connections_per_client)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
