"""The HTTP side of `edgechat serve`: routes, auth, body limits, server-sent events, errors.

Built on Starlette and uvicorn. Starlette is the small ASGI toolkit FastAPI itself is made
of: routing, requests, streaming responses and middleware, no pydantic and no schema layer
we would not use (the OpenAI shapes are checked by hand in protocol.py, with OpenAI's own
error messages). uvicorn is the reference ASGI server, maintained by the same people, with
graceful shutdown on SIGINT/SIGTERM. Both are pure Python wheels with few dependencies
(anyio, h11, click), so `pip install edgechat` stays light.

This module never touches the model: requests become `Job`s on the llama thread
(worker.py) and their text comes back as events.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import BudgetError, BusyError, ConfigError, EdgechatError, ModelError
from .backend import Backend
from .protocol import (
    ApiError,
    Outcome,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    model_list,
    new_id,
    parse_chat,
    parse_completion,
    usage,
)
from .worker import Job, LlamaWorker, QueueFull

DRAIN_LIMIT = 16 << 20  # an oversized body is read this far past the limit, so the client can read its 413


@dataclass
class ServerState:
    """What the routes share: the worker, the backend once loaded, and the limits."""

    worker: LlamaWorker
    api_key: str | None
    max_body_bytes: int
    backend: Backend | None = None
    model: str = ""
    load_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.backend is not None


# -- errors ---------------------------------------------------------------------------------


def to_api_error(exc: BaseException) -> ApiError:
    """Map a core error to its HTTP status; anything unexpected is a 500 (logged with its traceback)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BudgetError):
        return ApiError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, BusyError):
        return ApiError(409, str(exc), code="conversation_busy", headers={"Retry-After": "5"})
    if isinstance(exc, ModelError) and "chat template" not in exc.message or isinstance(exc, ConfigError):
        return ApiError(500, str(exc), code="model_error")
    if isinstance(exc, EdgechatError):
        return ApiError(400, str(exc), code="invalid_request")
    print("edgechat serve: unexpected error:\n" + "".join(traceback.format_exception(exc)), file=sys.stderr)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


# -- requests -------------------------------------------------------------------------------


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, at most `limit` bytes (413 beyond), malformed JSON a 400."""
    length = request.headers.get("content-length", "")
    too_big = length.isdigit() and int(length) > limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            too_big = True
        if too_big:
            if size > limit + DRAIN_LIMIT:
                break
            continue
        chunks.append(chunk)
    if too_big:
        raise ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from exc


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so receive() waits for that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _next_output(job: Job, watcher: asyncio.Future[None]) -> tuple[str, Any] | None:
    """The job's next event, or None when the client disconnected first (the job is then stopped)."""
    getter = asyncio.ensure_future(job.events.get())
    waiting: set[asyncio.Future[Any]] = {getter, watcher}
    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if getter in done:
        return getter.result()
    getter.cancel()
    job.stop.set()
    return None


