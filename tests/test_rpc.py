"""llama.cpp RPC (issue 15): layers on a real `ggml-rpc-server`, and the checks that run before
llama.cpp is allowed near a server (it aborts the process on an unreachable or mismatched one).

The server is the one scripts/build_rpc_server.py builds from this llama-cpp-python's own
sources (scripts/test builds it, and installs llama-cpp-python with RPC). It runs on
127.0.0.1 with one thread, serving one client at a time, so every client here is a short
`python -m edgechat` process that exits before the next one starts.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgechat import engine, rpc
from edgechat.config import load_defaults, resolve_paths
from edgechat.errors import ConfigError, EdgechatError
from edgechat.memory import GpuMemory
from edgechat.planner import placement

from .conftest import run_cli

THREADS = ("--threads", "1")
GREEDY = ("--temperature", "0", "--seed", "0", "--max-tokens", "12", "--ctx", "512", *THREADS)
HAS_RPC = engine.supports_rpc()
needs_rpc = pytest.mark.skipif(
    not HAS_RPC,
    reason="llama-cpp-python is built without RPC (scripts/test reinstalls it with CMAKE_ARGS=-DGGML_RPC=on)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A failed command printed exactly one line, `error: ...`, naming what the test expects."""
    assert r.returncode == 1, (r.returncode, r.stderr)  # not -6: llama.cpp never got to abort
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# --- a real server ---------------------------------------------------------------------


def _start_server() -> tuple[subprocess.Popen[bytes], str]:
    """A ggml-rpc-server on 127.0.0.1 (free port, one thread), answering HELLO; skips without one."""
    if not HAS_RPC:
        pytest.skip("llama-cpp-python is built without RPC (scripts/test reinstalls it with CMAKE_ARGS=-DGGML_RPC=on)")
    from build_rpc_server import cached_binary

    binary = cached_binary()
    if binary is None:
        pytest.skip("ggml-rpc-server is not built: run scripts/build_rpc_server.py (scripts/test does)")
    port = _free_port()
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            rpc.hello(rpc.resolve(endpoint), timeout=2)
            return proc, endpoint
        except EdgechatError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def rpc_server() -> Iterator[str]:
    """A ggml-rpc-server on 127.0.0.1 for the module; yields "127.0.0.1:PORT"."""
    proc, endpoint = _start_server()
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _send(home: Path, model: Path, *args: str) -> dict:
    r = run_cli("send", *args, "-m", str(model), *GREEDY, "--json", home=home)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@needs_rpc
def test_layers_on_an_rpc_server_reply_like_the_cpu_and_states_move_between_them(
    rpc_server: str, smollm2: Path, tmp_path: Path
) -> None:
    """All layers on the server, then part of them, give the CPU's greedy replies; a state
    written with layers on the server resumes in a fresh process without it, and back."""
    first, second = "What is the capital of France?", "And of Italy?"
    cpu_home, all_home, part_home = tmp_path / "cpu", tmp_path / "all", tmp_path / "part"
    cpu1 = _send(cpu_home, smollm2, "--new", first)
    cpu2 = _send(cpu_home, smollm2, "-c", cpu1["conversation_id"], second)

    # Every layer (and the output layer) on the server; the next turn on the CPU alone.
    r = run_cli("--debug", "send", "--new", first, "-m", str(smollm2), *GREEDY, "--json",
                "--rpc", rpc_server, "--gpu-layers", "-1", home=all_home)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    # llama.cpp's log (--debug) names the device of each buffer: the whole KV cache is remote.
    assert f"RPC0[{rpc_server}] KV buffer size" in r.stderr and "CPU KV buffer" not in r.stderr
    on_server = json.loads(r.stdout.splitlines()[-1])
    assert on_server["reply"] == cpu1["reply"]
    resumed = _send(all_home, smollm2, "-c", on_server["conversation_id"], second)
    assert resumed["restored_from"] == cpu2["restored_from"] == "state"
    assert resumed["prefill_tokens"] == cpu2["prefill_tokens"]  # only the new message: nothing re-read
    assert resumed["reply"] == cpu2["reply"]

    # Ten layers on the server (the output layer and the last nine), the rest on the CPU;
    # the next turn restores that state with every layer on the server.
    r = run_cli("--debug", "send", "--new", first, "-m", str(smollm2), *GREEDY, "--json",
                "--rpc", rpc_server, "--gpu-layers", "10", home=part_home)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"RPC0[{rpc_server}] KV buffer size" in r.stderr and "CPU KV buffer" in r.stderr
    part = json.loads(r.stdout.splitlines()[-1])
    assert part["reply"] == cpu1["reply"]
    back = _send(part_home, smollm2, "-c", part["conversation_id"], second, "--rpc", rpc_server, "--gpu-layers", "-1")
    assert back["restored_from"] == "state"
    assert back["reply"] == cpu2["reply"]


