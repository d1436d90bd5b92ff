"""The turn pipeline, shared by the CLI, the UI and the Python API.

    message ─► restore (memory ▸ state file ▸ transcript) ─► budget (compact if needed)
            ─► prefill only what the cache lacks ─► stream ─► store the turn ─► save KV state

The transcript in SQLite is the truth; the live KV cache, the in-RAM LRU and the state
files are three caches of it, checked token by token before use. (One exception: after a
truncate-policy KV shift the cached values also carry the dropped turns' influence, so a
rebuild from the transcript may answer differently; see TurnStream._shift.)
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from . import compaction as compact
from . import model_cache, testhooks
from .config import (
    SAMPLING_KEYS,
    EngineOptions,
    EngineSettings,
    SamplingSettings,
    check_sampling,
    load_defaults,
    local_model_file,
    parse_gpu_layers,
    resolve_paths,
)
from .engine import Engine, Generation, common_prefix
from .errors import BudgetError, BusyError, Cancelled, EdgechatError, ModelError
from .gguf_info import GGUFInfo
from .lock import ConversationLock
from .memory import MemorySnapshot, anon_rss
from .pressure import Decision, PressureOptions, Reading, Replan, Replanner, Watcher
from .pressure import read as read_memory
from .shutdown import StopEvent  # noqa: F401 - part of the API: a stop flag with a reason
from .state import StateFiles, model_fingerprint
from .state_cache import StateCache
from .store import ConversationRecord, Message, NewMessage, Store

if TYPE_CHECKING:
    from .rpc import RemoteDevice

Notice = Callable[[str], None]
# A streaming reply is written to the store this often (whichever comes first), so a process
# that dies loses at most this much of it (scripts/bench_stream_writes.py: the cost to decode).
STREAM_WRITE_S = 0.5
STREAM_WRITE_TOKENS = 32


@dataclass(frozen=True)
class TurnStats:
    """One turn's figures: exactly the `send --json` fields (plus `reply`, added by Reply.to_json)."""

    conversation_id: str
    restored_from: str  # new | memory | state | checkpoint | transcript: what really supplied the cache
    prefill_tokens: int
    completion_tokens: int
    context_tokens: int
    context_limit: int
    compacted: bool
    ttft_s: float
    decode_tokens_per_s: float
    kv_type: str
    finish_reason: str
    restore_s: float
    compaction_s: float
    state_save_s: float
    state_bytes: int
    model: str
    decode_threads: int = 0  # CPU threads: chosen from the machine's load unless --threads pinned them
    prefill_threads: int = 0
    threads_auto: bool = True
    sampling: dict[str, Any] = field(default_factory=dict)  # the effective SamplingSettings
    reused_tokens: int = 0  # prompt tokens the cache already held (not prefilled)
    prefill_saved_s: float = 0.0  # their prefill time at this machine's measured rate (0: not measured yet)
    # A re-plan of the live context under memory pressure since the last turn (pressure.Replan
    # as JSON: reason, ctx_before, ctx_after, kv_before, kv_after, seconds, ...), else None.
    replan: dict[str, Any] | None = None


@dataclass(frozen=True)
class Reply:
    text: str
    stats: TurnStats
    notices: tuple[str, ...] = ()
    compaction: compact.Compaction | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self.stats)
        return {"conversation_id": data.pop("conversation_id"), "reply": self.text, **data}


