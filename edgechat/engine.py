"""The only module that imports llama_cpp: load, template, prefix reuse, stream, KV edits, state files.

It owns one `llama_cpp.Llama` and keeps `input_ids`/`n_tokens` in step with the KV cache
after every manual edit, because llama-cpp-python trusts them blindly.
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import KV_TYPES, EngineSettings, SamplingSettings
from .errors import Cancelled, ConfigError, EdgechatError, ModelError, StateError
from .gguf_info import GGUFInfo, read_gguf
from .loop_guard import LoopGuard

CTX_PAD = 256
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


_LOG: deque[str] = deque(maxlen=4000)
_log_callback: Any = None


def install_log_capture() -> None:
    """Route llama.cpp's log into a buffer (printed with --debug): its warnings are not ours to show."""
    global _log_callback
    if _log_callback is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def _capture(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", errors="replace")
        _LOG.append(line)
        if os.environ.get("EDGECHAT_DEBUG"):
            sys.stderr.write(line)

    _log_callback = _capture  # keep a reference: llama.cpp holds only the pointer
    llama_cpp.llama_log_set(_capture, ctypes.c_void_p(0))


def llama_log() -> str:
    """Everything llama.cpp logged in this process (recent lines), e.g. its allocation sizes."""
    return "".join(_LOG)


_BUFFER_LINE = re.compile(r"(\S+) (model|KV|compute|output) buffer size =\s*([\d.]+) MiB")


def logged_buffers(log: str | None = None) -> dict[str, float]:
    """MiB llama.cpp logged allocating at the most recent model load (the planner is checked against it).

    Keys: each kind ("model", "KV", "compute", "output"), each "kind:device" (e.g.
    "model:CPU_Mapped", "KV:CUDA0"), and "total", the sum of the kinds.
    """
    text = llama_log() if log is None else log
    text = text[text.rfind("llama_model_loader: loaded meta data") :]  # the log spans every load
    out: dict[str, float] = {"model": 0.0, "KV": 0.0, "compute": 0.0, "output": 0.0}
    for device, kind, mib in _BUFFER_LINE.findall(text):
        out[kind] += float(mib)
        out[f"{kind}:{device}"] = out.get(f"{kind}:{device}", 0.0) + float(mib)
    out["total"] = out["model"] + out["KV"] + out["compute"] + out["output"]
    return out


def llama_build() -> str:
    """Identifies the state-file format: it changes between llama.cpp builds."""
    import llama_cpp

    return f"llama-cpp-python {llama_cpp.__version__}"


def supports_gpu_offload() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


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

    def __init__(self, settings: EngineSettings, info: GGUFInfo | None = None) -> None:
        _validate(settings)
        # llama.cpp pads n_ctx to a multiple of 256 (llama-context.cpp, n_ctx_seq) but
        # llama-cpp-python sizes its token buffer by the unpadded value: ask for the padded one.
        settings = replace(settings, n_ctx=-(-settings.n_ctx // CTX_PAD) * CTX_PAD)
        self.settings = settings
        self.info = info or read_gguf(settings.model_path)
        self.lock = threading.RLock()
        import llama_cpp

        install_log_capture()
        self._lc = llama_cpp
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(settings.model_path),
                n_ctx=settings.n_ctx,
                n_batch=min(settings.n_batch, settings.n_ctx),
                n_ubatch=min(settings.n_ubatch, settings.n_batch, settings.n_ctx),
                n_threads=settings.threads or default_threads(),
                n_gpu_layers=settings.gpu_layers,
                type_k=_GGML_TYPE[settings.type_k],
                type_v=_GGML_TYPE[settings.type_v],
                flash_attn=settings.use_flash_attn,
                swa_full=settings.swa_full,
                seed=settings.seed,
                verbose=False,
            )
        except ValueError as exc:
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
        template = self.info.chat_template
        self.has_chat_template = template is not None
        self._template = _compile_template(template or FALLBACK_TEMPLATE)
        self.stops: tuple[str, ...] = () if template else FALLBACK_STOPS
        self._bos = self._token_text(self.llm.token_bos())
        self._eos = self._token_text(self.llm.token_eos())

    def close(self) -> None:
        with self.lock:
            self.llm.close()

    # tokens ---------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm._model.token_get_text(token) if hasattr(self.llm._model, "token_get_text") else ""

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)
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
        """The model's own chat template, rendered in a sandbox (templates are untrusted input)."""
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except Exception as exc:  # noqa: BLE001 - jinja raises many types
            raise ModelError(f"the model's chat template failed: {exc}", "use --raw for plain completion") from exc

    def chat_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return self.tokenize(self.render(messages))

    # the KV cache ---------------------------------------------------------------------

    @property
    def cached_tokens(self) -> list[int]:
        return [int(t) for t in self.llm.input_ids[: self.llm.n_tokens]]

    @property
    def n_cached(self) -> int:
        return int(self.llm.n_tokens)

    def common_prefix(self, tokens: Sequence[int]) -> int:
        n = 0
        for a, b in zip(self.llm.input_ids[: self.llm.n_tokens], tokens, strict=False):
            if a != b:
                break
            n += 1
        return n

    def truncate(self, n: int) -> None:
        """Keep the first n cached tokens; drop the rest from the KV cache."""
        with self.lock:
            n = max(0, min(n, self.n_cached))
            if n == 0:
                self.clear()
                return
            if not self._lc.llama_memory_seq_rm(self._memory, 0, n, -1):
                self.clear()
                return
            self.llm.n_tokens = n

    def clear(self) -> None:
        with self.lock:
            self._lc.llama_memory_clear(self._memory, True)
            self.llm.n_tokens = 0

    @property
    def can_shift(self) -> bool:
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

    def eval(self, tokens: Sequence[int]) -> None:
        """Prefill tokens after the cached ones."""
        with self.lock:
            if self.n_cached + len(tokens) > self.n_ctx:
                raise EdgechatError(
                    f"{self.n_cached + len(tokens)} tokens do not fit the {self.n_ctx}-token context",
                    "raise --ctx or shorten the input",
                )
            self.llm.eval(list(tokens))

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
    ) -> Generation:
        """Reuse the longest cached prefix of `prompt`, prefill the rest, then stream."""
        return Generation(self, list(prompt), sampling, stop, tuple(stop_strings) + self.stops, on_prefill_done)

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

    def load_state(self, path: Path, expected: Sequence[int]) -> None:
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
            self._adopt(tokens)

    def state_bytes(self) -> bytes:
        """Seq 0 as bytes, for the in-RAM LRU of recent conversations."""
        with self.lock:
            ctx = self.llm._ctx.ctx
            size = self._lc.llama_state_seq_get_size(ctx, 0)
            buf = (ctypes.c_uint8 * size)()
            n = self._lc.llama_state_seq_get_data(ctx, buf, size, 0)
            return bytes(memoryview(buf)[:n])

    def set_state_bytes(self, data: bytes, tokens: Sequence[int]) -> None:
        with self.lock:
            self.clear()
            buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
            if not self._lc.llama_state_seq_set_data(self.llm._ctx.ctx, buf, len(data), 0):
                self.clear()
                raise StateError("llama.cpp refused the cached state")
            self._adopt(list(tokens))

    def _adopt(self, tokens: list[int]) -> None:
        # Restored states hold no logits: mark for re-eval so at least one token runs again.
        self.llm.input_ids[: len(tokens)] = tokens
        self.llm.n_tokens = len(tokens)
        self.llm._requires_eval = True


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
    ) -> None:
        self.engine = engine
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
            keep = eng.common_prefix(self.prompt)
            if keep == len(self.prompt):
                keep -= 1  # logits are not cached: re-run the last prompt token
            eng.truncate(keep)
            keep = eng.n_cached
            todo = self.prompt[keep:]
            self.prefill_tokens = len(todo)
            llm.set_seed(s.seed)
            sampler = make_sampler(llm, s, eng.n_ctx)
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
        )
        if finish == "cancelled" and self.stop is not None and not n:
            raise Cancelled("stopped before the first token")

    def _prefill(self, todo: list[int]) -> None:
        """Prefill in n_batch chunks so a stop request lands between chunks."""
        eng = self.engine
        step = eng.llm.n_batch
        for i in range(0, len(todo), step):
            if self.stop is not None and self.stop.is_set():
                raise Cancelled("stopped during prefill")
            eng.eval(todo[i : i + step])

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


def _compile_template(source: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    with contextlib.suppress(Exception):
        env.filters.setdefault("tojson", env.filters.get("tojson"))
    return env.from_string(source)