@needs_rpc
def test_plan_places_layers_on_the_rpc_device_from_the_config(rpc_server: str, smollm2: Path, home: Path) -> None:
    """`rpc = [...]` in config.toml registers the server; `plan` shows which layers it gets."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[defaults]\nrpc = ["{rpc_server}"]\n', encoding="utf-8")
    r = run_cli("plan", "-m", str(smollm2), "--gpu-layers", "10", "--ctx", "512", "--json", home=home)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    cpu, remote = plan["devices"]
    assert (cpu["device"], cpu["first"], cpu["last"], cpu["output"]) == ("CPU", 0, 20, False)
    assert (remote["device"], remote["endpoint"]) == ("RPC0", rpc_server)
    assert (remote["first"], remote["last"], remote["output"]) == (21, 29, True) and remote["free"] > 0
    assert plan["gpu_layers"] == 10 and plan["weights_gpu"] > 0
    text = run_cli("plan", "-m", str(smollm2), "--ctx", "512", home=home)
    assert text.returncode == 0, text.stderr
    assert f"RPC0 ({rpc_server})" in text.stdout and "remote devices" in text.stdout


@needs_rpc
def test_the_protocol_table_matches_what_libggml_says() -> None:
    """The known RPC protocol of this llama-cpp-python equals what its own server code prints."""
    import llama_cpp

    asked = engine._ask_rpc_protocol()
    assert asked == engine._RPC_PROTOCOLS.get(llama_cpp.__version__, asked)


# --- refusals: one line each, nothing stored lost ----------------------------------------


@pytest.fixture()
def stored(home: Path, smollm2: Path) -> tuple[str, list[dict]]:
    """A conversation with one CPU turn and its saved state."""
    first = _send(home, smollm2, "--new", "Say hi.")
    cid = first["conversation_id"]
    return cid, _messages(home, cid)


def _messages(home: Path, cid: str) -> list[dict]:
    r = run_cli("conversations", "show", cid, "--json", home=home)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["messages"]


def _still_intact(home: Path, smollm2: Path, cid: str, before: list[dict]) -> None:
    assert _messages(home, cid) == before
    after = _send(home, smollm2, "-c", cid, "Thanks.")
    assert after["restored_from"] == "state"


class _WrongVersionServer:
    """Answers HELLO like a ggml-rpc-server of protocol 6.0.0, then hangs up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.asked: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(1 + 8 + rpc.CONN_CAPS_SIZE)
                self.asked.append(request)
                conn.sendall(struct.pack("<Q", rpc.HELLO_REPLY_SIZE) + bytes([6, 0, 0, 0]) + bytes(rpc.CONN_CAPS_SIZE))


