"""llama.cpp RPC servers as extra devices: parse `--rpc HOST:PORT,...`, refuse unsafe addresses,
check each server before llama.cpp is allowed near it, then register them (engine.py does that).

Why the checks run here, in Python, first: llama.cpp's RPC client ends the whole process with
GGML_ABORT when a server cannot be reached or answers with another protocol version
(`ggml-rpc.cpp`, `rpc_dispatcher::start`, `negotiate_hello`). So each server is first asked
for its version over a plain socket, with the same HELLO message llama.cpp sends, and only a
server that answers with ours is handed to llama.cpp.

The RPC server has no authentication and no encryption, and has had remote-code-execution
bugs (llama.cpp `tools/rpc/README.md`: "Never run the RPC server on an open network"). Public
addresses are refused unless the user allows them explicitly, and any address that is not
loopback gets a one-line warning recommending an SSH tunnel or a VPN.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .errors import ConfigError, EdgechatError

# ggml-rpc.cpp: enum rpc_cmd, RPC_CMD_HELLO "must be always 14"; the request carries
# conn_caps[RPC_CONN_CAPS_SIZE] (transport.h: 24 bytes, all zero for plain TCP) and the
# reply is {major, minor, patch, padding, conn_caps[24]}. Framing: request = cmd (1 byte),
# size (u64 little-endian), data; reply = size (u64), data.
RPC_CMD_HELLO = 14
CONN_CAPS_SIZE = 24
HELLO_REPLY_SIZE = 4 + CONN_CAPS_SIZE
CONNECT_TIMEOUT_S = 3.0
HELLO_TIMEOUT_S = 5.0
# Carrier-grade NAT space: Tailscale and other mesh VPNs hand out addresses here.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")

SERVER_HINT = "start ggml-rpc-server there (scripts/build_rpc_server.py builds it), or fix the address"
TUNNEL_HINT = "ssh -N -L 50052:127.0.0.1:50052 HOST, then --rpc 127.0.0.1:50052"


@dataclass(frozen=True)
class Endpoint:
    """One RPC server address as given (`host`, `port`), what it resolved to, and how far away it is.

    scope: "loopback" (this machine), "private" (RFC 1918, link-local, CGNAT/VPN ranges) or
    "public". llama.cpp connects over IPv4 (`socket_t::connect` uses gethostbyname), so the
    address is the IPv4 one it will use.
    """

    host: str
    port: int
    address: str
    scope: str

    @property
    def text(self) -> str:
        """The endpoint as llama.cpp takes it ("host:port")."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Hello:
    """What a server answered to HELLO: its protocol version."""

    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def split_endpoints(values: str | Iterable[str] | None) -> tuple[str, ...]:
    """`--rpc a:1,b:2`, a config list, or several --rpc options as one tuple of "host:port" strings."""
    if values is None:
        return ()
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"RPC server {item!r} is not a string", 'write it as "HOST:PORT"')
        out.extend(part.strip() for part in item.split(",") if part.strip())
    return tuple(dict.fromkeys(out))  # the same server twice would be registered once anyway