@dataclass(frozen=True)
class GenerateResult:
    """The `generate --json` fields."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    decode_tokens_per_s: float
    kv_type: str
    finish_reason: str
    prefill_tokens: int
    decode_threads: int = 0
    prefill_threads: int = 0
    threads_auto: bool = True
    sampling: dict[str, Any] = field(default_factory=dict)  # the effective SamplingSettings


def kv_label(settings: EngineSettings) -> str:
    return settings.type_k if settings.type_k == settings.type_v else f"{settings.type_k}/{settings.type_v}"


class Runtime:
    """A loaded model plus the conversation store: what scripts and the UI hold on to.

    Engine options come as one `EngineOptions` value (`options=`) or as the keywords the API
    has always taken (`kv_type=`, `ctx=`, ...); keywords beat the value's fields.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        options: EngineOptions | None = None,
        home: str | Path | None = None,
        kv_type: str | None = None,
        type_k: str | None = None,
        type_v: str | None = None,
        ctx: int | None = None,
        gpu_layers: str | int | None = None,
        threads: int | None = None,
        budget_mb: int | None = None,
        compaction: str | None = None,
        flash_attn: bool | None = None,
        swa_full: bool | None = None,
        state_budget_mb: int | None = None,
        system_prompt: str | None = None,
        download: bool = True,
        lock_timeout_s: float | None = None,
        on_notice: Notice | None = None,
        sampling: dict[str, Any] | None = None,
        rpc: str | Sequence[str] | None = None,
        rpc_allow_public: bool | None = None,
        pressure: PressureOptions | None = None,
    ) -> None:
        # What the caller asked for; `load` adds config.toml's choices where these leave one open.
        self.asked = (options or EngineOptions()).given(
            model=model, kv_type=kv_type, type_k=type_k, type_v=type_v, ctx=ctx, gpu_layers=gpu_layers,
            threads=threads, budget_mb=budget_mb, compaction=compaction, flash_attn=flash_attn, swa_full=swa_full,
            rpc=rpc, rpc_allow_public=rpc_allow_public,
            state_budget_mb=state_budget_mb,
        )  # fmt: skip
        self._home = home
        self.paths = resolve_paths(home)
        self.defaults = load_defaults(self.paths)
        self.options = self.asked.over(self.defaults)
        self.model_spec = canonical_spec(self.options.model or _registry_default(self.paths))
        # What new conversations start with; a turn of an older conversation may load its
        # own model (model_spec follows the loaded one), but that does not change this.
        self.default_model = self.model_spec
        self.explicit_model = self.asked.model is not None  # an explicit -m beats a conversation's own model
        self._system_prompt = system_prompt
        self.system_prompt = self.defaults.system_prompt if system_prompt is None else system_prompt
        self.download = download
        self.lock_timeout_s = (
            lock_timeout_s if lock_timeout_s is not None else float(os.environ.get("EDGECHAT_LOCK_TIMEOUT", "30"))
        )
        self.on_notice: Notice = on_notice or (lambda _msg: None)
        # Sampling given when the runtime was made (e.g. `chat --temperature 0`): beats config and conversations.
        self.sampling_overrides = check_sampling(
            {k: v for k, v in (sampling or {}).items() if v is not None}, "sampling"
        )
        # llama.cpp RPC servers (options.rpc: `--rpc`, config.toml `rpc`) are registered at the first load.
        self.remote_devices: tuple[RemoteDevice, ...] = ()
        self.store = Store(self.paths.db_path)
        self.states = StateFiles(self.paths.states_dir)
        self.cache = StateCache(
            self.states, lambda msg: self.on_notice(msg), budget_mb=self.options.state_budget_mb,
            lock_dir=self.paths.data_dir / "locks",
        )  # fmt: skip
        self.engine: Engine | None = None
        self.model_name = ""
        self.plan: Any = None
        self._turn_lock = threading.RLock()
        self._streaming: object | None = None  # the turn or generation now holding the live cache
        # Memory pressure (pressure.py): the floor and hold-off, the plan the model was loaded
        # with (the ceiling for growing back), the last reading, the re-plans made.
        self.watcher = Watcher(pressure or PressureOptions.from_env())
        self.base_plan: Any = None
        self.memory: Reading | None = None
        self.replans: list[Replan] = []
        self._unreported: Replan | None = None  # made between turns: the next turn's stats carry it
        self._told_stuck = False
        self._held_before: int | None = None

    def with_options(self, **changed: Any) -> Runtime:
        """A new runtime like this one (home, notices, sampling, system prompt) whose asked-for
        engine options differ by `changed`: how the UI reloads with other settings."""
        return Runtime(
            options=replace(self.asked, **changed), home=self._home, system_prompt=self._system_prompt,
            download=self.download, lock_timeout_s=self.lock_timeout_s, on_notice=self.on_notice,
            sampling=self.sampling_overrides, pressure=self.pressure,
        )  # fmt: skip

    def refresh_defaults(self) -> None:
        """Re-read config.toml (the user saved new defaults): options and the system prompt follow
        it from the next load and the next new conversation."""
        self.defaults = load_defaults(self.paths)
        self.options = self.asked.over(self.defaults)
        self.cache.budget_mb = self.options.state_budget_mb
        if self._system_prompt is None:
            self.system_prompt = self.defaults.system_prompt

    @property
    def pressure(self) -> PressureOptions:
        """How memory is watched (floor, hold-off, margin): EDGECHAT_MEMORY_FLOOR_MB and friends, or
        `Runtime(pressure=...)`; assigning a new value takes effect at the next look."""
        return self.watcher.options

    @pressure.setter
    def pressure(self, options: PressureOptions) -> None:
        self.watcher.options = options

    @property
    def explicit_compaction(self) -> str | None:
        """A compaction policy given for this runtime beats the one a conversation stored."""
        return self.asked.compaction

    @property
    def compaction(self) -> str:
        return self.options.compaction or "summarize"

    # what the UI and the server show -----------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    @property
    def kv_type(self) -> str:
        """The KV cache type in use, or as asked for before a model is loaded ("auto": the planner picks)."""
        return kv_label(self.engine.settings) if self.engine is not None else self.options.kv_label

    @property
    def context_limit(self) -> int:
        """The live context's size in tokens (0 before a model is loaded)."""
        return self.engine.n_ctx if self.engine is not None else 0

    def kv_bytes(self) -> int:
        """The live KV cache's bytes (0 before a model is loaded)."""
        return self.engine.kv_bytes() if self.engine is not None else 0

    # lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.unload()
        self.store.close()

    def unload(self) -> None:
        """Free the model and its context (the store stays open); the next turn loads again."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.cache.claim(None)

    def load(self, model: str | None = None, *, conversation: str | None = None) -> Engine:
        """Resolve, plan and load the model (once; again only when a different one is asked for).

        For a `conversation` with a saved state, when no KV type was asked for, the planner is
        offered the state's K/V types first: a state only restores into a cache of its types.
        """
        spec = canonical_spec(model) if model else self.model_spec
        if self.engine is not None and spec in (self.model_spec, self.model_name):
            return self.engine
        path = local_model_file(spec)
        if path is None:
            from .registry import resolve_model

            resolved = resolve_model(spec, self.paths, download=self.download, notice=self.on_notice)
            path, name = resolved.path, resolved.name
        else:
            name = path.stem
        info = model_cache.header(path, self.paths.model_cache)
        if self.options.rpc and not self.remote_devices:  # before planning: their devices take layers like GPUs
            from .rpc import connect

            o = self.options
            self.remote_devices = connect(o.rpc, allow_public=o.rpc_allow_public, warn=self.on_notice)
        settings = None
        no_kv_asked = self.options.type_k is None and self.options.type_v is None
        state_types = self.cache.saved_types(conversation) if conversation and no_kv_asked else None
        if state_types is not None:
            with contextlib.suppress(BudgetError):  # the saved types no longer fit: the planner chooses
                settings = self._settings_for(path, info, state_types)
        if settings is None:
            settings = self._settings_for(path, info)
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.cache.bind("", 0)
        self._held_before = anon_rss()  # what this process held before the model: see _held()
        self.engine = Engine(settings, info, cache_dir=self.paths.model_cache)
        self.model_spec = spec
        self.model_name = name
        self.base_plan = self.plan
        self.watcher.reset()
        self.cache.bind(model_fingerprint(path, self.paths.fingerprint_cache), _ram_room(self.plan))
        return self.engine

    def _settings_for(self, path: Path, info: GGUFInfo, kv_types: tuple[str, str] | None = None) -> EngineSettings:
        """Size the context, KV cache and offload to the budget (planner), honouring explicit options."""
        from . import planner

        o = self.options
        gpu_layers = cast('Literal["auto"] | int', parse_gpu_layers(o.gpu_layers))
        type_k, type_v = kv_types or (o.type_k, o.type_v)
        self.plan = planner.plan(
            info,
            n_ctx=o.ctx,
            type_k=type_k,
            type_v=type_v,
            flash_attn=o.flash_attn,
            gpu_layers=gpu_layers,
            budget_bytes=o.budget_mb * (1 << 20) if o.budget_mb else None,
            swa_full=o.swa_full,
        )
        p = self.plan
        if p.compromises:
            self.on_notice(f"{p.model}: " + "; ".join(p.compromises))
        return p.engine_settings(str(path), threads=o.threads, seed=0)

    # conversations --------------------------------------------------------------------

    def new_conversation(
        self,
        title: str = "",
        *,
        system_prompt: str | None = None,
        model: str | None = None,
        settings: dict[str, Any] | None = None,
        deferred: bool = False,
    ) -> Conversation:
        """A new conversation. `deferred`: its row is created with its first stored turn, so a
        first turn that fails (a bad model, a message too long) leaves nothing behind."""
        spec, values = self.conversation_defaults(system_prompt=system_prompt, model=model, settings=settings)
        if deferred:
            return Conversation(self, self.store.new_id(), pending=(spec, values, title))
        record = self.store.create_conversation(spec, values, title)
        return Conversation(self, record.id)

    def conversation_defaults(
        self, *, system_prompt: str | None = None, model: str | None = None, settings: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """The model and settings a new conversation is stored with: for `new_conversation`, and
        for the UI, which creates the row through its own store connection."""
        values = {
            "system_prompt": self.system_prompt if system_prompt is None else system_prompt,
            "compaction": self.compaction,
            **(settings or {}),
        }
        return (canonical_spec(model) if model else self.default_model), values

    def conversation(self, cid: str) -> Conversation:
        return Conversation(self, self.store.conversation(cid).id)

    def latest(self) -> Conversation | None:
        record = self.store.latest()
        return Conversation(self, record.id) if record else None

    def conversations(self, search: str = "") -> list[ConversationRecord]:
        return self.store.conversations(search)

    def delete_conversation(self, cid: str) -> None:
        cid = self.store.conversation(cid).id
        with ConversationLock(self.paths.data_dir / "locks", cid, self.lock_timeout_s) as lock:
            self.store.delete_conversation(cid)
            self.cache.forget(cid)
            lock.discard()

    # stateless generation -------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        *,
        system: str | None = None,
        raw: bool = False,
        sampling: SamplingSettings | None = None,
        stop: threading.Event | None = None,
        stop_strings: Sequence[str] = (),
    ) -> GenerateStream:
        return GenerateStream(self, prompt, system, raw, sampling or self.sampling(), stop, stop_strings)

    def sampling(
        self, *, model: str | None = None, conversation: dict[str, Any] | None = None, **overrides: Any
    ) -> SamplingSettings:
        """The effective sampling, each layer beating the one before: edgechat's defaults, the
        model's recommended values (models.toml `sampling`), config.toml, the conversation's
        own settings, the runtime's `sampling`, then `overrides` (CLI options, API arguments;
        None means not given)."""
        merged: dict[str, Any] = dict(self.recommended_sampling(model or self.model_spec))
        merged.update(self.defaults.sampling)
        merged.update({k: v for k, v in (conversation or {}).items() if k in SAMPLING_KEYS and v is not None})
        merged.update(self.sampling_overrides)
        merged.update(check_sampling({k: v for k, v in overrides.items() if v is not None}, "sampling"))
        return replace(SamplingSettings(), **merged)

    def recommended_sampling(self, spec: str) -> dict[str, Any]:
        """A registry model's recommended sampling; {} for files and hub paths outside the registry."""
        if local_model_file(spec) is not None:
            return {}
        from .registry import Registry, parse_spec

        try:
            parsed = parse_spec(spec)
            if parsed.kind != "registry":
                return {}
            return dict(Registry.load(self.paths).get(parsed.name).sampling)
        except EdgechatError:
            return {}  # an unknown name fails at load, with its own message

    def ram_cache_bytes(self) -> int:
        """Bytes of other conversations' states parked in RAM."""
        return self.cache.ram_bytes()

    def check_memory(self) -> None:
        self.cache.check_memory()

    # memory pressure ------------------------------------------------------------------

    def watch_memory(self, snapshot: MemorySnapshot | None = None, *, blocking: bool = False) -> Replan | None:
        """Between turns (the UI's idle timer, `serve` between requests, a script's loop): read
        free memory and re-plan the live context when it fell below the floor, or grow it back
        once memory has returned for the hold-off time (pressure.py). `rt.memory` holds the
        reading. Never while a reply streams: the turn lock is taken without waiting (unless
        `blocking`), and a stream suspended in this very thread counts as streaming. Returns
        the re-plan made (its one notice already given), if any."""
        if not self._turn_lock.acquire(blocking=blocking):
            return None
        try:
            if self._streaming is not None:
                return None
            replan = self._watch(snapshot)
            if replan is not None:
                self._unreported = replan
                self.on_notice(replan.describe())
            return replan
        finally:
            self._turn_lock.release()

    def _watch(self, snapshot: MemorySnapshot | None = None, lock_held: str | None = None) -> Replan | None:
        """Under the turn lock: one look at memory and, when the watcher says so, the re-plan
        (no notice: the caller gives it, a turn together with its compaction). `lock_held`: the
        conversation whose lock the caller holds (a turn's own)."""
        engine, current, base = self.engine, self.plan, self.base_plan
        if not self.pressure.watch or engine is None or current is None or base is None:
            return None
        if snapshot is None:
            from .memory import probe

            snapshot = probe(gpus=bool(base.total_gpu or current.total_gpu))
        now = time.monotonic()
        held = self._held()
        reading = read_memory(snapshot, current, self.pressure, held, self.watcher.credit(now))
        self.memory = reading
        o = self.options
        decision = self.watcher.decide(
            reading, now, current, base, self._replanner(engine),
            live_tokens=engine.n_cached if self.cache.owner is not None else 0,
            types_fixed=o.type_k is not None or o.type_v is not None,
            layers_fixed=parse_gpu_layers(o.gpu_layers) != "auto",
        )  # fmt: skip
        if self.watcher.stuck and not self._told_stuck:
            self.on_notice(f"{reading.describe()}, and the context is as small as it gets: free some memory")
        # Said once per shortage; a shrink already said it.
        self._told_stuck = reading.pressed and (self._told_stuck or self.watcher.stuck or decision is not None)
        if decision is None:
            return None
        replan = self._replan(decision, reading, lock_held)
        after = self._held()
        self.watcher.made(time.monotonic(), 0 if held is None or after is None else held - after)
        return replan

    def _held(self) -> int | None:
        """Anonymous memory this process gained since just before the model loaded: the model's
        buffers as far as they are resident, and the in-RAM states (what a re-plan can free)."""
        now = anon_rss()
        return None if now is None or self._held_before is None else max(0, now - self._held_before)

    def _replanner(self, engine: Engine) -> Replanner:
        """planner.plan for the loaded model and the user's options, on a given machine and floor."""
        from . import planner

        o = self.options
        budget = o.budget_mb * (1 << 20) if o.budget_mb else None

        def replan(
            floor: int, machine: MemorySnapshot, *, ctx: int, types: tuple[str, str] | None,
            gpu_layers: Literal["auto"] | int, n_ubatch: int = 512,
        ) -> planner.Plan:  # fmt: skip
            tk, tv = types if types is not None else (o.type_k, o.type_v)
            if o.flash_attn is False and tv not in (None, "f16"):
                tv = "f16"  # a quantized V cache needs flash attention, which the user turned off
            return planner.plan(
                engine.info, n_ctx=ctx, type_k=tk, type_v=tv, flash_attn=o.flash_attn, gpu_layers=gpu_layers,
                budget_bytes=budget, snapshot=machine, n_ubatch=n_ubatch, swa_full=o.swa_full, ram_floor=floor,
            )  # fmt: skip

        return replan

    def _replan(self, decision: Decision, reading: Reading, lock_held: str | None = None) -> Replan | None:
        """Recreate the context with the decided plan, keeping the model loaded.

        The live conversation's state is on disk after every turn (written now if not); it is
        loaded back when it fits the new context's size and K/V types. When it does not, its
        file is dropped: the next turn rebuilds the conversation from the transcript and
        compacts it to the new context (the turn pipeline's own compaction). The GPU layer
        split is the model's: changing it loads the model again (only when no context fits
        the layers in place). If the context cannot be recreated, the model is unloaded and
        the next turn loads it afresh, planned from what is free then.
        """
        engine = self.engine
        assert engine is not None
        t0 = time.perf_counter()
        before, plan_before, new = engine.settings, self.plan, decision.plan
        settings = new.engine_settings(before.model_path, threads=self.options.threads, seed=before.seed)
        reload_model = settings.gpu_layers != before.gpu_layers
        owner = self.cache.owner
        tokens = engine.cached_tokens if owner is not None else []
        lock: ConversationLock | None = None
        if owner is not None and tokens and owner != lock_held:
            lock = ConversationLock(self.paths.data_dir / "locks", owner, 0)
            try:
                lock.acquire()  # the turn that held it has ended; another process may hold it now
            except BusyError:
                lock, tokens = None, []  # that process writes this conversation's state, not us
        restored = False
        try:
            on_disk = bool(tokens) and owner is not None and self.cache.saved_exactly(owner, engine, tokens)
            try:
                if reload_model:
                    info = engine.info
                    self.engine = None
                    engine.close()
                    self.engine = Engine(settings, info, cache_dir=self.paths.model_cache)
                else:
                    engine.recreate_context(settings)
            except EdgechatError as exc:
                self.unload()
                self.on_notice(
                    f"{decision.reason}, but the context could not be recreated ({exc.message}); "
                    "the model loads again with the next turn"
                )
                return None
            self.plan = new
            self.cache.bind(self.cache.fingerprint, _ram_room(new))  # parked states go: memory is short
            if on_disk and owner is not None and self.engine is not None:
                restored = self.cache.reload(owner, self.engine, tokens)
                if not restored:
                    self.cache.forget(owner)  # it no longer fits: the next turn would refuse it anyway
        finally:
            if lock is not None:
                lock.release()
        after = self.engine.settings if self.engine is not None else settings
        replan = Replan(
            reason=decision.reason, direction=decision.direction,
            ctx_before=before.n_ctx, ctx_after=after.n_ctx, kv_before=kv_label(before), kv_after=kv_label(after),
            gpu_layers_before=before.gpu_layers, gpu_layers_after=after.gpu_layers,
            n_ubatch_before=before.n_ubatch, n_ubatch_after=after.n_ubatch,
            ram_free=reading.ram_free, ram_floor=reading.ram_floor,
            planned_before=plan_before.total_cpu, planned_after=new.total_cpu,
            planned_kv_before=plan_before.kv, planned_kv_after=new.kv,
            planned_gpu_before=plan_before.total_gpu, planned_gpu_after=new.total_gpu,
            conversation_id=owner, live_tokens=len(tokens), restored=restored, reloaded_model=reload_model,
            seconds=time.perf_counter() - t0,
        )  # fmt: skip
        self.replans = [*self.replans[-49:], replan]
        return replan

    def take_replan(self) -> Replan | None:
        """The re-plan made between turns that no turn has reported yet (then forgotten)."""
        replan, self._unreported = self._unreported, None
        return replan