@needs_rpc
def test_unreachable_wrong_version_and_public_servers_are_one_line_errors(
    home: Path, smollm2: Path, stored: tuple[str, list[dict]]
) -> None:
    cid, before = stored
    closed = _free_port()
    r = run_cli("send", "-c", cid, "Next?", "-m", str(smollm2), *GREEDY, "--rpc", f"127.0.0.1:{closed}", home=home)
    _one_line_error(r, f"127.0.0.1:{closed}", "cannot reach")

    fake = _WrongVersionServer()
    r = run_cli("send", "-c", cid, "Next?", "-m", str(smollm2), *GREEDY, "--rpc", f"127.0.0.1:{fake.port}", home=home)
    _one_line_error(r, f"127.0.0.1:{fake.port}", "protocol 6.0.0", "7.0.0", "build_rpc_server")
    assert fake.asked and fake.asked[0][0] == rpc.RPC_CMD_HELLO  # it was asked before llama.cpp was

    r = run_cli("send", "-c", cid, "Next?", "-m", str(smollm2), *GREEDY, "--rpc", "8.8.8.8:50052", home=home)
    _one_line_error(r, "8.8.8.8:50052", "public address", "--rpc-allow-public", "SSH")
    _still_intact(home, smollm2, cid, before)


@needs_rpc
def test_a_server_that_dies_mid_reply_ends_the_process_in_one_line_and_keeps_the_reply_so_far(
    home: Path, smollm2: Path
) -> None:
    """llama.cpp aborts when a server it uses goes away (it cannot be caught); the abort says so
    in one line, and the message and the reply streamed so far are stored."""
    proc, endpoint = _start_server()
    try:
        cmd = [sys.executable, "-m", "edgechat", "send", "--new", "Write a long story about a dragon.",
               "-m", str(smollm2), *GREEDY[:4], "--max-tokens", "400", "--ctx", "1024", *THREADS,
               "--rpc", endpoint, "--gpu-layers", "-1"]  # fmt: skip
        env = {**os.environ, "EDGECHAT_HOME": str(home)}
        client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert client.stdout is not None
        got = client.stdout.read(80)  # the reply is streaming
        assert got, client.stderr.read() if client.stderr else ""
        time.sleep(1.0)  # past one streamed write (every 0.5 s)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    _out, err = client.communicate(timeout=120)
    assert client.returncode != 0
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: llama.cpp aborted:"), lines
    assert "RPC server" in lines[0]
    r = run_cli("conversations", "list", "--json", home=home)
    (conv,) = json.loads(r.stdout)
    user, reply = _messages(home, conv["id"])
    assert user["content"] == "Write a long story about a dragon."
    assert reply["role"] == "assistant" and reply["partial"] and reply["content"].startswith(got.decode()[:40])


@pytest.mark.skipif(HAS_RPC, reason="this llama-cpp-python has RPC")
def test_rpc_without_an_rpc_build_says_how_to_get_one(home: Path, smollm2: Path) -> None:
    r = run_cli("generate", "hi", "-m", str(smollm2), *GREEDY, "--rpc", "127.0.0.1:50052", home=home)
    _one_line_error(r, "built without", 'CMAKE_ARGS="-DGGML_RPC=on"', "--no-cache-dir")


def test_a_public_server_is_refused_before_any_connection(home: Path, smollm2: Path) -> None:
    r = run_cli("plan", "-m", str(smollm2), "--rpc", "127.0.0.1:50052,1.1.1.1:50052", home=home)
    _one_line_error(r, "1.1.1.1:50052", "public address")


# --- the address rules, without a server -----------------------------------------------


def test_loopback_and_private_addresses_pass_and_only_non_loopback_ones_warn() -> None:
    warnings: list[str] = []
    eps = rpc.check_addresses(
        rpc.split_endpoints(["localhost:50052,127.0.0.1:50053", "192.168.1.20:50052", "100.101.102.103:1"]),
        allow_public=False,
        warn=warnings.append,
    )
    assert [e.scope for e in eps] == ["loopback", "loopback", "private", "private"]
    assert len(warnings) == 1 and "192.168.1.20:50052" in warnings[0] and "SSH tunnel" in warnings[0]
    assert "127.0.0.1" not in warnings[0].split("prefer")[0]
    warnings.clear()
    rpc.check_addresses(["127.0.0.1:50052"], allow_public=False, warn=warnings.append)
    assert warnings == []


