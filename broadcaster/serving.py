"""Serve an ASGI app with uvicorn: in the foreground for a command, or on a free loopback port in a
background thread for tests. The socket is bound before uvicorn starts, so port 0 works and the
real address is known (and printed) before the first request can arrive."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # every keep-alive response waits 40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def base_url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_server(app: Any, *, log_level: str = "warning", access_log: bool = False) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=2,
        backlog=2048,
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


def serve(
    app: Any,
    host: str,
    port: int,
    *,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM: uvicorn's graceful shutdown)."""
    sock = bind(host, port)
    server = make_server(app, log_level=log_level, access_log=access_log)
    if on_ready:
        on_ready(base_url_of(sock))
    server.run(sockets=[sock])


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0) -> Iterator[str]:
    """Run ``app`` in a daemon thread; yields its base URL; stops it (and waits) on exit."""
    sock = bind(host, port)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the ASGI server did not start")
        time.sleep(0.005)
    try:
        yield base_url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout + 5)
        sock.close()
