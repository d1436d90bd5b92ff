"""The OpenAI wire format: request bodies checked into frozen dataclasses, replies and errors built as dicts.

Pure functions, no HTTP and no llama.cpp, so every shape can be checked without a model.
Clients send many fields this server has no use for (`user`, `logprobs: false`,
`presence_penalty: 0`, ...): an unknown field is ignored, a known one of the wrong type is
a 400 naming it, and a request the server would silently answer differently than asked
(`n` > 1, tools, non-text content) is refused rather than half-honoured.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_STOPS = 16
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}` with a status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        kind: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Sampling:
    """The sampling fields shared by both endpoints; None means "the server's default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    """A chat request split the way a conversation stores it.

    `system` is the leading system message(s) (None when the request has none), `history`
    the (role, content) pairs before the last message, `text` the last (user) message.
    """

    model: str | None
    system: str | None
    history: tuple[tuple[str, str], ...]
    text: str
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    conversation_id: str | None = None


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompt: str
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False


@dataclass(frozen=True)
class Outcome:
    """What the llama thread hands back for one request: the text, the counts and the `edgechat` object."""

    text: str
    finish_reason: str  # edgechat's own: stop | length | cancelled | repetition ...
    prompt_tokens: int
    completion_tokens: int
    model: str
    edgechat: dict[str, Any] = field(default_factory=dict)

    @property
    def openai_finish(self) -> str:
        return openai_finish_reason(self.finish_reason)


def openai_finish_reason(reason: str) -> str:
    """OpenAI knows `stop` and `length`; every other way a reply ends (a user stop, the loop guard) is a stop."""
    return "length" if reason == "length" else "stop"


# -- parsing --------------------------------------------------------------------------------


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _type_error(param: str, expected: str, value: Any) -> ApiError:
    return _bad(f"{param} must be {expected}, not {_json_type(value)}", param, "invalid_type")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _opt_int(body: Mapping[str, Any], key: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _type_error(key, "an integer", value)
    if value < lo or (hi is not None and value > hi):
        raise _bad(f"{key} must be between {lo} and {hi}" if hi is not None else f"{key} must be at least {lo}", key)
    return value


def _opt_float(body: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _type_error(key, "a number", value)
    if not lo <= value <= hi:
        raise _bad(f"{key} must be between {lo:g} and {hi:g}", key)
    return float(value)


def _opt_typed(body: Mapping[str, Any], key: str, kind: type, label: str) -> Any:
    """The field's value when present and of `kind`, None when absent, else a 400."""
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise _type_error(key, label, value)
    return value


def _opt_bool(body: Mapping[str, Any], key: str) -> bool:
    return bool(_opt_typed(body, key, bool, "a boolean"))


def _opt_str(body: Mapping[str, Any], key: str) -> str | None:
    value: str | None = _opt_typed(body, key, str, "a string")
    return value


def _text(value: str, param: str) -> str:
    """Reject text that cannot be encoded (a lone surrogate from a JSON escape) before it reaches the tokenizer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _bad(f"{param} is not valid Unicode ({exc.reason} at position {exc.start})", param) from exc
    return value


def _stops(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _type_error("stop", "a string or an array of strings", value)
    if len(items) > MAX_STOPS:
        raise _bad(f"stop holds {len(items)} sequences; at most {MAX_STOPS} are allowed", "stop")
    return tuple(_text(s, "stop") for s in items if s)


def _sampling(body: Mapping[str, Any]) -> Sampling:
    max_tokens = _opt_int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _opt_int(body, "max_tokens", 1)
    else:
        _opt_int(body, "max_tokens", 1)  # still type-checked
    n = _opt_int(body, "n", 1)
    if n is not None and n != 1:
        raise _bad("n must be 1: this server returns one choice per request", "n", "unsupported_value")
    for key in ("presence_penalty", "frequency_penalty"):
        _opt_float(body, key, -2.0, 2.0)  # accepted and ignored; checked so a typo is still a 400
    if body.get("logprobs") not in (None, False, 0):
        raise _bad("logprobs are not supported", "logprobs", "unsupported_value")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_opt_float(body, "temperature", 0.0, 2.0),
        top_p=_opt_float(body, "top_p", 0.0, 1.0),
        seed=_opt_int(body, "seed", -(2**63), 2**63 - 1),
        stop=_stops(body),
    )


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = _opt_bool(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _type_error("stream_options", "an object", options)
        include_usage = _opt_bool(options, "include_usage")
    return stream, include_usage


def _content(value: Any, param: str) -> str:
    """A message's content: a string, or an array of text parts (joined)."""
    if isinstance(value, str):
        return _text(value, param)
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"{param}[{i}]: only text content parts are supported", param, "unsupported_value")
            texts.append(_text(part["text"], param))
        return "".join(texts)
    raise _type_error(param, "a string or an array of text parts", value)