def _replan_json(own: Replan | None, earlier: Replan | None) -> dict[str, Any] | None:
    """A turn reports its own re-plan, else one made between turns since the last turn."""
    replan = own or earlier
    return replan.to_json() if replan is not None else None


def _ram_room(p: Any) -> int:
    """What the in-RAM cache of other conversations' states may hold: the budget the plan leaves."""
    return int((p.budget - p.total) if p.budget is not None else (p.budget_ram - p.total_cpu))


def checkpoint_points(engine: Engine, chat: Sequence[dict[str, str]], tokens: Sequence[int]) -> tuple[int, ...]:
    """Token counts a later turn may go back to: the start of the last user message (edit and
    resend) and of the generation header (regenerate; templates that re-render or strip the
    last reply). Only models whose cache cannot be trimmed exactly need them."""
    if not engine.uses_checkpoints:
        return ()
    points = []
    for head, add_header in ((chat[:-1], False), (chat, False)):
        if not head:
            continue
        try:
            points.append(common_prefix(engine.chat_tokens(head, add_generation_prompt=add_header), tokens))
        except EdgechatError:  # a template that refuses a partial conversation: no checkpoint there
            continue
    return tuple(sorted({p for p in points if 0 < p < len(tokens)}))


def _registry_default(paths: Any) -> str:
    """The model a fresh install chats with: the registry's `default` (user models.toml first)."""
    from .registry import Registry

    return Registry.load(paths).default_name


