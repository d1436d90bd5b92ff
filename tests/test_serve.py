"""`edgechat serve`: a real server process on a free port, the real SmolLM2, the official openai client."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx  # the openai client's own HTTP library
import pytest
from openai import OpenAI

from .conftest import run_cli

pytestmark = pytest.mark.timeout(180)

FRANCE = "What is the capital of France?"
MODEL = "SmolLM2-135M-Instruct.Q4_1"  # the name a path-loaded model is served under
STORY = "Write a long story about a dragon who learns to bake bread. Use many details."


class ServerProc:
    """`python -m edgechat serve` in the background; `url` comes from its ready line."""

    def __init__(self, home: Path, *args: str, port: int = 0, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if k != "EDGECHAT_API_KEY"}
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "edgechat", "--home", str(home), "serve", "--port", str(port), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
        self.home = home
        self.stderr: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if line.startswith("edgechat serving ") and " on http://" in line:
                self.url = line.rsplit(" on ", 1)[1].strip()
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 90) -> ServerProc:
        assert self._ready.wait(timeout), f"server not ready after {timeout}s: {''.join(self.stderr)}"
        assert self.url, f"server exited (rc {self.proc.poll()}): {''.join(self.stderr)}"
        return self

    def client(self, api_key: str = "unused") -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        with self.log_on_failure():
            return self.proc.wait(timeout)

    @contextlib.contextmanager
    def log_on_failure(self) -> Iterator[None]:
        """A failure inside carries the server's own log: a hang shows nothing of it otherwise."""
        try:
            yield
        except Exception as exc:
            if self.proc.poll() is None:
                self.proc.kill()  # a hung server must not outlive the test
                self.proc.wait(10)
            raise AssertionError(f"{exc!r}; the server's log:\n{''.join(self.stderr[-40:])}") from exc


def _server_args(model: Path, *extra: str) -> tuple[str, ...]:
    # One llama thread: two that wait on each other every step crawl whenever anything else runs (issue 12).
    return ("-m", str(model), "--ctx", "1024", "--threads", "1", *extra)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2: Path):
    """The module's server: compaction off, so an over-long prompt is an error."""
    home = tmp_path_factory.mktemp("serve") / "home"
    s = ServerProc(home, *_server_args(smollm2, "--compaction", "off")).wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, smollm2: Path, gemma: Path):
    """A server with an API key, no waiting room (--queue 0) and a 1 MiB body limit; Gemma is
    a downloaded registry model in its home (linked, not copied)."""
    home = tmp_path_factory.mktemp("serve-key") / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / gemma.name).symlink_to(gemma)
    s = ServerProc(home, *_server_args(smollm2, "--api-key", "s3cret", "--queue", "0", "--max-body-mb", "1"))
    yield s.wait_ready()
    s.stop()


def _extra(obj: object) -> dict:
    extra = getattr(obj, "model_extra", None) or {}
    return extra["edgechat"]


def _stored(home: Path, cid: str) -> list:
    from edgechat.store import Store

    store = Store(home / "conversations.db")
    try:
        return [m for m in store.messages(cid) if m.kind == "message"]
    finally:
        store.close()


def _count(home: Path) -> int:
    from edgechat.store import Store

    store = Store(home / "conversations.db")
    try:
        return len(store.conversations())
    finally:
        store.close()


def _post(url: str, path: str, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(url + path, content=content, headers=headers, timeout=120)


def _chat(*messages: tuple[str, str], **kw: object) -> dict:
    return {"model": MODEL, "messages": [{"role": r, "content": c} for r, c in messages], **kw}


# -- the OpenAI surface ---------------------------------------------------------------------


def test_health_and_models(server: ServerProc) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "model": "SmolLM2-135M-Instruct.Q4_1"}
    models = server.client().models.list()
    assert [m.id for m in models.data][0] == "SmolLM2-135M-Instruct.Q4_1"
    assert server.stderr[-1].startswith("edgechat serving SmolLM2-135M-Instruct.Q4_1 on http://127.0.0.1:")


