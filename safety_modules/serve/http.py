"""Running the app under uvicorn with the limits a public endpoint needs, and a ready line.

uvicorn has its own settings for idle keep-alive connections (``timeout_keep_alive``) and for the
number of connections (``limit_concurrency``: a 503 beyond it); they are used as they are. It has
none for a client that sends its request headers slowly (a "slowloris" holds a connection that
way), so `header_timeout_protocol` adds one to uvicorn's h11 protocol: a connection whose request
line and headers are not complete within the timeout is closed. The body's timeout is the app's
(`inputs.read_json`): the ASGI app reads the body itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import ConfigError

logger = logging.getLogger(__name__)


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose request headers take longer than ``seconds``
    (counted from the connection, and again after each response for the next request)."""
    if seconds <= 0:
        raise ConfigError(f"the header timeout must be > 0 seconds, got {seconds}")

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
                logger.info("closed the connection of %s: no complete request headers in %g s", client, seconds)
                self.transport.close()

    return HeaderTimeoutProtocol


class ReadyServer(uvicorn.Server):
    """uvicorn's server, logging ``ready`` once its socket listens (not before: binding can still fail)."""

    def __init__(self, config: uvicorn.Config, ready: str) -> None:
        super().__init__(config)
        self.ready = ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            logger.info(self.ready)


def run(
    app: Any,
    host: str,
    port: int,
    ready: str,
    *,
    header_timeout_s: float = 10.0,
    keep_alive_s: int = 5,
    max_connections: int | None = 1024,
) -> None:
    """Serve ``app`` until interrupted; uvicorn's own logs at warning level (the app logs each request),
    httpx's too (it would log every upstream call and image download)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=header_timeout_protocol(header_timeout_s),
        timeout_keep_alive=keep_alive_s,
        limit_concurrency=max_connections,
        log_level="warning",
        access_log=False,
    )
    ReadyServer(config, ready).run()
