"""Connection guards uvicorn does not have: a deadline for a request's head, and a cap on connections per client.

Without them a client that opens thousands of connections and sends nothing, or trickles its headers a byte a
second, holds sockets and memory for ever (uvicorn times out only idle keep-alive connections). The guard is a
subclass of uvicorn's h11 protocol, so the server stays uvicorn; :func:`server_config` is the one place a
:class:`uvicorn.Config` for this service is made (``run`` and the tests use it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


def _client_host(protocol: Any) -> str | None:
    client = getattr(protocol, "client", None)
    return str(client[0]) if client else None


def guarded_protocol(*, head_timeout_s: float, per_client: int) -> type[H11Protocol]:
    """An h11 protocol class that closes a connection whose first request head has not fully arrived within
    ``head_timeout_s``, and refuses a client address's connection beyond ``per_client`` open ones."""

    open_by_host: dict[str, int] = {}  # this server's open connections per client address, counted as they come

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _host: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._host = _client_host(self)
            if self._host is not None:
                open_by_host[self._host] = open_by_host.get(self._host, 0) + 1
                if open_by_host[self._host] > per_client:
                    transport.close()  # before any byte is read: the client sees its connection closed
                    return
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_late)

        def _head_late(self) -> None:
            if self.cycle is None and not self.transport.is_closing():  # no request head parsed yet
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            if self._host is not None:
                left = open_by_host.pop(self._host) - 1
                if left:
                    open_by_host[self._host] = left
            super().connection_lost(exc)

    return GuardedH11Protocol


def server_config(app: Any, *, host: str, port: int, head_timeout_s: float, per_client: int,
                  log_level: str = "info", **kw: Any) -> uvicorn.Config:
    """The uvicorn configuration of the service: the guarded protocol, no server header, 5 s keep-alive."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False, timeout_keep_alive=5,
                          http=guarded_protocol(head_timeout_s=head_timeout_s, per_client=per_client), **kw)