def canonical_spec(spec: str) -> str:
    """A model spec as it is stored: a local path made absolute (so the conversation continues
    from any directory, with the same file), anything else (registry name, hub file) as given."""
    local = local_model_file(spec)
    if local is not None:
        return str(local)
    from .registry import parse_spec

    try:
        parsed = parse_spec(spec)
    except EdgechatError:
        return spec  # resolve_model reports it when the model is loaded
    if parsed.kind != "path" or parsed.path is None:
        return spec
    try:
        return str(parsed.path.expanduser().resolve())
    except (OSError, RuntimeError):
        return spec


def _missing_model(cid: str, spec: str, exc: ModelError) -> ModelError:
    """A conversation whose model file is not on this machine (imported from another, or moved):
    say how to go on rather than only that the path is wrong."""
    from .registry import parse_spec

    with contextlib.suppress(EdgechatError, OSError):
        if parse_spec(spec).kind == "path" and not Path(spec).is_file():
            return ModelError(
                f"conversation {cid} uses the model file {spec}, which is not on this machine",
                "continue it with -m NAME|PATH (the same model file resumes from its saved state)",
            )
    return exc


def chat_messages(system: str, summary: Message | None, active: Sequence[Message]) -> list[dict[str, str]]:
    """The context as the chat template sees it: one system message (with any summary), then the turns.

    An empty reply (stopped or killed before its first token) is left out, and the user
    messages around it are merged: an empty assistant turn teaches the model to answer
    nothing, and templates that require alternating roles (Gemma, Mistral, Llama 2) refuse
    two user messages in a row (older transcripts hold such lone user messages too).
    """
    sys_text = system
    if summary is not None:
        note = f"Summary of the earlier conversation: {summary.content}"
        sys_text = f"{system}\n\n{note}" if system else note
    out = [{"role": "system", "content": sys_text}] if sys_text else []
    for m in active:
        if m.role == "assistant" and not m.content:
            continue
        if out and out[-1]["role"] == m.role and m.role == "user":
            out[-1] = {"role": m.role, "content": f"{out[-1]['content']}\n\n{m.content}"}
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def context_of(history: Sequence[Message]) -> tuple[Message | None, list[Message]]:
    """The latest summary and the turns still in the context (not compacted, not replaced)."""
    live = [m for m in history if not m.compacted and not m.replaced]
    summaries = [m for m in live if m.kind == "summary"]
    return (summaries[-1] if summaries else None), [m for m in live if m.kind == "message"]


