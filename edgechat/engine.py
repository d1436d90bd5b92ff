"""The only module that imports llama_cpp: load, template, prefix reuse, stream, KV edits, state files.

It owns one `llama_cpp.Llama` and keeps `input_ids`/`n_tokens` in step with the KV cache
after every manual edit, because llama-cpp-python trusts them blindly. Other modules that
need llama.cpp ask here: memory.py and the planner (`supports_gpu_offload`, `ggml_devices`),
kv_eval.py for logits at every position (`AllLogitsDecoder`); tests/test_layout.py keeps it so.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .config import KV_TYPES, EngineSettings, SamplingSettings
from .errors import Cancelled, ConfigError, EdgechatError, ModelError, StateError
from .gguf_info import GGUFInfo, read_gguf
from .loop_guard import LoopGuard
from .planner import pad_ctx
from .special_text import SpecialTexts
from .threads import ThreadControl

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .rpc import RemoteDevice

_GGML_TYPE = {"f16": 1, "q4_0": 2, "q8_0": 8}
# Plain-text turns for models without a chat template (base models such as Gemma 3 270M).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}\n\n"
    "{% elif m.role == 'user' %}User: {{ m.content }}\n"
    "{% else %}Assistant: {{ m.content }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
FALLBACK_STOPS = ("\nUser:",)


@dataclass(frozen=True)
class GenerationStats:
    """What one generation cost; ttft_s runs from the call to the first token."""

    prompt_tokens: int
    prefill_tokens: int
    completion_tokens: int
    ttft_s: float
    decode_tokens_per_s: float
    prefill_s: float
    decode_s: float
    finish_reason: str  # "stop" | "length" | "cancelled" | "repetition" (the loop guard ended it)
    token_latencies_s: tuple[float, ...] = field(default=(), repr=False)
    decode_threads: int = 0  # at the end of the turn (the watchdog may have stepped it)
    prefill_threads: int = 0
    threads_auto: bool = True  # False when --threads pinned them
    thread_changes: int = 0  # watchdog steps during this decode


@dataclass(frozen=True)
class Checkpoint:
    """A snapshot of the part of the cache that cannot be trimmed, taken after `n_tokens` tokens.

    llama.cpp's "context checkpoint" (`llama_state_seq_get_data_ext`, PARTIAL_ONLY): the
    recurrent state of a hybrid/recurrent model, or the sliding-window cells of an SWA model.
    Loaded over a full state and followed by a trim to `n_tokens`, it rewinds the cache exactly
    where a plain trim cannot. `load` returns the bytes (kept in RAM, or read and verified
    from a file only when used) and raises StateError when they are damaged or gone.
    """

    n_tokens: int
    pos_min: int
    pos_max: int
    size: int
    load: Callable[[], bytes] = field(repr=False, compare=False)


class Rewind(NamedTuple):
    """How the cache was brought back to a prefix of the next prompt.

    how: "none" (the cache is a prefix already), "trim" (tail removed in place),
    "checkpoint" (restored from a checkpoint, then trimmed) or "clear" (nothing reusable).
    """

    kept: int
    how: str
    problem: str | None = None


_LOG: deque[str] = deque(maxlen=4000)
_log_callback: Any = None
_logged = 0  # lines captured since the process started (the deque keeps the last 4000)


def install_log_capture() -> None:
    """Route llama.cpp's log into a buffer (printed with --debug): its warnings are not ours to show."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def _capture(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        global _logged
        line = text.decode("utf-8", errors="replace")
        _LOG.append(line)
        _logged += 1
        if os.environ.get("EDGECHAT_DEBUG"):
            sys.stderr.write(line)

    _log_callback = _capture  # keep a reference: llama.cpp holds only the pointer
    llama_cpp.llama_log_set(_capture, ctypes.c_void_p(0))


def llama_log(since: int | None = None) -> str:
    """Everything llama.cpp logged in this process (recent lines), e.g. its allocation sizes;
    `since` a `log_position()`: only what came after it."""
    if since is None:
        return "".join(_LOG)
    n = min(len(_LOG), _logged - since)
    return "".join(list(_LOG)[-n:]) if n > 0 else ""


def log_position() -> int:
    """Where llama.cpp's log is now, for `llama_log(since=...)`."""
    return _logged


# llama.cpp pads the device name with "%10s" and the output line with an extra space
# ("CPU  output buffer size"); the recurrent state of hybrids logs as "RS buffer".
_BUFFER_LINE = re.compile(r"(\S+)\s+(model|KV|RS|compute|output) buffer size =\s*([\d.]+) MiB")
_BUFFER_KINDS = ("model", "KV", "RS", "compute", "output")


def logged_buffers(log: str | None = None) -> dict[str, float]:
    """MiB llama.cpp logged allocating at the most recent model load (the planner is checked against it).

    Keys: each kind ("model", "KV", "RS", "compute", "output"), each "kind:device" (e.g.
    "model:CPU_Mapped", "model:CPU_REPACK", "KV:CUDA0"), and "total", the sum of the kinds.
    """
    text = llama_log() if log is None else log
    text = text[text.rfind("llama_model_loader: loaded meta data") :]  # the log spans every load
    out: dict[str, float] = dict.fromkeys(_BUFFER_KINDS, 0.0)
    for device, kind, mib in _BUFFER_LINE.findall(text):
        out[kind] += float(mib)
        out[f"{kind}:{device}"] = out.get(f"{kind}:{device}", 0.0) + float(mib)
    out["total"] = sum(out[k] for k in _BUFFER_KINDS)
    return out


def llama_build() -> str:
    """Identifies the state-file format: it changes between llama.cpp builds."""
    import llama_cpp

    return f"llama-cpp-python {llama_cpp.__version__}"


def common_prefix(a: Iterable[int], b: Iterable[int]) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def supports_gpu_offload() -> bool:
    """Whether layers can leave the CPU: a GPU backend in this build, or RPC servers registered here.

    llama.cpp's own answer is true for every RPC-enabled build, even with no server registered
    (llama.cpp `llama_supports_gpu_offload` ORs in `llama_supports_rpc`), so that case asks
    whether a local GPU device exists.
    """
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        return False
    if not llama_cpp.llama_supports_rpc() or _RPC:
        return True
    lib = _ggml()
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if lib.ggml_backend_dev_type(dev) in (GGML_DEV_GPU, GGML_DEV_IGPU) and not _is_rpc_device(lib, dev):
            return True
    return False