def parse_endpoint(text: str) -> tuple[str, int]:
    """("host", port) from "host:port"; IPv6 is refused because llama.cpp's RPC client is IPv4 only."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise ConfigError(f"RPC server {text!r} is not HOST:PORT", "write it like --rpc 127.0.0.1:50052")
    if host.startswith("[") or ":" in host:
        raise ConfigError(
            f"RPC server {text!r} is an IPv6 address",
            "llama.cpp's RPC client connects over IPv4 only: use an IPv4 address or a host name",
        )
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(
            f"RPC server {text!r}: port {port_text!r} is not 1-65535", "ggml-rpc-server listens on 50052 by default"
        )
    return host, port


def scope_of(address: str) -> str:
    """ "loopback", "private" or "public" for an IPv4 address."""
    ip = ipaddress.IPv4Address(address)
    if ip.is_loopback:
        return "loopback"
    if ip.is_private or ip.is_link_local or ip in _CGNAT:
        return "private"
    return "public"


def resolve(text: str) -> Endpoint:
    """Parse and resolve one "host:port" (a host name resolves to its first IPv4 address, as llama.cpp does)."""
    host, port = parse_endpoint(text)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(
            f"cannot resolve RPC server host {host!r} ({getattr(exc, 'strerror', None) or exc})",
            "check the name, or give its IPv4 address",
        ) from None
    address = str(infos[0][4][0])
    return Endpoint(host, port, address, scope_of(address))


def check_addresses(values: Sequence[str], *, allow_public: bool, warn: Callable[[str], None]) -> tuple[Endpoint, ...]:
    """Resolve every endpoint; refuse public ones unless allowed; one warning line for any non-loopback use."""
    endpoints = tuple(resolve(v) for v in values)
    public = [e for e in endpoints if e.scope == "public"]
    if public and not allow_public:
        e = public[0]
        where = f" ({e.address})" if e.address != e.host else ""
        raise ConfigError(
            f"RPC server {e.text}{where} is a public address; llama.cpp's RPC has no authentication or encryption",
            f"reach it through an SSH tunnel ({TUNNEL_HINT}) or a VPN, or pass --rpc-allow-public if you must",
        )
    remote = [e for e in endpoints if e.scope != "loopback"]
    if remote:
        names = ", ".join(e.text for e in remote)
        warn(
            f"RPC to {names} is unencrypted and unauthenticated (anyone on that network can use or attack the "
            f"server): prefer an SSH tunnel ({TUNNEL_HINT}) or a VPN"
        )
    return endpoints


def hello(endpoint: Endpoint, *, connect_timeout: float = CONNECT_TIMEOUT_S, timeout: float = HELLO_TIMEOUT_S) -> Hello:
    """Connect and ask the server its RPC protocol version, as llama.cpp's client does first.

    Raises an EdgechatError naming the server when it cannot be reached, does not answer, or
    answers with something that is not a version-7-style HELLO reply. The connection is closed
    right after: a ggml-rpc-server serves one client at a time and then waits for the next.
    """
    where = endpoint.text
    try:
        sock = socket.create_connection((endpoint.address, endpoint.port), timeout=connect_timeout)
    except TimeoutError:
        raise EdgechatError(
            f"RPC server {where} did not accept a connection within {connect_timeout:g} s", SERVER_HINT
        ) from None
    except OSError as exc:
        raise EdgechatError(f"cannot reach RPC server {where} ({exc.strerror or exc})", SERVER_HINT) from None
    with sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(struct.pack("<BQ", RPC_CMD_HELLO, CONN_CAPS_SIZE) + bytes(CONN_CAPS_SIZE))
            size = struct.unpack("<Q", _recv_exact(sock, 8))[0]
            if size != HELLO_REPLY_SIZE:
                raise EdgechatError(
                    f"{where} did not answer like a ggml-rpc-server of this protocol (a {size}-byte HELLO reply)",
                    "build the server from the same llama.cpp as this llama-cpp-python: scripts/build_rpc_server.py",
                )
            reply = _recv_exact(sock, HELLO_REPLY_SIZE)
        except TimeoutError:
            raise EdgechatError(
                f"RPC server {where} accepted the connection but did not answer within {timeout:g} s",
                "it serves one client at a time: is another program using it? Otherwise restart it",
            ) from None
        except ConnectionError as exc:
            raise EdgechatError(
                f"RPC server {where} closed the connection during the handshake ({exc})",
                "it may be an older ggml-rpc-server: build it from this llama-cpp-python's sources with "
                "scripts/build_rpc_server.py",
            ) from None
        except OSError as exc:
            raise EdgechatError(
                f"RPC server {where} failed during the handshake ({exc.strerror or exc})", SERVER_HINT
            ) from None
    return Hello(reply[0], reply[1], reply[2])


def check_version(endpoint: Endpoint, server: Hello, client: tuple[int, int, int]) -> None:
    """llama.cpp's own rule (negotiate_hello): same major version, server minor not newer."""
    major, minor, _patch = client
    if server.major != major or server.minor > minor:
        raise EdgechatError(
            f"RPC server {endpoint.text} speaks RPC protocol {server}, this llama.cpp speaks {major}.{minor}.{_patch}",
            "build the server from the same llama.cpp as this llama-cpp-python: scripts/build_rpc_server.py",
        )


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    return buf


@dataclass(frozen=True)
class RemoteDevice:
    """A device an RPC server exposes, as llama.cpp lists it: name ("RPC0"), its server, memory in bytes."""

    name: str
    endpoint: str
    free: int
    total: int


def connect(
    values: Sequence[str], *, allow_public: bool = False, warn: Callable[[str], None] = lambda _m: None
) -> tuple[RemoteDevice, ...]:
    """Check and register RPC servers before a model loads; returns every RPC device now known.

    Order: addresses and safety (no network), then the build (an RPC-less llama-cpp-python
    cannot use any server), then each server's reachability and protocol, then registration.
    Servers this process registered already are not asked again: the live model holds their
    only connection, and a second one would wait behind it.
    """
    from . import engine

    endpoints = check_addresses(values, allow_public=allow_public, warn=warn)
    if not endpoints:
        return engine.rpc_devices()
    if not engine.supports_rpc():
        raise ConfigError(
            f"--rpc needs a llama-cpp-python built with RPC; this one ({engine.llama_build()}) was built without it",
            f"reinstall it: {install_command()}",
        )
    client = engine.rpc_protocol()
    for e in endpoints:
        if e.text in engine.registered_rpc():
            continue
        check_version(e, hello(e), client)
        engine.register_rpc(e.text)
    return engine.rpc_devices()


def install_command() -> str:
    """The pip line that rebuilds the installed llama-cpp-python version with RPC (the wheel cache ignores CMAKE_ARGS)."""
    try:
        from importlib.metadata import version

        pin = f"llama-cpp-python=={version('llama-cpp-python')}"
    except Exception:  # noqa: BLE001 - not installed as a distribution: no pin
        pin = "llama-cpp-python"
    return f'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir --no-deps {pin}'