class EventStream(StreamingResponse):
    """Server-sent events whose end, however it comes (done, client gone), stops the job."""

    def __init__(self, body: AsyncIterator[bytes], job: Job, headers: dict[str, str]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        )
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette cancels the stream when the client disconnects (ASGI spec < 2.4, uvicorn's),
        # or the next write fails (spec 2.4): either way this `finally` stops the generation.
        try:
            await super().__call__(scope, receive, send)
        except (OSError, ClientDisconnect):
            pass
        finally:
            if not self.job.finished:
                self.job.stop.set()  # generation stops at the next token; the partial reply is stored


Runner = Callable[[Any, Callable[[str, Any], None], Any], Outcome]


async def _serve_request(
    request: Request,
    state: ServerState,
    req: Any,
    run: Callable[[Backend], Runner],
    stream_body: Callable[[str, int, str, Job, Any, tuple[str, Any]], AsyncIterator[bytes]],
    respond: Callable[[str, int, Outcome], dict[str, Any]],
    prefix: str,
) -> Response:
    if state.backend is None:
        raise ApiError(503, "the model is still loading", code="loading", headers={"Retry-After": "2"})
    backend = state.backend
    job = Job(asyncio.get_running_loop())
    try:
        state.worker.submit(job, lambda j: run(backend)(req, j.emit, j.stop))
    except QueueFull:
        raise ApiError(
            503,
            f"the server is busy: {state.worker.pending} requests are running or queued",
            code="server_busy",
            headers={"Retry-After": str(max(1, state.worker.pending))},
        ) from None
    rid, created = new_id(prefix), int(time.time())
    headers: dict[str, str] = {}
    model = state.model
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            event = await _next_output(job, watcher)
            if event is None:
                return Response(status_code=499)  # nobody is listening; the job stored what it had
            kind, data = event
            if kind == "conversation":
                headers["X-Edgechat-Conversation"] = data
                continue
            if kind == "model":  # the request may have switched models
                model = state.model = data
                continue
            if kind == "error":
                raise to_api_error(data)
            if req.stream:
                # The first output decides: errors before it get a proper status, after it an SSE error.
                return EventStream(stream_body(rid, created, model, job, req, event), job, headers)
            if kind == "piece":
                continue  # the outcome holds the whole text
            return JSONResponse(respond(rid, created, data), headers=headers)
    finally:
        watcher.cancel()


async def _events_after(job: Job, first: tuple[str, Any]) -> AsyncIterator[tuple[str, Any]]:
    event = first
    while True:
        yield event
        if event[0] in ("done", "error"):
            return
        event = await job.events.get()


async def _chat_stream(
    rid: str, created: int, model: str, job: Job, req: Any, first: tuple[str, Any]
) -> AsyncIterator[bytes]:
    yield _sse(chat_chunk(rid, created, model, {"role": "assistant", "content": ""}))
    async for kind, data in _events_after(job, first):
        if kind == "piece":
            yield _sse(chat_chunk(rid, created, model, {"content": data}))
        elif kind == "error":
            yield _sse(to_api_error(data).body())
        elif kind == "done":
            last = chat_chunk(rid, created, data.model, {}, data.openai_finish)
            yield _sse({**last, "edgechat": data.edgechat})
            if req.include_usage:
                tail = chat_chunk(rid, created, data.model, {})
                yield _sse({**tail, "choices": [], "usage": usage(data), "edgechat": data.edgechat})
    yield b"data: [DONE]\n\n"


async def _completion_stream(
    rid: str, created: int, model: str, job: Job, req: Any, first: tuple[str, Any]
) -> AsyncIterator[bytes]:
    async for kind, data in _events_after(job, first):
        if kind == "piece":
            yield _sse(completion_chunk(rid, created, model, data))
        elif kind == "error":
            yield _sse(to_api_error(data).body())
        elif kind == "done":
            last = completion_chunk(rid, created, data.model, "", data.openai_finish)
            yield _sse({**last, "edgechat": data.edgechat})
            if req.include_usage:
                tail = completion_chunk(rid, created, data.model, "")
                yield _sse({**tail, "choices": [], "usage": usage(data), "edgechat": data.edgechat})
    yield b"data: [DONE]\n\n"


# -- the app --------------------------------------------------------------------------------


def _guarded(
    fn: Callable[[Request, ServerState], Awaitable[Response]], state: ServerState
) -> Callable[[Request], Awaitable[Response]]:
    """Every route answers errors as OpenAI-shaped JSON and the server goes on."""

    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request, state)
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never a crash
            return error_response(to_api_error(exc))

    return endpoint


async def health(request: Request, state: ServerState) -> Response:
    if state.load_error is not None:
        return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
    if not state.ready:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ok", "model": state.model})


async def models(request: Request, state: ServerState) -> Response:
    if state.backend is None:
        raise ApiError(503, "the model is still loading", code="loading", headers={"Retry-After": "2"})
    info = await asyncio.to_thread(state.backend.models)  # registry files only: no llama, no SQLite
    listing = model_list([info.loaded, *info.available])
    wanted = request.path_params.get("model_id")
    if wanted is None:
        return JSONResponse(listing)
    for item in listing["data"]:
        if item["id"] == wanted:
            return JSONResponse(item)
    raise ApiError(404, f"the model {wanted!r} does not exist here", code="model_not_found", param="model")


async def chat_completions(request: Request, state: ServerState) -> Response:
    req = parse_chat(await read_json(request, state.max_body_bytes))
    header_cid = request.headers.get("x-edgechat-conversation", "").strip()
    if header_cid and req.conversation_id is None:
        from dataclasses import replace

        req = replace(req, conversation_id=header_cid)
    return await _serve_request(request, state, req, lambda b: b.chat, _chat_stream, chat_response, "chatcmpl")


async def completions(request: Request, state: ServerState) -> Response:
    req = parse_completion(await read_json(request, state.max_body_bytes))
    return await _serve_request(
        request, state, req, lambda b: b.complete, _completion_stream, completion_response, "cmpl"
    )


class AuthMiddleware:
    """With an API key, every route but /health needs `Authorization: Bearer KEY` (401 otherwise)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            message = "missing API key" if not auth else "incorrect API key"
            err = ApiError(401, f"{message}: send Authorization: Bearer KEY", code="invalid_api_key")
            response = error_response(err)
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(state: ServerState) -> ASGIApp:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        text = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(ApiError(exc.status_code, text, code=code))

    routes = [
        Route("/health", _guarded(health, state), methods=["GET"]),
        Route("/v1/models", _guarded(models, state), methods=["GET"]),
        Route("/v1/models/{model_id:path}", _guarded(models, state), methods=["GET"]),
        Route("/v1/chat/completions", _guarded(chat_completions, state), methods=["POST"]),
        Route("/v1/completions", _guarded(completions, state), methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    return AuthMiddleware(app, state.api_key)
