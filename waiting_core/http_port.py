"""Each service's plain HTTP port: Prometheus ``/metrics`` and the JWK Set at
``/.well-known/jwks.json``, served from a background thread.

The JWK Set is read on the service's event loop (``SigningKeys.jwks``, cached for a
second), so the thread only waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app

log = logging.getLogger(__name__)

JWKS_PATH = "/.well-known/jwks.json"
JWKS_READ_TIMEOUT = 5.0

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr: scrapes come every few seconds."""


class HttpPort:
    """Serves /metrics, and the JWK Set when ``jwks`` is given; port 0 turns it off."""

    def __init__(
        self,
        host: str,
        port: int,
        jwks: Callable[[], Coroutine[Any, Any, str]] | None = None,
        jwks_max_age_seconds: int = 60,
    ) -> None:
        self._host = host
        self._port = port
        self._jwks = jwks
        self._max_age = jwks_max_age_seconds
        self._metrics = make_wsgi_app(REGISTRY)
        self._server: WSGIServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        """The bound port (0 when off)."""
        return self._server.server_port if self._server is not None else 0

    async def start(self) -> None:
        """Bind and serve in a daemon thread."""
        if not self._port or self._server is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._server = make_server(
            self._host, self._port, self._app, _ThreadingServer, handler_class=_QuietHandler
        )
        threading.Thread(target=self._server.serve_forever, name="http-port", daemon=True).start()

    async def stop(self) -> None:
        """Stop serving and close the socket."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == JWKS_PATH and self._jwks is not None:
            return self._serve_jwks(environ, start_response)
        return self._metrics(environ, start_response)  # type: ignore[no-any-return]

    def _serve_jwks(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        try:
            body = self._read_jwks().encode()
        except Exception as exc:  # noqa: BLE001 - any failure is a 503, never a crash
            log.warning("JWK Set unavailable: %s", type(exc).__name__)
            start_response(
                "503 Service Unavailable",
                [
                    ("Content-Type", "text/plain"),
                    ("Cache-Control", "no-store"),
                    ("Retry-After", "1"),
                ],
            )
            return [b"the signing keys cannot be read right now\n"]
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/jwk-set+json"),
                ("Cache-Control", f"public, max-age={self._max_age}"),
                ("Content-Length", str(len(body))),
            ],
        )
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    def _read_jwks(self) -> str:
        if self._jwks is None or self._loop is None:
            raise RuntimeError("no JWK Set")
        future = asyncio.run_coroutine_threadsafe(self._jwks(), self._loop)
        return future.result(timeout=JWKS_READ_TIMEOUT)