def parse_chat(body: Any) -> ChatRequest:
    """Check a /v1/chat/completions body; raises ApiError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_type")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise (
            _type_error("messages", "an array", messages)
            if messages is not None
            else _bad("messages is required", "messages", "missing_required_parameter")
        )
    if not messages:
        raise _bad("messages must hold at least one message", "messages")
    for key in ("tools", "functions"):
        if body.get(key):
            raise _bad(f"{key} are not supported by this server", key, "unsupported_value")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _bad("response_format other than text is not supported", "response_format", "unsupported_value")
    pairs: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _type_error(param, "an object", m)
        role = m.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if not isinstance(role, str) or role not in ROLES:
            raise _bad(
                f"{param}.role must be one of {', '.join(ROLES)}, not {role!r}", f"{param}.role", "unsupported_value"
            )
        pairs.append((role, _content(m.get("content"), f"{param}.content")))
    # Leading system messages are the conversation's system prompt.
    n_sys = 0
    while n_sys < len(pairs) and pairs[n_sys][0] == "system":
        n_sys += 1
    system = "\n\n".join(c for _r, c in pairs[:n_sys]) if n_sys else None
    rest = pairs[n_sys:]
    if not rest or rest[-1][0] != "user":
        raise _bad("the last message must be from the user", "messages")
    if not rest[-1][1].strip():
        raise _bad("the last message is empty", "messages")
    stream, include_usage = _stream_flags(body)
    cid = _opt_str(body, "conversation_id")
    return ChatRequest(
        model=_opt_str(body, "model"),
        system=system,
        history=tuple(rest[:-1]),
        text=rest[-1][1],
        sampling=_sampling(body),
        stream=stream,
        include_usage=include_usage,
        conversation_id=cid.strip() if cid and cid.strip() else None,
    )


def parse_completion(body: Any) -> CompletionRequest:
    """Check a /v1/completions body (one prompt string; token arrays and batches are refused)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_type")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise _bad("prompt is required", "prompt", "missing_required_parameter")
    if not isinstance(prompt, str):
        raise _type_error("prompt", "a string (one prompt per request)", prompt)
    if not prompt.strip():
        raise _bad("the prompt is empty", "prompt")
    unsupported = {
        "echo": body.get("echo") not in (None, False),
        "suffix": body.get("suffix") not in (None, ""),
        "best_of": body.get("best_of") not in (None, 1) or body.get("best_of") is True,
    }
    for key, refused in unsupported.items():
        if refused:
            raise _bad(f"{key} is not supported by this server", key, "unsupported_value")
    stream, include_usage = _stream_flags(body)
    return CompletionRequest(
        model=_opt_str(body, "model"),
        prompt=_text(prompt, "prompt"),
        sampling=_sampling(body),
        stream=stream,
        include_usage=include_usage,
    )


# -- building replies -----------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(outcome: Outcome) -> dict[str, int]:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


def chat_response(rid: str, created: int, outcome: Outcome) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": outcome.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": outcome.text},
                "logprobs": None,
                "finish_reason": outcome.openai_finish,
            }
        ],
        "usage": usage(outcome),
        "edgechat": outcome.edgechat,
    }


def chat_chunk(rid: str, created: int, model: str, delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def completion_response(rid: str, created: int, outcome: Outcome) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": outcome.model,
        "choices": [{"index": 0, "text": outcome.text, "logprobs": None, "finish_reason": outcome.openai_finish}],
        "usage": usage(outcome),
        "edgechat": outcome.edgechat,
    }


def completion_chunk(rid: str, created: int, model: str, text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def model_list(ids: Sequence[str], owned_by: str = "edgechat") -> dict[str, Any]:
    now = int(time.time())
    return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": owned_by} for i in ids]}
