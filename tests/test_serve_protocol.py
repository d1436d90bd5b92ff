"""The server's pure parts: OpenAI request checks and the history keys that find a conversation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgechat.serve import ServeOptions, check_options, is_loopback
from edgechat.serve.matching import history_key, prefix_keys, same_messages
from edgechat.serve.protocol import ApiError, openai_finish_reason, parse_chat, parse_completion


def _msgs(*pairs: tuple[str, object]) -> list[dict[str, object]]:
    return [{"role": r, "content": c} for r, c in pairs]


def test_a_chat_request_splits_into_system_history_and_new_message() -> None:
    req = parse_chat(
        {
            "model": "m",
            "messages": _msgs(
                ("system", "Be brief."),
                ("developer", "No lists."),
                ("user", "hi"),
                ("assistant", "hello"),
                ("user", [{"type": "text", "text": "how "}, {"type": "text", "text": "are you"}]),
            ),  # fmt: skip
            "max_completion_tokens": 7,
            "stop": "END",
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "ignored",
            "presence_penalty": 0,
        }
    )
    assert req.system == "Be brief.\n\nNo lists."
    assert req.history == (("user", "hi"), ("assistant", "hello"))
    assert req.text == "how are you"
    assert req.sampling.max_tokens == 7 and req.sampling.stop == ("END",)
    assert req.stream and req.include_usage and req.conversation_id is None


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ([], None, "invalid_type"),
        ({}, "messages", "missing_required_parameter"),
        ({"messages": []}, "messages", "invalid_value"),
        ({"messages": _msgs(("user", "hi")), "max_tokens": "5"}, "max_tokens", "invalid_type"),
        ({"messages": _msgs(("user", "hi")), "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"messages": _msgs(("user", "hi")), "temperature": True}, "temperature", "invalid_type"),
        ({"messages": _msgs(("user", "hi")), "top_p": 1.5}, "top_p", "invalid_value"),
        ({"messages": _msgs(("user", "hi")), "stop": [1]}, "stop", "invalid_type"),
        ({"messages": _msgs(("user", "hi")), "seed": 1.5}, "seed", "invalid_type"),
        ({"messages": _msgs(("user", "hi")), "n": 3}, "n", "unsupported_value"),
        ({"messages": _msgs(("user", "hi")), "stream": "yes"}, "stream", "invalid_type"),
        ({"messages": _msgs(("user", "hi")), "tools": [{"type": "function"}]}, "tools", "unsupported_value"),
        ({"messages": _msgs(("tool", "42"), ("user", "hi"))}, "messages[0].role", "unsupported_value"),
        ({"messages": _msgs(("user", None))}, "messages[0].content", "invalid_type"),
        ({"messages": _msgs(("user", [{"type": "image_url"}]))}, "messages[0].content", "unsupported_value"),
        ({"messages": _msgs(("user", "hi"), ("assistant", "yo"))}, "messages", "invalid_value"),
        ({"messages": _msgs(("user", "   "))}, "messages", "invalid_value"),
        ({"messages": _msgs(("user", "caf\udce9"))}, "messages[0].content", "invalid_value"),
    ],
)
def test_a_bad_chat_field_is_a_400_naming_it(body: object, param: str | None, code: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_chat(body)
    err = info.value
    assert err.status == 400 and err.param == param and err.code == code
    assert err.body()["error"]["type"] == "invalid_request_error"


def test_completion_takes_one_prompt() -> None:
    assert parse_completion({"prompt": ["one"], "max_tokens": 3}).prompt == "one"
    for body in ({"prompt": ["a", "b"]}, {"prompt": [1, 2]}, {"prompt": ""}, {"prompt": "x", "echo": True}):
        with pytest.raises(ApiError):
            parse_completion(body)


def test_only_length_is_length() -> None:
    assert [openai_finish_reason(r) for r in ("stop", "length", "cancelled", "repetition")] == [
        "stop", "length", "stop", "stop",
    ]  # fmt: skip


def test_history_keys_ignore_what_clients_change_on_the_way_back() -> None:
    a = [("user", "hi"), ("assistant", "Hello!\r\nHow can I help?  ")]
    b = [("user", " hi"), ("assistant", "Hello!\nHow can I help?")]
    assert history_key("sys", a) == history_key("sys ", b) and same_messages(a, b)
    assert history_key("sys", a) != history_key("other", a)
    assert history_key("", [("user", "hi")]) != history_key("", [("assistant", "hi")])


@given(
    st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.text(max_size=20)), max_size=6), st.text(max_size=10)
)
def test_prefix_keys_are_the_keys_of_each_prefix(messages: list[tuple[str, str]], system: str) -> None:
    keys = prefix_keys(system, messages)
    assert keys == [history_key(system, messages[:k]) for k in range(len(messages) + 1)]


def test_only_loopback_listens_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGECHAT_API_KEY", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("myhost")
    with pytest.raises(Exception, match="--api-key"):
        check_options(ServeOptions(host="0.0.0.0"))
    assert check_options(ServeOptions(host="0.0.0.0", api_key="k")).api_key == "k"
    monkeypatch.setenv("EDGECHAT_API_KEY", "env-key")
    assert check_options(ServeOptions(host="0.0.0.0")).api_key == "env-key"