def test_chat_reply_usage_and_edgechat_fields(server: ServerProc) -> None:
    client = server.client()
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FRANCE}], temperature=0, max_tokens=8
    )
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    ec = _extra(r)
    assert ec["restored_from"] == "new" and ec["prefill_tokens"] == r.usage.prompt_tokens
    assert ec["context_tokens"] >= r.usage.prompt_tokens and ec["ttft_s"] > 0
    stored = _stored(server.home, ec["conversation_id"])
    assert [(m.role, m.content) for m in stored] == [("user", FRANCE), ("assistant", r.choices[0].message.content)]


def test_streaming_chat_matches_and_reports_usage(server: ServerProc) -> None:
    client = server.client()
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": FRANCE}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=8)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    assert _extra(last)["conversation_id"] != _extra(whole)["conversation_id"]  # a fresh history: its own conversation


def test_completion_plain_and_streamed(server: ServerProc) -> None:
    client = server.client()
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens <= 5 and r.usage.prompt_tokens >= 5
    assert _extra(r)["conversation_id"] is None
    streamed = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_stop_sequences_and_max_tokens(server: ServerProc) -> None:
    client = server.client()
    counting = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=["8"])
    assert counting.choices[0].finish_reason == "stop" and "8" not in counting.choices[0].text
    assert "7" in counting.choices[0].text
    story = [{"role": "user", "content": STORY}]
    short = client.chat.completions.create(model=MODEL, messages=story, temperature=0, max_tokens=8)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 8
    text = short.choices[0].message.content
    stop = next(w for w in text.split()[1:] if len(w) >= 3)
    stopped = client.chat.completions.create(model=MODEL, messages=story, temperature=0, max_tokens=8, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]


def test_follow_up_repeating_history_continues_the_conversation(server: ServerProc) -> None:
    client = server.client()
    history = [{"role": "system", "content": "You are a geography tutor."}, {"role": "user", "content": FRANCE}]
    first = client.chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=12)
    history += [{"role": "assistant", "content": first.choices[0].message.content}]
    history += [{"role": "user", "content": "And of Italy?"}]
    second = client.chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=12)
    a, b = _extra(first), _extra(second)
    assert b["conversation_id"] == a["conversation_id"] and b["restored_from"] == "memory"
    # Only the new message and its template scaffolding are prefilled: the rest was cached.
    new_tokens = second.usage.prompt_tokens - first.usage.prompt_tokens - first.usage.completion_tokens
    assert 0 < b["prefill_tokens"] <= new_tokens + 2 < second.usage.prompt_tokens // 2
    stored = _stored(server.home, a["conversation_id"])
    assert [m.content for m in stored][-2:] == ["And of Italy?", second.choices[0].message.content]
    listed = run_cli("conversations", "list", "--json", home=server.home)
    row = next(c for c in json.loads(listed.stdout) if c["id"] == a["conversation_id"])
    assert row["settings"]["system_prompt"] == "You are a geography tutor." and row["model"].endswith(".gguf")


def test_a_history_that_diverges_starts_a_new_conversation_holding_it(server: ServerProc) -> None:
    client = server.client()
    messages = [
        {"role": "user", "content": "Hi, I am Ada."},
        {"role": "assistant", "content": "Hello Ada! How can I help?"},
        {"role": "user", "content": "What is my name?"},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=10)
    ec = _extra(r)
    assert ec["restored_from"] == "transcript" or ec["restored_from"] == "new"
    stored = _stored(server.home, ec["conversation_id"])
    assert [m.content for m in stored][:3] == [m["content"] for m in messages]
    # The explicit id continues it too, with only the new message sent.
    again = _post(server.url, "/v1/chat/completions", _chat(("user", "Thanks!"), max_tokens=3, temperature=0),
                  headers={"X-Edgechat-Conversation": ec["conversation_id"]})  # fmt: skip
    assert again.status_code == 200 and again.json()["edgechat"]["conversation_id"] == ec["conversation_id"]
    assert again.headers["x-edgechat-conversation"] == ec["conversation_id"]
    assert len(_stored(server.home, ec["conversation_id"])) == 6
    # Named, it must be continued: a history that is not its own is a conflict, not a silent fork.
    wrong = _post(server.url, "/v1/chat/completions", _chat(("user", "Hi, I am Bob."), ("assistant", "Hi Bob."),
                  ("user", "Who am I?"), conversation_id=ec["conversation_id"], max_tokens=1))  # fmt: skip
    assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "conversation_mismatch"