def turn_messages(system: str, history: Sequence[Message], text: str) -> list[dict[str, str]]:
    """The whole prompt of a turn that sends `text` after `history`, as the chat template sees it."""
    summary, active = context_of(history)
    return with_user(chat_messages(system, summary, active), {"role": "user", "content": text})


def with_user(chat: list[dict[str, str]], user: dict[str, str]) -> list[dict[str, str]]:
    """`chat` followed by this turn's message, merged into a last user message that has no reply
    (an empty one left the context), so roles always alternate."""
    if chat and chat[-1]["role"] == "user":
        return [*chat[:-1], {"role": "user", "content": f"{chat[-1]['content']}\n\n{user['content']}"}]
    return [*chat, user]


@contextlib.contextmanager
def _exclusive(rt: Runtime, stream: object) -> Iterator[None]:
    """Inside `rt._turn_lock`: one turn or generation at a time, even from one thread.

    The lock is reentrant and held across `yield`, so a second stream driven from the same
    thread (asyncio, interleaved generators) would get in and run on the first one's cache,
    and store a reply mixed from two conversations. Refuse it instead.
    """
    if rt._streaming is not None:
        raise BusyError(
            "another reply of this runtime is still streaming (a suspended stream in this thread)",
            "finish that stream, or close() it, before starting another",
        )
    rt._streaming = stream
    try:
        yield
    finally:
        rt._streaming = None


def _regenerate_target(history: list[Message], edited: str) -> tuple[list[Message], tuple[int, ...], str, bool]:
    """What a regenerate answers: (the history it is answered after, the ids it replaces, the
    message text, whether that text is a new message to store).

    Without `edited` the last message is answered again and its reply replaced; with it the
    last message is replaced too, by the edited one.
    """
    live = [m for m in history if m.kind == "message" and not m.replaced]
    if not live or live[-1].compacted:
        raise EdgechatError("there is no message to answer again", "send a message first")
    reply = live[-1] if live[-1].role == "assistant" else None
    users = [m for m in live if m.role == "user" and (reply is None or m.seq < reply.seq)]
    if not users or users[-1].compacted:
        raise EdgechatError("there is no message to answer again", "send a message first")
    user = users[-1]
    gone = {user.id} | ({reply.id} if reply is not None else set())
    context = [m for m in history if m.id not in gone]
    if edited.strip():
        return context, tuple(sorted(gone)), edited, True
    return context, ((reply.id,) if reply is not None else ()), user.content, False


class Conversation:
    """A handle on one stored conversation; `send` runs a whole turn, `regenerate` redoes the last."""

    def __init__(self, runtime: Runtime, cid: str, *, pending: tuple[str, dict[str, Any], str] | None = None) -> None:
        self.runtime = runtime
        self.id = cid
        self._pending = pending  # (model, settings, title) until the first turn stores the row

    @property
    def record(self) -> ConversationRecord:
        if self._pending is not None:
            model, settings, title = self._pending
            now = time.time()
            return ConversationRecord(self.id, title or "New conversation", model, settings, now, now)
        return self.runtime.store.conversation(self.id)

    def messages(self) -> list[Message]:
        return [] if self._pending is not None else self.runtime.store.messages(self.id)

    def set_system_prompt(self, text: str) -> None:
        """Change the system prompt from the next turn on (the KV cache re-prefills from where it differs)."""
        if self._pending is not None:
            model, settings, title = self._pending
            self._pending = (model, {**settings, "system_prompt": text}, title)
            return
        record = self.record
        self.runtime.store.update(self.id, settings={**record.settings, "system_prompt": text})

    def send(
        self,
        text: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        stop: threading.Event | None = None,
        **sampling: Any,
    ) -> Reply:
        """One whole turn; `sampling` takes any other SamplingSettings field (repeat_penalty=1.2, loop_guard=False)."""
        return self.stream(text, max_tokens=max_tokens, temperature=temperature, seed=seed, stop=stop, **sampling).run()

    def stream(
        self,
        text: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        stop: threading.Event | None = None,
        stop_strings: Sequence[str] = (),
        **sampling: Any,
    ) -> TurnStream:
        """A turn to iterate; `stop_strings` end the reply where one appears (it is not stored)."""
        settings = self._sampling(max_tokens, temperature, seed, sampling)
        return TurnStream(self, text, settings, stop, stop_strings)

    def regenerate(
        self,
        text: str | None = None,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        stop: threading.Event | None = None,
        **sampling: Any,
    ) -> TurnStream:
        """Answer the last message again: its reply is kept in the store, marked replaced, and
        leaves the context. With `text`, the last message is edited first (the old one is kept,
        marked replaced, like its reply). Iterate the stream, or call `.run()`, for the Reply.

        A greedy regenerate (temperature 0, the same seed) gives the same reply again; raise
        the temperature or change the seed for another one.
        """
        settings = self._sampling(max_tokens, temperature, seed, sampling)
        return TurnStream(self, text or "", settings, stop, regenerate=True)

    def _sampling(
        self, max_tokens: int | None, temperature: float | None, seed: int | None, sampling: dict[str, Any]
    ) -> SamplingSettings:
        record = self.record
        rt = self.runtime
        return rt.sampling(
            model=None if rt.explicit_model else record.model,
            conversation=record.settings,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            **sampling,
        )