# --- llama.cpp RPC servers as devices (checked first by rpc.py) ----------------------------

# Endpoints registered in this process, in order. ggml keeps registrations for the life of the
# process and registering one twice would list its devices twice, so this is the book.
_RPC: dict[str, tuple[str, ...]] = {}
# ggml-rpc.h RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION of the llama.cpp vendored in each
# llama-cpp-python release (not exported by the library); other versions are asked (see rpc_protocol).
_RPC_PROTOCOLS = {"0.3.36": (7, 0, 0)}
_rpc_protocol: tuple[int, int, int] | None = None
_ggml_lib: Any = None


def _ggml() -> Any:
    """ggml's backend registry as libllama sees it, with the prototypes declared (ggml-backend.h).

    The symbols are looked up through libllama's handle (dlsym searches its dependencies), not
    through `llama_cpp._ggml.libggml`: a wheel cannot hold symlinks, so libggml.so and
    libggml.so.0 are two copies of the library with two registries, and only the one libllama
    loaded (by its SONAME) decides which devices a model is placed on.
    """
    global _ggml_lib
    if _ggml_lib is not None:
        return _ggml_lib
    from llama_cpp import llama_cpp as lc

    lib = lc._lib
    vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    for name, args, res in (
        ("ggml_backend_reg_by_name", [cp], vp),
        ("ggml_backend_reg_get_proc_address", [vp, cp], vp),
        ("ggml_backend_register", [vp], None),
        ("ggml_backend_reg_name", [vp], cp),
        ("ggml_backend_reg_dev_count", [vp], sz),
        ("ggml_backend_reg_dev_get", [vp, sz], vp),
        ("ggml_backend_dev_count", [], sz),
        ("ggml_backend_dev_get", [sz], vp),
        ("ggml_backend_dev_type", [vp], ctypes.c_int),
        ("ggml_backend_dev_backend_reg", [vp], vp),
        ("ggml_backend_dev_name", [vp], cp),
        ("ggml_backend_dev_description", [vp], cp),
        ("ggml_backend_dev_memory", [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    _ggml_lib = lib
    return lib


def _is_rpc_device(lib: Any, dev: int) -> bool:
    reg = lib.ggml_backend_dev_backend_reg(dev)
    return bool(reg) and lib.ggml_backend_reg_name(reg) == b"RPC"


def supports_rpc() -> bool:
    """Whether this llama-cpp-python was built with -DGGML_RPC=on (a plain pip install is not)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_rpc())


def rpc_protocol() -> tuple[int, int, int]:
    """The RPC protocol version this llama.cpp's client speaks: (major, minor, patch).

    Not exported by the library, so: the known value for this llama-cpp-python release, or
    else what this libggml's own server code prints when started in a child process with an
    endpoint it rejects at once ("Starting RPC server vX.Y.Z", ggml_backend_rpc_start_server).
    """
    global _rpc_protocol
    if _rpc_protocol is None:
        import llama_cpp

        _rpc_protocol = _RPC_PROTOCOLS.get(llama_cpp.__version__) or _ask_rpc_protocol()
    return _rpc_protocol


_PROTOCOL_PROBE = """
import ctypes
from llama_cpp import llama_cpp as lc
lib = lc._lib  # dlsym through libllama reaches the libggml it uses
lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]; lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]; lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
reg = lib.ggml_backend_reg_by_name(b"RPC")
start = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_void_p))(lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_start_server"))
devs = (ctypes.c_void_p * 1)(lib.ggml_backend_dev_by_type(0))
start(b"no-port", None, 1, 1, devs)  # prints its version, then refuses the endpoint and returns
"""


def _ask_rpc_protocol() -> tuple[int, int, int]:
    import subprocess

    try:
        out = subprocess.run([sys.executable, "-c", _PROTOCOL_PROBE], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    found = re.search(r"RPC server v(\d+)\.(\d+)\.(\d+)", out)
    if not found:
        raise EdgechatError(
            f"cannot tell which RPC protocol {llama_build()} speaks",
            "install the llama-cpp-python version edgechat pins (see pyproject.toml), built with RPC",
        )
    major, minor, patch = (int(x) for x in found.groups())
    return major, minor, patch


def registered_rpc() -> tuple[str, ...]:
    """The RPC endpoints registered in this process, in order."""
    return tuple(_RPC)


def register_rpc(endpoint: str) -> tuple[str, ...]:
    """Add one checked RPC server to ggml's device list, before any model loads; returns its device names.

    llama.cpp's `add_rpc_devices` (common/arg.cpp) does the same: the RPC registry's
    `ggml_backend_rpc_add_server` connects and lists the server's devices, and registering
    its result makes them devices like any GPU (type GPU, placed first: llama.cpp puts RPC
    devices ahead of local GPUs). Call rpc.connect, not this: a server that cannot be reached
    or speaks another protocol version aborts the process in here.
    """
    if endpoint in _RPC:
        return _RPC[endpoint]
    lib = _ggml()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise ConfigError(f"this llama-cpp-python ({llama_build()}) has no RPC backend", "rebuild it with RPC")
    add = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(
        lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server")
    )
    server = add(endpoint.encode())
    if not server:
        raise EdgechatError(f"RPC server {endpoint} has no devices", "start ggml-rpc-server with a device (-d)")
    lib.ggml_backend_register(server)
    _say_aborts_in_one_line(lib)
    names = tuple(
        (lib.ggml_backend_dev_name(lib.ggml_backend_reg_dev_get(server, i)) or b"RPC").decode()
        for i in range(lib.ggml_backend_reg_dev_count(server))
    )
    _RPC[endpoint] = names
    return names


_abort_callback: Any = None


def _say_aborts_in_one_line(lib: Any) -> None:
    """Make llama.cpp's abort a one-line error: once a model uses an RPC server, a server that
    goes away ends the process (ggml-rpc.cpp RPC_STATUS_ASSERT), and ggml's default is a
    backtrace (through gdb when installed) on the terminal. The process still aborts; what was
    stored (the message, the reply streamed so far) stays."""
    global _abort_callback
    if _abort_callback is not None:
        return

    @ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    def _one_line(message: bytes | None) -> None:
        text = (message or b"").decode(errors="replace")
        text = re.sub(r"^\S+:\d+: ", "", text).strip()  # drop ggml's source file:line
        line = (
            f"error: llama.cpp aborted: {text} — if an RPC server stopped or lost its connection, start it "
            "again and rerun the command; the messages stored so far are kept\n"
        )
        os.write(2, line.encode())

    fn = lib.ggml_set_abort_callback
    fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_void_p
    fn(ctypes.cast(_one_line, ctypes.c_void_p))
    _abort_callback = _one_line  # llama.cpp keeps only the pointer


def rpc_devices() -> tuple[RemoteDevice, ...]:
    """Every RPC device registered in this process with the free memory its server reports now."""
    if not _RPC:
        return ()
    from .rpc import RemoteDevice

    lib = _ggml()
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if not _is_rpc_device(lib, dev):
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        name = (lib.ggml_backend_dev_name(dev) or b"RPC").decode(errors="replace")
        where = (lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace")
        out.append(RemoteDevice(name, where, free.value, total.value))
    return tuple(out)


GGML_DEV_CPU, GGML_DEV_GPU, GGML_DEV_IGPU, GGML_DEV_ACCEL = range(4)  # enum ggml_backend_dev_type


class GgmlDevice(NamedTuple):
    """One device of the llama.cpp build in use, as ggml's backend registry lists it, with its memory now."""

    kind: int  # GGML_DEV_CPU, GGML_DEV_GPU, ...
    description: str
    free: int  # bytes
    total: int


def ggml_devices() -> tuple[GgmlDevice, ...]:
    """Every local device ggml can use (CUDA, ROCm, Vulkan, SYCL..., the CPU too); raises when it
    cannot ask. Devices of RPC servers are left out: `rpc_devices` lists them, with their server."""
    lib = _ggml()
    out: list[GgmlDevice] = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if not dev or _is_rpc_device(lib, dev):
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        desc = (lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace")
        out.append(GgmlDevice(int(lib.ggml_backend_dev_type(dev)), desc, free.value, total.value))
    return tuple(out)


def default_threads() -> int:
    """Physical cores: llama-cpp-python's own default (half the logical CPUs) starves a 2-core box."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001 - any probe failure falls back to os
        n = None
    return max(1, n or os.cpu_count() or 1)


def _validate(settings: EngineSettings) -> None:
    for name, kv in (("K", settings.type_k), ("V", settings.type_v)):
        if kv not in KV_TYPES:
            raise ConfigError(f"unknown {name} cache type {kv!r}", f"use one of {', '.join(KV_TYPES)}")
    if settings.type_v != "f16" and not settings.use_flash_attn:
        raise ConfigError(
            f"a {settings.type_v} V cache needs flash attention, which is turned off",
            "drop --flash-attn off, or use --kv-type f16",
        )
    if settings.n_ctx < 16:
        raise ConfigError(f"context of {settings.n_ctx} tokens is too small", "use --ctx 512 or more")


class Engine:
    """One loaded model with one KV sequence (seq 0), driven token by token."""

    def __init__(
        self, settings: EngineSettings, info: GGUFInfo | None = None, *, cache_dir: Path | None = None
    ) -> None:
        """`cache_dir`: where per-model facts are kept between processes (model_cache.py); None: not kept."""
        _validate(settings)
        # llama.cpp pads n_ctx to a multiple of 256 (llama-context.cpp, n_ctx_seq) but
        # llama-cpp-python sizes its token buffer by the unpadded value: ask for the padded one.
        settings = replace(settings, n_ctx=pad_ctx(settings.n_ctx))
        self.settings = settings
        self.info = info or read_gguf(settings.model_path)
        self.lock = threading.RLock()
        # Before the load, so the first load reading spans it; the choice is re-read per turn.
        self.threads = ThreadControl(self.set_threads, settings.threads)
        import llama_cpp

        install_log_capture()
        self._lc = llama_cpp
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(settings.model_path),
                n_ctx=settings.n_ctx,
                n_batch=min(settings.n_batch, settings.n_ctx),
                n_ubatch=min(settings.n_ubatch, settings.n_batch, settings.n_ctx),
                n_threads=self.threads.choice.decode,
                n_threads_batch=self.threads.choice.prefill,
                n_gpu_layers=settings.gpu_layers,
                type_k=_GGML_TYPE[settings.type_k],
                type_v=_GGML_TYPE[settings.type_v],
                flash_attn=settings.use_flash_attn,
                swa_full=settings.swa_full,
                seed=settings.seed,
                verbose=False,
            )
        except ValueError as exc:
            self.threads.close()
            if "context" in str(exc):
                raise ModelError(
                    f"llama.cpp could not allocate a {settings.n_ctx}-token context for {Path(settings.model_path).name}",
                    "lower --ctx, use --kv-type q8_0, or set --gpu-layers 0",
                ) from exc
            raise ModelError(
                f"llama.cpp could not load {settings.model_path}",
                "the file may be damaged or made for a newer llama.cpp; download it again",
            ) from exc
        self.n_ctx = self.llm.n_ctx()
        self._vocab = self.llm._model.vocab
        self._piece = ctypes.create_string_buffer(64)
        self._memory = llama_cpp.llama_get_memory(self.llm._ctx.ctx)
        model = self.llm._model.model
        self.n_swa = int(llama_cpp.llama_model_n_swa(model))
        if llama_cpp.llama_model_is_recurrent(model):
            self.kind = "recurrent"
        elif llama_cpp.llama_model_is_hybrid(model):
            self.kind = "hybrid"
        elif self.n_swa > 0:
            self.kind = "swa"
        else:
            self.kind = "dense"
        # Snapshots of the untrimmable part of the cache, each at a prefix of cached_tokens.
        self.checkpoints: list[Checkpoint] = []
        self.reloads = 0  # contexts recreated on this model (recreate_context)
        self.context_lost = False
        template = self.info.chat_template
        self.has_chat_template = template is not None
        self._template = _compile_template(template or FALLBACK_TEMPLATE)
        self._system_role: bool | None = None
        self._specials: SpecialTexts | None = None
        self._cache_dir = cache_dir
        self.stops: tuple[str, ...] = () if template else FALLBACK_STOPS
        self._bos = self._token_text(self.llm.token_bos())
        self._eos = self._token_text(self.llm.token_eos())

    def close(self) -> None:
        self.threads.close()
        with self.lock:
            self.llm.close()

    def recreate_context(self, settings: EngineSettings) -> None:
        """Free the llama.cpp context (KV cache, compute buffers) and create a new one with other
        context settings from the same loaded model: the weights are neither read nor copied again.

        What may change: n_ctx, the K/V types, flash attention, swa_full, n_batch/n_ubatch.
        The GPU layer split belongs to the model (a new Engine). The new cache starts empty.
        The old context is freed first, so memory peaks at one context, not two; when the new
        one cannot be allocated, the old settings are restored and ModelError says so (the
        engine stays usable, with an empty cache). `reloads` counts the recreations.
        """
        _validate(settings)
        settings = replace(settings, n_ctx=pad_ctx(settings.n_ctx))
        if (settings.model_path, settings.gpu_layers) != (self.settings.model_path, self.settings.gpu_layers):
            raise EdgechatError(
                "only context settings can change without loading the model again",
                "load the model with the new GPU layers instead (a new Engine)",
            )
        with self.lock:
            old = self.settings
            try:
                self._new_context(settings)
            except ValueError as exc:
                try:
                    self._new_context(old)
                except ValueError:
                    self.context_lost = True  # nothing usable left: the owner must close this engine
                raise ModelError(
                    f"llama.cpp could not allocate a {settings.n_ctx}-token context "
                    f"({settings.type_k}/{settings.type_v} cache)",
                    "free some memory, or lower --ctx",
                ) from exc
            self.settings = settings
            self.reloads += 1

    def _new_context(self, s: EngineSettings) -> None:
        """Swap llama-cpp-python's context for a new one on the same llama_model.

        Llama keeps its context, token buffer and batch as attributes; they are replaced as
        Llama.__init__ makes them. The old LlamaContext is closed here; Llama's exit stack
        closing it again at the end is a no-op, and the new one registered itself on the
        model's stack, so it is freed before the model, as llama.cpp requires.
        """
        import numpy as np
        from llama_cpp import _internals

        llm, lc = self.llm, self._lc
        llm._ctx.close()
        n_batch = min(s.n_batch, s.n_ctx)
        p = llm.context_params
        p.n_ctx = s.n_ctx
        p.n_batch = n_batch
        p.n_ubatch = min(s.n_ubatch, n_batch)
        p.n_threads, p.n_threads_batch = llm.n_threads, llm.n_threads_batch
        p.type_k, p.type_v = _GGML_TYPE[s.type_k], _GGML_TYPE[s.type_v]
        p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if s.use_flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.swa_full = s.swa_full
        llm._ctx = _internals.LlamaContext(model=llm._model, params=p, verbose=llm.verbose)
        if n_batch != llm.n_batch:
            llm._batch.close()
            llm._batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=s.n_ctx, verbose=llm.verbose)
            llm.n_batch = n_batch
        if len(llm.input_ids) != s.n_ctx:
            llm.input_ids = np.ndarray((s.n_ctx,), dtype=np.intc)
        llm._n_ctx = llm.n_ctx()
        llm.n_tokens = 0
        llm._requires_eval = True
        self.n_ctx = llm.n_ctx()
        self._memory = lc.llama_get_memory(llm._ctx.ctx)
        self.checkpoints = []
        self.context_lost = False

    def set_threads(self, decode: int, prefill: int) -> None:
        """Thread counts for single-token decode and for batches, on the live context (no reload).

        llama.cpp picks n_threads for a one-token batch and n_threads_batch otherwise
        (llama_context::graph_compute).
        """
        with self.lock:
            self._lc.llama_set_n_threads(self.llm._ctx.ctx, decode, prefill)
            self.llm.n_threads, self.llm.n_threads_batch = decode, prefill

    # tokens ---------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm._model.token_get_text(token) if hasattr(self.llm._model, "token_get_text") else ""

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids of `text`; `special` parses control-token text (e.g. "<|im_start|>") as control tokens.

        Only template scaffolding may be parsed with special=True: text a person typed is
        tokenized with special=False (chat_tokens does that), or it could open a system turn.
        """
        tokens = self.llm.tokenize(_utf8(text), add_bos=add_bos, special=special)
        bos = self.llm.token_bos()
        # A template that writes bos_token itself plus llama.cpp's automatic BOS gives two.
        if len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
            tokens = tokens[1:]
        return tokens

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token (a UTF-8 character may span several tokens)."""
        n = self._lc.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
            return buf.raw[:n]
        return self._piece.raw[:n]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, add_bos=False, special=False))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def render(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The model's own chat template, rendered in a sandbox (templates are untrusted input).

        A template that refuses a system message (Gemma 2, Mistral v0.1 raise on it) gets
        the system text at the top of the first user message instead, the way those
        models' own chat formats carry it. The render runs under a time and size budget
        (`_render_guarded`): a GGUF's template must not hang the process.
        """
        msgs = [dict(m) for m in messages]
        if msgs and msgs[0].get("role") == "system" and not self.supports_system_role:
            msgs = _system_into_first_user(msgs)
        return self._render_guarded(msgs, add_generation_prompt)

    def _render_guarded(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        content = sum(len(str(m.get("content", ""))) for m in messages)
        limit = RENDER_MAX_CHARS + 4 * content
        try:
            return _render_with_budget(
                self._template,
                dict(
                    messages=messages,
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self._bos,
                    eos_token=self._eos,
                ),
                limit,
                RENDER_TIMEOUT_S,
            )
        except _RenderBudget as exc:
            raise ModelError(
                f"the model's chat template {exc}",
                "the GGUF's chat template is broken or hostile; use another model file",
            ) from None
        except Exception as exc:  # noqa: BLE001 - jinja raises many types
            raise ModelError(
                f"the model's chat template failed: {exc}",
                "the template rejects this conversation; `edgechat generate --raw` completes plain text without it",
            ) from exc

    @property
    def supports_system_role(self) -> bool:
        """Whether the chat template accepts a system message and shows its text (probed once per model)."""
        if self._system_role is None:
            probe = "edgechat-system-probe"
            try:
                out = self._render_guarded(
                    [{"role": "system", "content": probe}, {"role": "user", "content": "hi"}], True
                )
                self._system_role = probe in out
            except ModelError:
                self._system_role = False
        return self._system_role

    def chat_tokens(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        """The rendered conversation as tokens, with typed text kept out of the control tokens.

        The template's scaffolding is tokenized with special=True (its "<|im_start|>" is
        the control token) and message content with special=False, so a message that
        contains "<|im_end|>" stays text and cannot open a turn of its own. Messages free
        of special-token text (nearly all) are tokenized in place, exactly as llama.cpp's
        server would; the others are swapped for markers, rendered, and tokenized apart.
        """
        msgs = [dict(m) for m in messages]
        if msgs and msgs[0].get("role") == "system" and not self.supports_system_role:
            msgs = _system_into_first_user(msgs)
        specials = self._special_texts()
        dirty = {
            i: str(m["content"])
            for i, m in enumerate(msgs)
            if specials and isinstance(m.get("content"), str) and specials.search(m["content"])
        }
        if not dirty:
            return self.tokenize(self._render_guarded(msgs, add_generation_prompt))
        for i in dirty:
            msgs[i]["content"] = f"{_MARK_OPEN}{i}{_MARK_CLOSE}"
        text = self._render_guarded(msgs, add_generation_prompt)
        parts = _MARK_SPLIT.split(text)
        # parts alternate scaffolding, message index, scaffolding, ...: each marker exactly once.
        found = [int(x) for x in parts[1::2]]
        if sorted(found) != sorted(dirty):
            # The template changed the content (sliced or transformed it): neutralize instead.
            for i, content in dirty.items():
                msgs[i]["content"] = specials.neutralize(content)
            return self.tokenize(self._render_guarded(msgs, add_generation_prompt))
        tokens: list[int] = []
        for n, part in enumerate(parts):
            text, special = (dirty[int(part)], False) if n % 2 else (part, True)
            if text:
                tokens += self.tokenize(text, add_bos=not tokens, special=special)
        return tokens

    def _special_texts(self) -> SpecialTexts:
        """The text of every token that special=True parsing turns into a control token."""
        if self._specials is None:
            from . import model_cache

            def compute() -> list[str]:  # one call per vocabulary entry: 0.1-0.2 s on a 262k vocabulary
                lc, vocab = self._lc, self._vocab
                mask = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_USER_DEFINED | lc.LLAMA_TOKEN_ATTR_UNKNOWN
                get_attr = lc.llama_vocab_get_attr
                ids = [tok for tok in range(lc.llama_vocab_n_tokens(vocab)) if get_attr(vocab, tok) & mask]
                return [text for text in map(self._token_text, ids) if len(text) > 1]

            texts = model_cache.special_texts(self.settings.model_path, self._cache_dir, llama_build(), compute)
            self._specials = SpecialTexts(texts)
        return self._specials

    # the KV cache ---------------------------------------------------------------------

    @property
    def cached_tokens(self) -> list[int]:
        return [int(t) for t in self.llm.input_ids[: self.llm.n_tokens]]

    @property
    def n_cached(self) -> int:
        return int(self.llm.n_tokens)

    def common_prefix(self, tokens: Sequence[int]) -> int:
        return common_prefix(self.llm.input_ids[: self.llm.n_tokens], tokens)

    @property
    def uses_checkpoints(self) -> bool:
        """Dense caches trim exactly (and a PARTIAL_ONLY snapshot would copy all of them)."""
        return self.kind != "dense"

    def _pos_min(self) -> int:
        return int(self._lc.llama_memory_seq_pos_min(self._memory, 0))

    def _trim(self, n: int) -> bool:
        """Drop cached tokens from n on; True only when the kept prefix is exactly what a prefill gives.

        `seq_rm` alone cannot be trusted: recurrent state refuses a partial tail (False), and
        an SWA cache says True even when the window cells the next token needs are gone
        (llama-kv-cache-iswa.cpp seq_rm; the cells left are [pos_min, n)). The token at
        position n attends to positions > n - n_swa, so those must all be present.
        """
        if not self._lc.llama_memory_seq_rm(self._memory, 0, n, -1):
            return False
        if self.kind == "swa":
            pos_min = self._pos_min()  # -1: the window is empty, all of it is gone
            if pos_min < 0 or pos_min > max(0, n - self.n_swa + 1):
                return False
        self.llm.n_tokens = n
        return True

    def rewind(self, n: int) -> Rewind:
        """Bring the cache back to its first n tokens (or fewer): trim, else checkpoint, else clear."""
        with self.lock:
            n = max(0, min(n, self.n_cached))
            if n == self.n_cached:
                return Rewind(n, "none")
            if n > 0 and self._trim(n):
                self._drop_checkpoints_after(n)
                return Rewind(n, "trim")
            problem = None
            for ck in reversed(self.checkpoints):
                if ck.n_tokens > n or ck.n_tokens == 0:
                    continue
                try:
                    if self._apply(ck):
                        self._drop_checkpoints_after(ck.n_tokens)
                        return Rewind(ck.n_tokens, "checkpoint")
                    problem = f"llama.cpp refused the checkpoint at {ck.n_tokens} tokens"
                except StateError as exc:
                    problem = exc.message
            self.clear()
            return Rewind(0, "clear", problem)

    def prepare(self, prompt: Sequence[int]) -> Rewind:
        """Make the cache a prefix of `prompt`, keeping as much as is exact.

        At least the last prompt token is always left to evaluate: its logits start the reply
        (state files and checkpoints hold no logits).
        """
        keep = min(self.common_prefix(prompt), len(prompt) - 1)
        return self.rewind(keep)

    def _apply(self, ck: Checkpoint) -> bool:
        """Load a checkpoint over the live cache and trim to it (llama-server's restore recipe)."""
        data = ck.load()
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        flags = self._lc.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
        if not self._lc.llama_state_seq_set_data_ext(self.llm._ctx.ctx, buf, len(data), 0, flags):
            return False
        # The untrimmable part now ends at ck.n_tokens, so the tail removal succeeds.
        return self._trim(ck.n_tokens)

    def snapshot(self) -> Checkpoint:
        """A checkpoint of the cache as it is now (call between decodes, at a token boundary)."""
        with self.lock:
            ctx = self.llm._ctx.ctx
            flags = self._lc.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
            size = self._lc.llama_state_seq_get_size_ext(ctx, 0, flags)
            buf = (ctypes.c_uint8 * size)()
            written = self._lc.llama_state_seq_get_data_ext(ctx, buf, size, 0, flags)
            data = bytes(memoryview(buf)[:written])
            pos_max = int(self._lc.llama_memory_seq_pos_max(self._memory, 0))
            return Checkpoint(self.n_cached, self._pos_min(), pos_max, len(data), lambda: data)

    def _drop_checkpoints_after(self, n: int) -> None:
        self.checkpoints = [ck for ck in self.checkpoints if ck.n_tokens <= n]

    def truncate(self, n: int) -> None:
        """Keep at most the first n cached tokens (fewer when only an earlier point is exact)."""
        self.rewind(n)

    def clear(self) -> None:
        with self.lock:
            self._lc.llama_memory_clear(self._memory, True)
            self.llm.n_tokens = 0
            self.checkpoints = []

    @property
    def can_shift(self) -> bool:
        """Whether compaction may slide the cache. Hybrids report the attention part's answer, but
        their recurrent state would still carry the dropped turns: never shift those."""
        if self.kind in ("hybrid", "recurrent"):
            return False
        return bool(self._lc.llama_memory_can_shift(self._memory))

    def shift_out(self, start: int, end: int) -> None:
        """Remove cached tokens [start, end) and slide the rest left, without re-prefill.

        llama.cpp's context shift: seq_rm then seq_add re-rotates the kept keys (RoPE), so
        only models whose memory says it can shift may use this.
        """
        if not self.can_shift:
            raise EdgechatError("this model's KV cache cannot be shifted")
        with self.lock:
            n = self.n_cached
            end = min(end, n)
            if start >= end:
                return
            delta = end - start
            self._lc.llama_memory_seq_rm(self._memory, 0, start, end)
            self._lc.llama_memory_seq_add(self._memory, 0, end, -1, -delta)
            ids = self.llm.input_ids
            ids[start : n - delta] = ids[end:n].copy()
            self.llm.n_tokens = n - delta
            self.checkpoints = []  # their positions no longer match

    def eval(self, tokens: Sequence[int]) -> None:
        """Prefill tokens after the cached ones."""
        with self.lock:
            if self.n_cached + len(tokens) > self.n_ctx:
                raise EdgechatError(
                    f"{self.n_cached + len(tokens)} tokens do not fit the {self.n_ctx}-token context",
                    "raise --ctx or shorten the input",
                )
            self.llm.eval(list(tokens))

    def next_logits(self) -> list[float]:
        """The logits the last evaluated token left (what the next token is sampled from)."""
        with self.lock:
            n_vocab = self._lc.llama_vocab_n_tokens(self._vocab)
            ptr = self._lc.llama_get_logits_ith(self.llm._ctx.ctx, -1)
            return [float(ptr[i]) for i in range(n_vocab)]

    def kv_bytes(self) -> int:
        """Bytes the KV cache occupies for the tokens now cached (what a state save writes)."""
        return int(self._lc.llama_state_seq_get_size(self.llm._ctx.ctx, 0))

    # generation -----------------------------------------------------------------------

    def generate(
        self,
        prompt: Sequence[int],
        sampling: SamplingSettings,
        *,
        stop: threading.Event | None = None,
        stop_strings: Sequence[str] = (),
        on_prefill_done: Callable[[int], None] | None = None,
        checkpoint_at: Sequence[int] = (),
    ) -> Generation:
        """Reuse the longest cached prefix of `prompt`, prefill the rest, then stream.

        `checkpoint_at`: token counts where a later turn may diverge (the last user message,
        the generation header); on models that need them, checkpoints are taken there during
        prefill and become the engine's set (older ones are dropped).
        """
        return Generation(
            self, list(prompt), sampling, stop, tuple(stop_strings) + self.stops, on_prefill_done, tuple(checkpoint_at)
        )

    # state ----------------------------------------------------------------------------

    def save_state(self, path: Path) -> None:
        """Write seq 0 with llama.cpp's own writer (no logits copied through Python)."""
        with self.lock:
            tokens = self.cached_tokens
            # A Ctrl-C inside Llama.eval can land after llama_decode and before n_tokens moves:
            # drop any cells past n_tokens so the file holds exactly the tokens its header lists.
            self._lc.llama_memory_seq_rm(self._memory, 0, len(tokens), -1)
            arr = (self._lc.llama_token * max(1, len(tokens)))(*tokens)
            written = self._lc.llama_state_seq_save_file(self.llm._ctx.ctx, os.fsencode(path), 0, arr, len(tokens))
        # llama_file buffers through stdio: a full disk can surface only as a short file.
        if written == 0 or not path.exists() or path.stat().st_size != written:
            raise OSError(28, "llama.cpp could not write the whole state file (disk full?)")

    def load_state(self, path: Path, expected: Sequence[int], checkpoints: Sequence[Checkpoint] = ()) -> None:
        """Restore seq 0 from a state file; on any failure the cache is left empty and in sync."""
        with self.lock:
            self.clear()
            cap = self.n_ctx
            arr = (self._lc.llama_token * cap)()
            n_out = ctypes.c_size_t(0)
            read = self._lc.llama_state_seq_load_file(
                self.llm._ctx.ctx, os.fsencode(path), 0, arr, cap, ctypes.byref(n_out)
            )
            tokens = list(arr[: n_out.value])
            if read == 0:
                self.clear()
                raise StateError("llama.cpp refused the state file")
            if tokens != list(expected):
                self.clear()
                raise StateError("state file tokens differ from its header")
            self._adopt(tokens, checkpoints)

    def state_bytes(self) -> bytes:
        """Seq 0 as bytes, for the in-RAM LRU of recent conversations."""
        with self.lock:
            ctx = self.llm._ctx.ctx
            size = self._lc.llama_state_seq_get_size(ctx, 0)
            buf = (ctypes.c_uint8 * size)()
            n = self._lc.llama_state_seq_get_data(ctx, buf, size, 0)
            return bytes(memoryview(buf)[:n])

    def set_state_bytes(self, data: bytes, tokens: Sequence[int], checkpoints: Sequence[Checkpoint] = ()) -> None:
        with self.lock:
            self.clear()
            buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
            if not self._lc.llama_state_seq_set_data(self.llm._ctx.ctx, buf, len(data), 0):
                self.clear()
                raise StateError("llama.cpp refused the cached state")
            self._adopt(list(tokens), checkpoints)

    def _adopt(self, tokens: list[int], checkpoints: Sequence[Checkpoint]) -> None:
        # Restored states hold no logits: mark for re-eval so at least one token runs again.
        self.llm.input_ids[: len(tokens)] = tokens
        self.llm.n_tokens = len(tokens)
        self.llm._requires_eval = True
        self.checkpoints = sorted((ck for ck in checkpoints if ck.n_tokens <= len(tokens)), key=lambda c: c.n_tokens)


class AllLogitsDecoder:
    """Decodes consecutive chunks into an engine's seq 0 keeping the logits of every token (kv-eval).

    `Engine` keeps only the last row, which is all generation needs; perplexity and KL need
    a row per position, so this builds its own `llama_batch` with every logits flag set and
    reads `llama_get_logits` directly. It bypasses the engine's token bookkeeping, so the
    engine is cleared when it starts and again at `close`.
    """

    def __init__(self, engine: Engine, capacity: int) -> None:
        self.engine = engine
        self.n_vocab = int(engine.llm.n_vocab())
        self.capacity = capacity
        self._batch = engine._lc.llama_batch_init(capacity, 0, 1)
        self.seconds = 0.0  # time spent in llama_decode
        engine.clear()

    def decode(self, tokens: Sequence[int], start: int) -> npt.NDArray[np.float32]:
        """Logits rows for tokens at positions start.., valid until this context's next decode."""
        import numpy as np

        b = self._batch
        n = len(tokens)
        if n > self.capacity:
            raise ValueError(f"chunk of {n} tokens exceeds the batch of {self.capacity}")
        b.n_tokens = n
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1
        ctx = self.engine.llm._ctx.ctx
        t0 = time.perf_counter()
        rc = self.engine._lc.llama_decode(ctx, b)
        self.seconds += time.perf_counter() - t0
        if rc != 0:
            raise EdgechatError(f"llama_decode failed ({rc}) at position {start}", "lower --tokens or --ctx")
        rows: npt.NDArray[np.float32] = np.ctypeslib.as_array(
            self.engine._lc.llama_get_logits(ctx), shape=(n, self.n_vocab)
        )
        return rows

    def close(self) -> None:
        self.engine._lc.llama_batch_free(self._batch)
        self.engine.clear()  # decode() bypassed the engine's n_tokens: leave it empty and in sync


class Generation:
    """An iterator of text pieces; `stats`, `text` and `tokens` are set as it runs."""

    def __init__(
        self,
        engine: Engine,
        prompt: list[int],
        sampling: SamplingSettings,
        stop: threading.Event | None,
        stop_strings: tuple[str, ...],
        on_prefill_done: Callable[[int], None] | None,
        checkpoint_at: tuple[int, ...] = (),
    ) -> None:
        self.engine = engine
        self.checkpoint_at = checkpoint_at
        self.rewind: Rewind | None = None
        self.prompt = prompt
        self.sampling = sampling
        self.stop = stop
        self.stop_strings = stop_strings
        self.on_prefill_done = on_prefill_done
        self.tokens: list[int] = []
        self.text = ""
        self.stats: GenerationStats | None = None
        self.prefill_tokens = 0

    def __iter__(self) -> Iterator[str]:
        eng = self.engine
        llm = eng.llm
        lc = eng._lc
        s = self.sampling
        t0 = time.perf_counter()
        if len(self.prompt) >= eng.n_ctx:
            raise EdgechatError(
                f"the prompt is {len(self.prompt)} tokens; the context holds {eng.n_ctx}",
                "raise --ctx or shorten the prompt",
            )
        with eng.lock:
            self.rewind = eng.prepare(self.prompt)
            keep = eng.n_cached
            todo = self.prompt[keep:]
            self.prefill_tokens = len(todo)
            llm.set_seed(s.seed)
            sampler = make_sampler(llm, s, eng.n_ctx)
            eng.threads.before_prefill()
            self._prefill(todo)
            t_prefill = time.perf_counter()
            if self.on_prefill_done:
                self.on_prefill_done(len(todo))
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            finish = "length"
            ttft = 0.0
            latencies: list[float] = []
            last = t_prefill
            max_new = min(s.max_tokens, eng.n_ctx - eng.n_cached)
            pending = ""
            hold = max((len(x) for x in self.stop_strings), default=0)
            guard = LoopGuard(s.loop_repeats, eng.detokenize) if s.loop_guard else None
            while len(self.tokens) < max_new:
                if self.stop is not None and self.stop.is_set():
                    finish = "cancelled"
                    break
                token = sampler.sample(llm._ctx, -1)
                now = time.perf_counter()
                if not self.tokens:
                    ttft = now - t0
                else:
                    latencies.append(now - last)
                    eng.threads.on_token(now - last)
                last = now
                if lc.llama_vocab_is_eog(eng._vocab, token):
                    finish = "stop"
                    break
                self.tokens.append(token)
                piece = decoder.decode(eng.token_bytes(token))
                pending += piece
                cut = _find_stop(pending, self.stop_strings)
                if cut is not None:
                    pending = pending[:cut]
                    finish = "stop"
                    if pending:
                        self.text += pending
                        yield pending
                    pending = ""
                    break
                # Hold back a possible stop-string prefix until it is decided.
                safe = len(pending) - hold if hold else len(pending)
                if safe > 0:
                    out, pending = pending[:safe], pending[safe:]
                    self.text += out
                    yield out
                if guard is not None and guard.add(token):
                    finish = "repetition"  # the same span again and again: end it, say so
                    break
                if len(self.tokens) < max_new and eng.n_cached < eng.n_ctx:
                    llm.eval([token])
            tail = pending + decoder.decode(b"", final=True)
            if tail and finish != "stop":
                self.text += tail
                yield tail
            t_end = time.perf_counter()
        n = len(self.tokens)
        decode_s = t_end - t_prefill - (ttft - (t_prefill - t0)) if n else 0.0
        self.stats = GenerationStats(
            prompt_tokens=len(self.prompt),
            prefill_tokens=self.prefill_tokens,
            completion_tokens=n,
            ttft_s=ttft if n else t_end - t0,
            decode_tokens_per_s=(len(latencies) / sum(latencies)) if latencies else 0.0,
            prefill_s=t_prefill - t0,
            decode_s=decode_s,
            finish_reason=finish,
            token_latencies_s=tuple(latencies),
            decode_threads=int(llm.n_threads),  # what the context ran with, however it was set
            prefill_threads=int(llm.n_threads_batch),
            threads_auto=eng.threads.choice.auto,
            thread_changes=eng.threads.changes,
        )
        if finish == "cancelled" and self.stop is not None and not n:
            raise Cancelled("stopped before the first token")

    def _prefill(self, todo: list[int]) -> None:
        """Prefill in n_batch chunks so a stop request lands between chunks; checkpoint on the way."""
        eng = self.engine
        start = eng.n_cached
        wanted = sorted(set(self.checkpoint_at)) if eng.uses_checkpoints else []
        # Checkpoints already held at wanted points stay; the rest are from older turns.
        eng.checkpoints = [ck for ck in eng.checkpoints if ck.n_tokens in wanted]
        # A checkpoint must leave at least one prompt token to decode: it holds no logits.
        cuts = [b - start for b in wanted if start < b < len(self.prompt)]
        step = eng.llm.n_batch
        i = 0
        while i < len(todo):
            if self.stop is not None and self.stop.is_set():
                raise Cancelled("stopped during prefill")
            j = min([i + step, len(todo), *(c for c in cuts if c > i)])
            eng.eval(todo[i:j])
            i = j
            if i in cuts:
                eng.checkpoints.append(eng.snapshot())

    def run(self) -> str:
        for _ in self:
            pass
        return self.text


# DRY's sequence breakers, llama.cpp's defaults (common.h): a repeat never spans one of these.
DRY_BREAKERS = ("\n", ":", '"', "*")


def make_sampler(llm: Any, s: SamplingSettings, n_ctx: int) -> Any:
    """llama.cpp's sampler chain for `s`, in common_sampler's order: penalties, DRY, then
    greedy, or top-k, top-p, min-p, temperature and a seeded draw.

    Built here rather than with Llama._init_sampler, which has no DRY stage.
    The chain accepts each token it samples, so the penalties see the reply, not the prompt.
    """
    from llama_cpp._internals import LlamaSampler

    chain = LlamaSampler()
    if s.repeat_penalty != 1.0 or s.presence_penalty or s.frequency_penalty:
        last_n = n_ctx if s.repeat_last_n < 0 else s.repeat_last_n
        chain.add_penalties(llm.n_vocab(), last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty)
    if s.dry_multiplier > 0:
        last_n = n_ctx if s.dry_last_n < 0 else s.dry_last_n
        chain.add_dry(llm._model, s.dry_multiplier, s.dry_base, s.dry_allowed_length, last_n, list(DRY_BREAKERS))
    if s.temperature <= 0:
        chain.add_greedy()
    else:
        chain.add_top_k(s.top_k)
        chain.add_top_p(s.top_p, 1)
        chain.add_min_p(s.min_p, 1)
        chain.add_temp(s.temperature)
        chain.add_dist(s.seed)
    return chain


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


# A chat template is code from the model file: its render gets a time and size budget.
RENDER_TIMEOUT_S = 5.0
RENDER_MAX_CHARS = 1 << 20  # beyond 4x the messages' own text
# Markers that stand for a message's content while the template renders (private-use code points).
_MARK_OPEN, _MARK_CLOSE = "\ue000edgechat:", "\ue001"
_MARK_SPLIT = re.compile(re.escape(_MARK_OPEN) + r"(\d+)" + re.escape(_MARK_CLOSE))


# A format width of seven digits or more ("%9999999s", "{:>9999999}").
_HUGE_WIDTH = re.compile(r"[%:][^%:{}\s]{0,8}?\d{7,}")


class _RenderBudget(Exception):
    """A template render ran past its time or size budget."""


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A str holds lone surrogates when it came from bytes that are not UTF-8 (argv, a pipe).
        bad = text[exc.start : exc.end]
        raise EdgechatError(
            f"the text is not valid UTF-8 (character {exc.start + 1} is {bad.encode('utf-8', 'surrogateescape')!r})",
            "convert it to UTF-8 first, e.g. iconv -f latin1 -t utf-8",
        ) from None


def _system_into_first_user(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Carry a leading system message in the first user turn, for templates without a system role."""
    system, rest = messages[0], messages[1:]
    text = str(system.get("content", ""))
    if not text:
        return rest
    for m in rest:
        if m.get("role") == "user":
            m["content"] = f"{text}\n\n{m.get('content', '')}"
            return rest
    return [{"role": "user", "content": text}, *rest]


def _render_with_budget(template: Any, context: dict[str, Any], limit: int, timeout_s: float) -> str:
    """Render in a worker thread, stopping it when it runs past `timeout_s` or `limit` characters.

    Python cannot kill a thread, but it can raise an exception inside one between two
    bytecodes (PyThreadState_SetAsyncExc): the runaway loop of a hostile template is
    compiled Python, so it stops there. The size limit is checked as output streams out.
    """
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            out: list[str] = []
            size = 0
            for piece in template.generate(**context):
                size += len(piece)
                if size > limit:
                    raise _RenderBudget(f"produced more than {limit:,} characters")
                out.append(piece)
            result["text"] = "".join(out)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result["error"] = exc

    worker = threading.Thread(target=work, name="edgechat-template", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        ident = worker.ident
        if ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(_RenderBudget))
        worker.join(1.0)
        raise _RenderBudget(f"took more than {timeout_s:g} s to render")
    if "error" in result:
        raise result["error"]
    return str(result["text"])


def _compile_template(source: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    class _Env(ImmutableSandboxedEnvironment):  # type: ignore[misc]
        # "x" * 10**9, 2 ** 10**9, "%999999999s" % x or "x".center(10**9) would allocate or
        # compute for ever inside one bytecode, out of the watchdog's reach: bound them first.
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > RENDER_MAX_CHARS:
                        raise _RenderBudget(f"tried to build a sequence of {len(seq) * n:,} items")
            if operator == "**" and isinstance(right, int) and abs(right) > 1024:
                raise _RenderBudget(f"tried to compute a power of {right:,}")
            joined = isinstance(left, (str, list)) and isinstance(right, (str, list))
            if operator == "+" and joined and len(left) + len(right) > 64 * RENDER_MAX_CHARS:
                raise _RenderBudget("tried to build a sequence past the size budget")
            if operator == "%" and isinstance(left, str) and _HUGE_WIDTH.search(left):
                raise _RenderBudget("used a format width past the size budget")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            for value in (*args, *kwargs.values()):
                if isinstance(value, int) and not isinstance(value, bool) and abs(value) > RENDER_MAX_CHARS:
                    raise _RenderBudget("passed a size past the budget to a function")
            owner = getattr(__obj, "__self__", None)
            is_format = isinstance(owner, str) and getattr(__obj, "__name__", "") in ("format", "format_map")
            if is_format and _HUGE_WIDTH.search(str(owner)):
                raise _RenderBudget("used a format width past the size budget")
            return super().call(__context, __obj, *args, **kwargs)

    env = _Env(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    with contextlib.suppress(Exception):
        env.filters.setdefault("tojson", env.filters.get("tojson"))
    return env.from_string(source)
