"""`edgechat serve`: a local OpenAI-compatible server whose conversations resume from saved KV.

    protocol.py  the OpenAI shapes: request checks, replies, errors (pure)
    matching.py  which stored conversation a request's message list continues
    backend.py   the work of one request, on the llama thread (Runtime, turns, completions)
    worker.py    the one llama thread and its bounded queue
    app.py       Starlette routes, auth, body limit, server-sent events

`run_server` binds the socket first (so /health answers 503 while the model loads), loads
the model on the llama thread, prints `edgechat serving MODEL on http://HOST:PORT` to stderr
and serves until SIGINT/SIGTERM, which stop the reply in flight, store it, and exit 0.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, EdgechatError

DEFAULT_PORT = 8080
DEFAULT_QUEUE = 16
DEFAULT_MAX_BODY_MB = 8
WATCH_MEMORY_S = 2.0  # between requests, free memory is looked at this often (issue 18)


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    max_queue: int = DEFAULT_QUEUE
    max_body_bytes: int = DEFAULT_MAX_BODY_MB << 20
    debug: bool = False


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_options(options: ServeOptions) -> ServeOptions:
    """Refuse an unsafe or impossible setup before anything loads."""
    key = options.api_key if options.api_key is not None else os.environ.get("EDGECHAT_API_KEY")
    key = key or None
    if not is_loopback(options.host) and key is None:
        raise ConfigError(
            f"--host {options.host} would let other machines use this server without a key",
            "set --api-key KEY (or EDGECHAT_API_KEY), or listen on 127.0.0.1",
        )
    if not 0 <= options.port <= 65535:
        raise ConfigError(f"--port {options.port} is not a port number", "use 1-65535 (0: any free port)")
    if options.max_queue < 0:
        raise ConfigError(f"--queue {options.max_queue} is negative", "use 0 or more")
    if options.max_body_bytes <= 0:
        raise ConfigError("the body size limit must be positive", "use --max-body-mb 1 or more")
    return ServeOptions(options.host, options.port, key, options.max_queue, options.max_body_bytes, options.debug)


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve --host {host}: {exc.strerror}", "use an address such as 127.0.0.1") from exc
    family, kind, proto, _name, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", "choose another --port") from exc
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    h = host.strip("[]")
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


def run_server(make_runtime: Callable[[], Any], options: ServeOptions) -> int:
    """Serve until a signal; returns the exit status (0 after a clean stop, 1 when the model failed to load)."""
    import uvicorn

    from .app import ServerState, build_app
    from .backend import Backend
    from .worker import LlamaWorker

    options = check_options(options)
    sock = bind(options.host, options.port)
    port = sock.getsockname()[1]
    worker = LlamaWorker(options.max_queue)
    state = ServerState(worker=worker, api_key=options.api_key, max_body_bytes=options.max_body_bytes)
    status = {"code": 0}

    def load() -> Backend:
        backend = Backend(make_runtime())
        try:
            backend.start()
        except BaseException:
            backend.close()
            raise
        return backend

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                self.load_task = asyncio.ensure_future(self._load())  # held: the loop keeps only a weak reference

        async def _load(self) -> None:
            try:
                backend = await asyncio.wrap_future(worker.call(load))
            except EdgechatError as exc:
                state.load_error = str(exc)
            except Exception as exc:  # noqa: BLE001 - any load failure ends the server with one line
                state.load_error = f"{type(exc).__name__}: {exc}"
            else:
                state.backend = backend
                state.model = backend.rt.model_name
                print(f"edgechat serving {state.model} on {_url(options.host, port)}", file=sys.stderr, flush=True)
                self.watch_task = asyncio.ensure_future(self._watch(backend))
                return
            print(f"error: {state.load_error}", file=sys.stderr, flush=True)
            status["code"] = 1
            self.should_exit = True

        async def _watch(self, backend: Backend) -> None:
            """Between requests: free memory against the floor, on the llama thread while it is idle."""
            while not self.should_exit:
                await asyncio.sleep(WATCH_MEMORY_S)
                if worker.pending or self.should_exit:
                    continue  # a request runs or waits: its turn looks before it starts
                try:
                    await asyncio.wrap_future(worker.call(backend.watch_memory))
                except Exception:  # noqa: BLE001 - a failed look (or the thread shutting down) waits for the next
                    continue

        def handle_exit(self, sig: int, frame: Any) -> None:
            worker.stop_all()  # the reply in flight stops at its next token and is stored
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        build_app(state),
        log_level="info" if options.debug else "warning",
        access_log=options.debug,
        lifespan="off",
        timeout_graceful_shutdown=30,
        timeout_keep_alive=5,
    )
    server = Server(config)
    # uvicorn re-raises the signal it caught once it has shut down; by then we are stopping anyway.
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        backend = state.backend
        worker.close(final=backend.close if backend is not None else None)
        sock.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return status["code"]