def test_public_addresses_need_the_flag_and_still_warn() -> None:
    with pytest.raises(ConfigError, match="public address"):
        rpc.check_addresses(["8.8.8.8:50052"], allow_public=False, warn=lambda _m: None)
    warnings: list[str] = []
    (e,) = rpc.check_addresses(["8.8.8.8:50052"], allow_public=True, warn=warnings.append)
    assert e.scope == "public" and len(warnings) == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [("50052", "HOST:PORT"), ("host:", "HOST:PORT"), ("h:0", "1-65535"), ("h:x", "1-65535"), ("[::1]:5", "IPv6")],
)
def test_bad_addresses_say_how_to_write_one(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("-", r"\-").replace("[", r"\[")):
        rpc.parse_endpoint(text)


def test_config_rpc_must_be_a_list_of_strings(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text('[defaults]\nrpc = "127.0.0.1:50052"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="defaults.rpc"):
        load_defaults(resolve_paths(home))
    (home / "config.toml").write_text('[defaults]\nrpc = ["127.0.0.1:50052"]\n', encoding="utf-8")
    assert load_defaults(resolve_paths(home)).rpc == ("127.0.0.1:50052",)


def test_placement_follows_llama_cpp_rpc_first_then_free_memory() -> None:
    """llama.cpp puts RPC devices ahead of local GPUs and splits by free memory (llama-model.cpp)."""
    gpu = GpuMemory(0, "GPU0", 8 << 30, 6 << 30, 2 << 30)
    far = GpuMemory(1, "RPC0", 4 << 30, 2 << 30, 2 << 30, endpoint="10.0.0.2:50052")
    cpu, first, second = placement(30, -1, (gpu, far))
    assert (cpu.device, cpu.layers, cpu.output) == ("CPU", 0, False)
    assert (first.device, first.first, first.last) == ("RPC0", 0, 7)  # 2 of 8 GiB free: a quarter of 31
    assert (second.device, second.first, second.last, second.output) == ("GPU0", 8, 29, True)
    (only_cpu,) = placement(30, 0, (gpu, far))
    assert only_cpu.layers == 30


@pytest.mark.asyncio
async def test_the_status_line_shows_each_remote_device_and_its_memory(
    home: Path, smollm2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chat's status line: remote devices apart from local VRAM (the probe is stubbed: registering
    a server in the test process would outlive it, and llama.cpp aborts on a vanished server)."""
    from edgechat import Runtime
    from edgechat.memory import MemorySnapshot
    from edgechat.tui import app as tui
    from edgechat.tui import chat_screen

    far = GpuMemory(0, "RPC0", 16 << 30, 12 << 30, 4 << 30, endpoint="192.168.1.20:50052")
    snap = MemorySnapshot(8 << 30, 4 << 30, 1 << 30, (far,), gpu_source="rpc")
    monkeypatch.setattr(chat_screen, "probe", lambda: snap)
    app = tui.EdgechatApp(lambda notice: Runtime(model=str(smollm2), home=home, on_notice=notice), autoload=False)
    try:
        async with app.run_test(size=(160, 30)) as pilot:
            app.chat.probe_memory()
            deadline = time.monotonic() + 30
            while "RPC 192.168.1.20:50052" not in app.chat.status.render().plain:
                assert time.monotonic() < deadline, app.chat.status.render().plain
                await pilot.pause(0.05)
            text = app.chat.status.render().plain
            assert "RPC 192.168.1.20:50052 4.0 GB/16.0 GB" in text and "VRAM" not in text
    finally:
        assert app.shut_down(timeout=60)


def test_a_busy_server_is_named_not_waited_on_forever() -> None:
    """A ggml-rpc-server serves one client at a time: the next connection is accepted by the
    kernel and then left unanswered. The HELLO check gives up with a message that says so."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        with pytest.raises(EdgechatError, match=rf"127\.0\.0\.1:{port} accepted the connection but did not answer"):
            rpc.hello(rpc.resolve(f"127.0.0.1:{port}"), timeout=0.3)
