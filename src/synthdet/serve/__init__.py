"""``synthdet serve``: a REST API and a web page over :mod:`synthdet.detectors.assess` (needs the ``serve`` extra).

:func:`create_app` builds the FastAPI application for a loaded detector; :func:`run` serves it with uvicorn. The
library's core never imports this package; only the CLI does, lazily.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from synthdet.extras import require

require("fastapi", "synthdet serve")
require("prometheus_client", "synthdet serve")

from synthdet.serve.app import STATUS_BY_REASON, ServiceError, Settings, create_app  # noqa: E402

__all__ = ["STATUS_BY_REASON", "ServiceError", "Settings", "create_app", "is_loopback", "run"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds to this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(detector: Any, *, host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None,
        log_level: str = "info", localizer: Any = None) -> None:
    """Serve ``detector`` until interrupted; a non-loopback ``host`` needs ``settings.api_key``."""
    settings = settings or Settings()
    if not is_loopback(host) and not settings.api_key:
        raise ValueError(f"binding to {host} exposes the service beyond this machine: set an API key "
                         f"(--api-key or SYNTHDET_API_KEY)")
    uvicorn = require("uvicorn", "synthdet serve")
    from synthdet.serve.connections import server_config

    app = create_app(detector, settings=settings, localizer=localizer)
    uvicorn.Server(server_config(app, host=host, port=port, log_level=log_level, head_timeout_s=settings.head_timeout_s,
                                 per_client=settings.max_connections_per_client)).run()