def test_concurrent_requests_queue_and_are_all_answered(server: ServerProc) -> None:
    results: list[httpx.Response] = []

    def ask(i: int) -> None:
        results.append(
            _post(server.url, "/v1/chat/completions", _chat(("user", f"Say {i}."), max_tokens=2, temperature=0))
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(r.status_code for r in results) == [200, 200, 200]
    assert len({r.json()["edgechat"]["conversation_id"] for r in results}) == 3


# -- errors -------------------------------------------------------------------------------------


def test_each_bad_request_gets_its_status_and_the_server_goes_on(server: ServerProc) -> None:
    words = "alpha beta gamma delta " * 400  # ~1,600 tokens: over the 1,024-token context
    cases = [
        (b"{not json", 400, "invalid_json"),
        ({"model": MODEL, "messages": "hello"}, 400, "invalid_type"),
        (_chat(("user", "hi"), max_tokens="many"), 400, "invalid_type"),
        (_chat(("user", "hi"), temperature=7), 400, "invalid_value"),
        (_chat(("user", "hi"), n=2), 400, "unsupported_value"),
        (_chat(("user", "hi"), ("assistant", "hello")), 400, "invalid_value"),
        ({**_chat(("user", "hi")), "model": "gpt-9"}, 404, "model_not_found"),
        (_chat(("user", "hi"), conversation_id="nosuchid"), 404, "conversation_not_found"),
        (_chat(("user", words)), 400, "context_length_exceeded"),
    ]
    before = _count(server.home)
    for body, status, code in cases:
        r = _post(server.url, "/v1/chat/completions", body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["code"] == code and err["message"] and err["type"] in ("invalid_request_error", "server_error")
        ok = _post(server.url, "/v1/chat/completions", _chat(("user", "hi"), max_tokens=1, temperature=0))
        assert ok.status_code == 200, ok.text
    after = _count(server.home)
    assert after == before + len(cases)  # the good requests only: a failed one leaves no conversation
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["code"] == "not_found"
    assert httpx.get(server.url + "/v1/chat/completions").status_code == 405


def test_a_client_that_disconnects_mid_stream_stops_and_its_partial_reply_is_stored(server: ServerProc) -> None:
    body = _chat(("user", STORY), max_tokens=400, temperature=0, stream=True)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        cid = r.headers["x-edgechat-conversation"]
        pieces = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                pieces += 1
            if pieces >= 6:
                break
    deadline = time.time() + 20
    while time.time() < deadline:
        stored = _stored(server.home, cid)
        if len(stored) == 2:
            break
        time.sleep(0.2)
    assert stored[1].role == "assistant" and stored[1].partial and stored[1].content
    assert len(stored[1].content) < 1200  # stopped well before 400 tokens
    ok = _post(server.url, "/v1/chat/completions", _chat(("user", "hi"), max_tokens=2, temperature=0))
    assert ok.status_code == 200


# -- safety ---------------------------------------------------------------------------------


def test_non_loopback_host_without_a_key_refuses_to_start(tmp_path: Path, smollm2: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EDGECHAT_API_KEY"}
    r = subprocess.run(
        [sys.executable, "-m", "edgechat", "--home", str(tmp_path), "serve", "--host", "0.0.0.0", "-m", str(smollm2)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1 and "--api-key" in r.stderr and "Traceback" not in r.stderr


def test_with_a_key_a_missing_or_wrong_key_is_401(keyed: ServerProc) -> None:
    body = _chat(("user", "hi"), max_tokens=2, temperature=0)
    missing = _post(keyed.url, "/v1/chat/completions", body)
    wrong = _post(keyed.url, "/v1/chat/completions", body, headers={"Authorization": "Bearer nope"})
    for r in (missing, wrong):
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(keyed.url + "/health").status_code == 200  # probes need no key
    r = keyed.client("s3cret").chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=2)
    assert r.choices[0].message.content is not None


def test_a_request_may_pick_another_listed_model_and_switch_back(keyed: ServerProc) -> None:
    client = keyed.client("s3cret")
    assert [m.id for m in client.models.list().data] == [MODEL, "gemma3-270m"]
    hi = [{"role": "user", "content": "hi"}]
    other = client.chat.completions.create(model="gemma3-270m", messages=hi, max_tokens=2, temperature=0, stream=True)
    assert {chunk.model for chunk in other} == {"gemma3-270m"}
    assert httpx.get(keyed.url + "/health").json()["model"] == "gemma3-270m"
    assert [m.id for m in client.models.list().data] == ["gemma3-270m", MODEL]
    back = client.chat.completions.create(model=MODEL, messages=hi, max_tokens=2, temperature=0)
    assert back.model == MODEL


def test_body_limit_and_full_queue(keyed: ServerProc) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    big = _post(keyed.url, "/v1/chat/completions", _chat(("user", "x" * (2 << 20))), headers=auth)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    # A reply that keeps going (no loop for the loop guard to end): counting.
    body = _chat(("user", "Count from 1 to 500, one number per line."), max_tokens=300, temperature=0, stream=True)
    with httpx.stream("POST", keyed.url + "/v1/chat/completions", json=body, headers=auth, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(4):  # a few chunks in: the reply is running, and --queue 0 leaves no room for another
            assert next(lines).startswith("data: {")
            next(lines)  # the blank line after each event
        busy = _post(keyed.url, "/v1/chat/completions", _chat(("user", "hi"), max_tokens=1), headers=auth)
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
        assert busy.json()["error"]["code"] == "server_busy"
    for _ in range(50):  # the stopped stream frees its place
        ok = _post(keyed.url, "/v1/chat/completions", _chat(("user", "hi"), max_tokens=1), headers=auth)
        if ok.status_code == 200:
            break
        time.sleep(0.1)
    assert ok.status_code == 200


# -- restart: SIGTERM stops and stores, the next server resumes from the state file ----------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_stores_the_reply_in_flight_and_a_restart_resumes_from_state(server: ServerProc, smollm2: Path) -> None:
    client = server.client()
    history = [{"role": "user", "content": FRANCE}]
    first = client.chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=12)
    cid = _extra(first)["conversation_id"]
    history += [{"role": "assistant", "content": first.choices[0].message.content}]

    body = _chat(("user", STORY), max_tokens=400, temperature=0, stream=True)
    lines = []
    with server.log_on_failure():
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
            story_cid = r.headers["x-edgechat-conversation"]
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == 4:
                    server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    assert lines[-1] == "data: [DONE]"
    final = json.loads(next(x for x in reversed(lines) if '"finish_reason": "stop"' in x)[6:])
    assert final["edgechat"]["finish_reason"] == "cancelled"
    story = _stored(server.home, story_cid)
    assert story[-1].partial and story[-1].content

    port = _free_port()
    again = ServerProc(server.home, *_server_args(smollm2, "--compaction", "off"), port=port)
    seen = set()
    while not again._ready.is_set():  # /health answers 503 until the model is loaded
        with contextlib.suppress(httpx.TransportError):
            seen.add(httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code)
        time.sleep(0.02)
    again.wait_ready()
    try:
        assert 503 in seen
        history += [{"role": "user", "content": "And of Italy?"}]
        r = again.client().chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=8)
        ec = _extra(r)
        assert ec["conversation_id"] == cid and ec["restored_from"] == "state"
        assert ec["prefill_tokens"] < r.usage.prompt_tokens // 2
    finally:
        assert again.stop() == 0