class TurnStream:
    """Iterate for the reply's text pieces; `reply` holds the stored result afterwards.

    Events for a UI arrive through `on_event(kind, data)`: "stored" (the message is committed),
    "restored", "compacted", "prefilled".

    Durability: the user's message is committed (with an empty reply marked "interrupted")
    before any model work, the reply is written every STREAM_WRITE_S / STREAM_WRITE_TOKENS
    while it streams, and the end of the turn settles it. A process that dies at any point
    leaves its message and the reply up to the last write, marked partial ("interrupted").
    """

    def __init__(
        self,
        conv: Conversation,
        text: str,
        sampling: SamplingSettings,
        stop: threading.Event | None,
        stop_strings: Sequence[str] = (),
        *,
        regenerate: bool = False,
    ) -> None:
        self.conv = conv
        self.text = text
        self.sampling = sampling
        self.stop = stop
        self.stop_strings = tuple(stop_strings)
        self.prompt_tokens = 0  # the whole prompt of this turn (what OpenAI's usage calls prompt_tokens)
        self.regenerate = regenerate
        self.reply: Reply | None = None
        self.notices: list[str] = []
        self.on_event: Callable[[str, Any], None] = lambda _k, _d: None
        self.stored = False  # the message is in the store (and will stay there, whatever happens next)
        self.writes = 0  # store writes of the streaming reply, and the seconds they took
        self.write_s = 0.0
        self._gen: Generator[str, None, None] | None = None
        self._close_reason = "stopped"
        self.replan: Replan | None = None  # the live context was re-planned before this turn
        self._replan_told = False

    def __iter__(self) -> Iterator[str]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    def run(self) -> Reply:
        """Run the turn to its end; the Reply (a stopped one too)."""
        for _ in self:
            pass
        assert self.reply is not None
        return self.reply

    def close(self, reason: str = "stopped") -> None:
        """Abandon the turn (e.g. on Ctrl-C in the caller): what was generated is stored as partial,
        with `reason` ("stopped", or "interrupted" when the output went away)."""
        self._close_reason = reason
        if self._gen is not None:
            self._gen.close()

    def _run(self) -> Generator[str, None, None]:
        if not self.regenerate and not self.text.strip():
            raise EdgechatError("the message is empty", "type something to send")
        rt = self.conv.runtime
        cid = self.conv.id
        with rt._turn_lock, _exclusive(rt, self):
            outer_notice = rt.on_notice

            def notice(msg: str) -> None:
                self.notices.append(msg)
                outer_notice(msg)

            def waiting(pid: str) -> None:
                notice(f"waiting for pid {pid}, which is answering in conversation {cid}")

            rt.on_notice = notice  # swapped under the lock, so a concurrent turn cannot leave it stale
            try:
                with ConversationLock(rt.paths.data_dir / "locks", cid, rt.lock_timeout_s, on_wait=waiting):
                    yield from self._turn(rt, cid)
            finally:
                self._tell_replan(rt)
                rt.on_notice = outer_notice

    def _tell_replan(self, rt: Runtime, compacted: int = 0, policy: str = "") -> None:
        """The re-plan's one notice, with what this turn's compaction did about it."""
        if self.replan is not None and not self._replan_told:
            self._replan_told = True
            rt.on_notice(self.replan.describe(compacted, policy, in_turn=True))

    def _turn(self, rt: Runtime, cid: str) -> Iterator[str]:
        testhooks.kill_point("load")
        conv = self.conv
        record = conv.record
        spec = None if rt.explicit_model else record.model
        try:
            engine = rt.load(spec, conversation=cid)
        except ModelError as exc:
            if rt.explicit_model:
                raise
            raise _missing_model(cid, record.model, exc) from None
        if conv._pending is None and record.model != rt.model_spec:
            rt.store.update(cid, model=rt.model_spec)
        rt.check_memory()
        try:  # memory first: a context re-planned now is the one this turn fits itself into
            self.replan = rt._watch(lock_held=cid)
        except EdgechatError as exc:
            rt.on_notice(f"could not re-plan the context: {exc}")
        if rt.engine is not engine:  # a failed re-plan unloaded it (or the GPU split changed)
            engine = rt.load(spec, conversation=cid)
        t0 = time.perf_counter()
        history = conv.messages()
        system = str(record.settings.get("system_prompt") or "")
        replace_ids: tuple[int, ...] = ()
        store_user = True
        context = history
        if self.regenerate:
            context, replace_ids, self.text, store_user = _regenerate_target(history, self.text)
        summary, active = context_of(context)
        user = {"role": "user", "content": self.text}
        chat = with_user(chat_messages(system, summary, active), user)
        tokens = engine.chat_tokens(chat)

        # Room kept free for the reply when deciding to compact. A reply may run past it
        # (up to max_tokens, while the context lasts): the next turn compacts then.
        reserve = min(self.sampling.max_tokens, max(16, engine.n_ctx // 4))
        cut: tuple[str, int] | None = None
        if len(tokens) + reserve > engine.n_ctx:
            # Decided before the message is stored: a message that cannot fit is refused whole.
            policy = rt.explicit_compaction or str(record.settings.get("compaction") or rt.compaction)
            cut = (policy, self._plan_cut(engine, policy, system, summary, active, user, reserve, len(tokens)))
        else:
            self._tell_replan(rt)

        # The message first: committed before restore and prefill, with an empty reply row.
        title = None
        if record.title == "New conversation" and store_user:
            title = self.text.strip().splitlines()[0][:60]
        create = None
        if conv._pending is not None:
            create = (rt.model_spec, conv._pending[1], conv._pending[2])
        rows = rt.store.begin_turn(
            cid,
            NewMessage("user", self.text, tokens=engine.count_tokens(self.text)) if store_user else None,
            replace_ids=replace_ids,
            create=create,
            title=title,
        )
        conv._pending = None
        self.stored = True
        self.on_event("stored", {"reply_id": rows.reply_id})
        testhooks.kill_point("stored")

        text, n_tokens, reason = "", 0, "stopped"
        result: compact.Compaction | None = None
        gen: Generation | None = None
        source = "new"
        restore_s = 0.0
        t_gen = t0
        failure: BaseException | None = None
        try:
            testhooks.kill_point("restore")
            source = rt.cache.restore(cid, engine, tokens, has_history=bool(history))
            restore_s = time.perf_counter() - t0
            self.on_event("restored", {"source": source, "seconds": restore_s})
            if cut is not None:
                result, chat, tokens = self._compact(rt, engine, cut, system, summary, active, user, len(tokens))
                self.on_event("compacted", result)
                self._tell_replan(rt, sum(m.role == "user" for m in active[: cut[1]]), cut[0])
            t_gen = time.perf_counter()  # ttft_s covers restore and compaction too
            self.prompt_tokens = len(tokens)
            points = checkpoint_points(engine, chat, tokens)
            gen = engine.generate(
                tokens, self.sampling, stop=self.stop, stop_strings=self.stop_strings, checkpoint_at=points
            )
            testhooks.kill_point("prefill")
            last_write, written = time.perf_counter(), 0
            for piece in gen:
                yield piece
                n = len(gen.tokens)
                now = time.perf_counter()
                if written == 0 or n - written >= STREAM_WRITE_TOKENS or now - last_write >= STREAM_WRITE_S:
                    rt.store.write_reply(rows.reply_id, gen.text, n)
                    done = time.perf_counter()
                    self.writes += 1
                    self.write_s += done - now
                    last_write, written = done, n
                    testhooks.kill_point("decode")
            text, n_tokens = gen.text, len(gen.tokens)
        except (KeyboardInterrupt, Cancelled, GeneratorExit) as exc:
            # GeneratorExit: the caller stopped iterating (its own Ctrl-C, a closed pipe); keep what was said.
            failure = exc
            if gen is not None:
                text, n_tokens = gen.text, len(gen.tokens)
            reason = self._close_reason if isinstance(exc, GeneratorExit) else "stopped"
        except BaseException as exc:
            failure = exc
            if gen is not None:
                text, n_tokens = gen.text, len(gen.tokens)
            reason = "error"
        finish = gen.stats.finish_reason if gen is not None and gen.stats else "cancelled"
        if failure is None and finish != "cancelled":
            final_reason: str | None = None
        elif failure is None or isinstance(failure, Cancelled):
            final_reason = getattr(self.stop, "reason", None) or "stopped"
        else:
            final_reason = reason
        # A turn stopped before its first token changes nothing else: no compaction (item 18),
        # and a regenerate gives the old reply back its place.
        empty_stop = final_reason is not None and not text
        compact_ids: tuple[int, ...] = ()
        summary_row = None
        if result is not None and not empty_stop:
            compact_ids = result.compacted_ids
            if result.summary is not None:
                summary_row = NewMessage("system", result.summary, kind="summary")
        undo = self.regenerate and not store_user and empty_stop and final_reason != "error"
        rt.store.finish_turn(
            cid, rows, text, n_tokens, reason=final_reason, compact_ids=compact_ids, summary=summary_row,
            unreplace_ids=replace_ids if undo else (), drop_reply=undo,
        )  # fmt: skip
        save_s, state_bytes = 0.0, 0
        if final_reason == "error":
            rt.cache.distrust(engine)  # a failed decode leaves the cache in doubt: the next turn restores afresh
        else:
            testhooks.kill_point("save")
            save_s, state_bytes = rt.cache.save(cid, engine)
            rt.cache.claim(cid)
        if failure is not None and not isinstance(failure, Cancelled):
            raise failure  # GeneratorExit must end the generator; Ctrl-C and errors go on to the caller
        st = gen.stats if gen is not None else None
        restored_from = rt.cache.settle(source, gen.rewind if gen is not None else None, cid)
        reused = max(0, self.prompt_tokens - gen.prefill_tokens) if gen is not None else 0
        saved_s = 0.0
        if reused and restored_from in ("memory", "state", "checkpoint"):
            rate = rt.store.prefill_rate(rt.model_name, kv_label(engine.settings))
            saved_s = reused / rate if rate else 0.0
        if st is not None and failure is None:
            rt.store.record_turn_cache(
                cid, model=rt.model_name, kv_type=kv_label(engine.settings), source=restored_from,
                reused_tokens=reused, prefill_tokens=gen.prefill_tokens if gen is not None else 0,
                prefill_s=st.prefill_s, restore_s=restore_s,
            )  # fmt: skip
        self.reply = Reply(
            text=text,
            stats=TurnStats(
                conversation_id=cid,
                restored_from=restored_from,
                prefill_tokens=gen.prefill_tokens if gen is not None else 0,
                completion_tokens=n_tokens,
                context_tokens=engine.n_cached,
                context_limit=engine.n_ctx,
                compacted=result is not None and not empty_stop,
                ttft_s=(t_gen - t0) + (st.ttft_s if st else 0.0),
                decode_tokens_per_s=st.decode_tokens_per_s if st else 0.0,
                kv_type=kv_label(engine.settings),
                finish_reason=finish,
                restore_s=restore_s,
                compaction_s=result.seconds if result else 0.0,
                state_save_s=save_s,
                state_bytes=state_bytes,
                model=rt.model_name,
                decode_threads=st.decode_threads if st else 0,
                prefill_threads=st.prefill_threads if st else 0,
                threads_auto=st.threads_auto if st else True,
                sampling=asdict(self.sampling),
                reused_tokens=reused,
                prefill_saved_s=saved_s,
                replan=_replan_json(self.replan, rt.take_replan()),
            ),
            notices=tuple(self.notices),
            compaction=result if not empty_stop else None,
        )

    @staticmethod
    def _plan_cut(
        engine: Engine,
        policy: str,
        system: str,
        summary: Message | None,
        active: list[Message],
        user: dict[str, str],
        reserve: int,
        tokens_before: int,
    ) -> int:
        """How many of the oldest turns must leave the context for this turn to fit (no model work)."""
        if policy == "off":
            raise BudgetError(
                f"the conversation needs {tokens_before + reserve} tokens; the context holds {engine.n_ctx}",
                "use --compaction summarize or truncate, or a larger --ctx",
            )
        # Reserve room for the summary the new context will carry.
        placeholder = None
        if policy == "summarize":
            room = "x " * compact.summary_tokens(engine.n_ctx)
            placeholder = Message(0, "", 0, "system", room, None, 0.0, kind="summary")

        def prompt_len(k: int) -> int:
            return len(engine.chat_tokens(with_user(chat_messages(system, placeholder or summary, active[k:]), user)))

        def message_len() -> int:
            return len(engine.chat_tokens(with_user(chat_messages(system, None, []), user)))

        return compact.choose_cut(active, prompt_len, reserve, engine.n_ctx, message_len=message_len)

    def _compact(
        self,
        rt: Runtime,
        engine: Engine,
        cut: tuple[str, int],
        system: str,
        summary: Message | None,
        active: list[Message],
        user: dict[str, str],
        tokens_before: int,
    ) -> tuple[compact.Compaction, list[dict[str, str]], list[int]]:
        """Shrink the context so this turn fits; returns the compaction, new chat and tokens.

        Nothing is stored here: the turn commits the compaction with its reply, and a turn
        stopped before its first token (a stop during the summary included) commits none.
        """
        policy, k = cut
        t = time.perf_counter()
        dropped = active[:k]
        ids = tuple(m.id for m in dropped)
        shifted = False
        new_summary_text: str | None = None
        if policy == "summarize":
            older = chat_messages(system, summary, dropped)
            new_summary_text = compact.summarize(engine, older, self.sampling, stop=self.stop)
            ids = ids + ((summary.id,) if summary is not None else ())
            new_summary = Message(0, "", 0, "system", new_summary_text, None, time.time(), kind="summary")
            chat = with_user(chat_messages(system, new_summary, active[k:]), user)
        else:
            chat = with_user(chat_messages(system, summary, active[k:]), user)
        tokens = engine.chat_tokens(chat)
        if policy == "truncate":
            shifted = self._shift(engine, tokens)
        result = compact.Compaction(
            policy=policy,
            compacted_ids=ids,
            summary=new_summary_text,
            shifted=shifted,
            seconds=time.perf_counter() - t,
            tokens_before=tokens_before,
            tokens_after=len(tokens),
        )
        return result, chat, tokens

    @staticmethod
    def _shift(engine: Engine, new_tokens: list[int]) -> bool:
        """Drop the compacted turns inside the KV cache (llama.cpp's context shift), no re-prefill.

        The cache keeps its common prefix with the new prompt (the system part); the kept
        turns are found by their first tokens and slid left over the dropped ones.
        The shifted entries were computed while the dropped turns were in view, so later
        replies follow from the state file, not from the transcript alone: a re-prefill
        of the same transcript (state lost, other KV type, new llama.cpp) can answer
        differently, even greedily. The tokens are checked, the values cannot be; README
        says so under "When a conversation outgrows the context".
        """
        if not engine.can_shift or engine.n_cached == 0:
            return False
        cached = engine.cached_tokens
        start = common_prefix(cached, new_tokens)
        width = min(16, len(new_tokens) - start)
        if width <= 0:
            return False
        probe = new_tokens[start : start + width]
        for end in range(start + 1, len(cached) - width + 1):
            if cached[end : end + width] == probe:
                engine.shift_out(start, end)
                return True
        return False


class GenerateStream:
    """One stateless completion: iterate for text pieces, then read `result`."""

    def __init__(
        self,
        rt: Runtime,
        prompt: str,
        system: str | None,
        raw: bool,
        sampling: SamplingSettings,
        stop: threading.Event | None,
        stop_strings: Sequence[str] = (),
    ) -> None:
        self.rt = rt
        self.prompt = prompt
        self.system = system
        self.raw = raw
        self.sampling = sampling
        self.stop = stop
        self.stop_strings = tuple(stop_strings)
        self.result: GenerateResult | None = None

    def __iter__(self) -> Iterator[str]:
        rt = self.rt
        with rt._turn_lock, _exclusive(rt, self):
            engine = rt.load()
            rt.cache.park(engine)
            if self.raw:
                tokens = engine.tokenize(self.prompt, add_bos=True, special=False)
            else:
                chat = ([{"role": "system", "content": self.system}] if self.system else []) + [
                    {"role": "user", "content": self.prompt}
                ]
                tokens = engine.chat_tokens(chat)
            if len(tokens) >= engine.n_ctx:
                raise BudgetError(
                    f"the prompt is {len(tokens)} tokens; the context holds {engine.n_ctx}",
                    "shorten the prompt or raise --ctx",
                )
            sampling = self.sampling
            room = engine.n_ctx - len(tokens)
            if sampling.max_tokens > room:
                sampling = replace(sampling, max_tokens=room)
            gen = engine.generate(tokens, sampling, stop=self.stop, stop_strings=self.stop_strings)
            yield from gen
            st = gen.stats
            assert st is not None
            self.result = GenerateResult(
                text=gen.text,
                model=rt.model_name,
                prompt_tokens=st.prompt_tokens,
                completion_tokens=st.completion_tokens,
                ttft_s=st.ttft_s,
                decode_tokens_per_s=st.decode_tokens_per_s,
                kv_type=kv_label(engine.settings),
                finish_reason=st.finish_reason,
                prefill_tokens=st.prefill_tokens,
                decode_threads=st.decode_threads,
                prefill_threads=st.prefill_threads,
                threads_auto=st.threads_auto,
                sampling=asdict(sampling),
            )

    def run(self) -> GenerateResult:
        for _ in self:
            pass
        assert self.result is not None
        return self.result
