"""The three tiers that hold a conversation's KV cache besides the transcript.

    live context (one owner) ─► in-RAM LRU of parked states ─► state files on disk

A turn asks `restore` for the cheapest valid tier and learns which one really supplied the
cache; every tier is checked token by token against the transcript before it is used, and
a state that fails a check is dropped with one notice (the transcript rebuilds it).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from .engine import Checkpoint, Engine, Rewind, common_prefix, llama_build
from .errors import EdgechatError, StateError
from .state import StateFiles
from .state_budget import budget_bytes, disk_space, drop_states, floor_bytes, lock_dir_for, mib, victims

Notice = Callable[[str], None]
RAM_CACHE_BYTES = 512 << 20
# Free RAM below this share of the total makes the cache drop its parked states.
LOW_MEMORY_SHARE = 0.10


class _Parked(NamedTuple):
    """A conversation's cache parked in RAM while another one uses the live context."""

    tokens: list[int]
    data: bytes
    checkpoints: tuple[Checkpoint, ...]

    @property
    def size(self) -> int:
        return len(self.data) + sum(ck.size for ck in self.checkpoints)


class StateCache:
    """Which conversation fills the live context, the states parked in RAM, and the state files.

    Bound to one loaded model (`bind`): its fingerprint is part of every state's key.
    """

    def __init__(
        self, files: StateFiles, notice: Notice, *, budget_mb: int | None = None, lock_dir: Path | None = None
    ) -> None:
        self.files = files
        self._notice = notice
        self.budget_mb = budget_mb  # the disk budget for state files (None: the default share of free disk)
        self.lock_dir = lock_dir or lock_dir_for(files)
        self.owner: str | None = None  # the conversation whose tokens fill the live cache
        self.fingerprint = ""
        self._ram: OrderedDict[str, _Parked] = OrderedDict()
        self._ram_limit = RAM_CACHE_BYTES

    def bind(self, fingerprint: str, ram_limit: int) -> None:
        """A new model (or context) is loaded: nothing cached so far fits it."""
        self.fingerprint = fingerprint
        self._ram_limit = max(0, min(RAM_CACHE_BYTES, ram_limit))
        self.owner = None
        self._ram.clear()

    def forget(self, cid: str) -> None:
        """The conversation is gone: drop every tier of its cache."""
        self.files.delete(cid)
        self._ram.pop(cid, None)
        if self.owner == cid:
            self.owner = None

    # restore ----------------------------------------------------------------------------

    def restore(self, cid: str, engine: Engine, tokens: list[int], has_history: bool) -> str:
        """Put the conversation's KV state in the live cache from the cheapest valid tier, then
        bring it back to the longest exact prefix of `tokens`; returns what really supplied it:
        new | memory | state | checkpoint | transcript."""
        source = self._load(cid, engine, tokens, has_history)
        if source in ("new", "transcript"):
            return source
        return self.settle(source, engine.prepare(tokens), cid)

    def settle(self, source: str, rewind: Rewind | None, cid: str) -> str:
        """The source after a rewind: a restored state that had to be thrown away is the transcript."""
        if rewind is None or source in ("new", "transcript"):
            return source
        if rewind.problem:
            self._notice(f"checkpoint of conversation {cid} not used ({rewind.problem}); re-reading the history")
        if rewind.how == "clear":
            return "transcript"
        return "checkpoint" if rewind.how == "checkpoint" else source

    def _load(self, cid: str, engine: Engine, tokens: list[int], has_history: bool) -> str:
        if self.owner == cid and engine.common_prefix(tokens) > 0:
            return "memory"
        if self.owner != cid:
            self.park(engine)
        self.owner = None
        if cid in self._ram:
            ram = self._ram.pop(cid)
            if common_prefix(ram.tokens, tokens) > 0:
                try:
                    engine.set_state_bytes(ram.data, ram.tokens, ram.checkpoints)
                    self.owner = cid
                    return "memory"
                except StateError:
                    pass
        self.owner = cid
        if not has_history:
            return "new"
        try:
            if self._load_file(cid, engine, tokens):
                self.files.touch(cid)
                return "state"
        except StateError as exc:
            self._notice(
                f"saved state of conversation {cid} not used ({exc.message}); rebuilding it from the transcript"
            )
            self.files.delete(cid)
            return "transcript"
        why = self.files.take_mark(cid)
        if why is not None:
            self._notice(f"saved state of conversation {cid} was dropped ({why}); rebuilding it from the transcript")
        return "transcript"

    def _load_file(self, cid: str, engine: Engine, tokens: list[int]) -> bool:
        header = self.files.read_header(cid, missing_ok=True)
        if header is None:
            return False
        if header.conversation_id != cid:
            raise StateError(f"the state file belongs to another conversation ({header.conversation_id})")
        s = engine.settings
        header.check_compatible(
            fingerprint=self.fingerprint, type_k=s.type_k, type_v=s.type_v, flash_attn=s.use_flash_attn
        )
        if common_prefix(header.tokens, tokens) == 0:
            raise StateError("the saved state does not match the transcript")
        if len(header.tokens) > engine.n_ctx:
            raise StateError(f"the saved state holds {len(header.tokens)} tokens, more than this context")
        payload = self.files.verified_payload(header)
        build = llama_build()
        try:
            engine.load_state(payload, header.tokens, self.files.checkpoints(header))
        except StateError as exc:
            if header.llama_build == build:
                raise
            # An upgrade that changed llama.cpp's state format: its own checks refused the file.
            raise StateError(f"written by {header.llama_build}, which this {build} cannot read") from exc
        return True

    def reload(self, cid: str, engine: Engine, tokens: Sequence[int]) -> bool:
        """After the live context was recreated with other settings (a re-plan under memory
        pressure): load `cid`'s state file back when it holds exactly `tokens` and fits the new
        context's size and K/V types. False leaves the cache empty and unowned."""
        try:
            header = self.files.read_header(cid, missing_ok=True)
            if header is None or list(header.tokens) != list(tokens):
                return False
            self._load_file(cid, engine, list(tokens))
        except StateError:
            engine.clear()
            self.owner = None
            return False
        self.owner = cid
        return True

    def saved_exactly(self, cid: str, engine: Engine, tokens: list[int]) -> bool:
        """Whether `cid`'s state file holds exactly the live `tokens`, writing it when it is missing
        or older. A file that is not a prefix of the live tokens was written since by another
        process: it is left alone (and the live cache is not restored)."""
        try:
            header = self.files.read_header(cid, missing_ok=True)
        except EdgechatError:
            header = None
        if header is not None and list(header.tokens) == tokens:
            return True
        if header is not None and common_prefix(header.tokens, tokens) < len(header.tokens):
            return False
        return self.save(cid, engine)[1] > 0

    def saved_types(self, cid: str) -> tuple[str, str] | None:
        """The K/V types of a conversation's saved state, if it has a readable one."""
        try:
            header = self.files.read_header(cid, missing_ok=True)
        except StateError:
            return None
        return (header.type_k, header.type_v) if header is not None else None

    # the live context ------------------------------------------------------------------

    def claim(self, cid: str | None) -> None:
        """The live cache now holds `cid`'s tokens (None: nobody's)."""
        self.owner = cid

    def distrust(self, engine: Engine) -> None:
        """The live cache is in doubt (a failed decode): empty it, so that no later turn, not even
        a rebuild from the transcript, reuses a prefix of it."""
        engine.clear()
        self.owner = None

    def park(self, engine: Engine) -> None:
        """Before the live context is used for something else: its owner's state goes to RAM,
        so switching back is a copy, not a prefill."""
        if self.owner is not None and engine.n_cached:
            self._remember(self.owner, engine)
        self.owner = None

    def _remember(self, cid: str, engine: Engine) -> None:
        self._ram.pop(cid, None)
        room = self._ram_room()
        if engine.kv_bytes() + sum(ck.size for ck in engine.checkpoints) > room:
            return
        self._ram[cid] = _Parked(engine.cached_tokens, engine.state_bytes(), _in_ram(engine.checkpoints))
        self._shrink(room)

    # the RAM tier ----------------------------------------------------------------------

    def ram_bytes(self) -> int:
        return sum(v.size for v in self._ram.values())

    def drop_ram(self) -> None:
        self._ram.clear()

    def _ram_room(self) -> int:
        """What the RAM tier may hold now: its share of the budget, and never more than the
        machine has free above a floor (LOW_MEMORY_SHARE of its RAM)."""
        from .memory import probe

        snap = probe(gpus=False)
        spare = snap.ram_available + self.ram_bytes() - int(snap.ram_total * LOW_MEMORY_SHARE)
        return max(0, min(self._ram_limit, spare))

    def _shrink(self, room: int) -> int:
        """Drop the least recently used states until the tier fits `room`; returns bytes freed."""
        freed = 0
        while self._ram and self.ram_bytes() > room:
            _cid, dropped = self._ram.popitem(last=False)
            freed += dropped.size
        return freed

    def check_memory(self) -> None:
        """Before a turn: re-read free RAM and, when it has fallen, drop parked states rather
        than let the OS swap."""
        if not self._ram:
            return
        freed = self._shrink(self._ram_room())
        if freed:
            self._notice(f"low memory: dropped {freed / 2**20:.0f} MiB of cached conversation states")

    # the disk tier ---------------------------------------------------------------------

    def save(self, cid: str, engine: Engine) -> tuple[float, int]:
        """Write the live cache as `cid`'s state file; (seconds, payload bytes), 0 bytes when it
        was not written (the turn is stored all the same; one notice says why).

        Within the disk budget: the least recently used other states are dropped first to make
        room. A disk too full for it skips the save, checked before writing and, for a disk
        that fills meanwhile (ENOSPC, EFBIG), during the write, which then leaves no file behind.
        """
        t = time.perf_counter()
        s = engine.settings
        if not self._make_room(cid, engine):
            return time.perf_counter() - t, 0
        try:
            header = self.files.save(
                cid, engine.cached_tokens, engine.save_state, engine.checkpoints,
                model_fingerprint=self.fingerprint, type_k=s.type_k, type_v=s.type_v,
                flash_attn=s.use_flash_attn, llama_build=llama_build(),
            )  # fmt: skip
        except StateError as exc:
            self._notice(f"{exc}")
            return time.perf_counter() - t, 0
        return time.perf_counter() - t, header.payload_size

    def _make_room(self, cid: str, engine: Engine) -> bool:
        """Fit the coming save into the budget and the free disk; False (after one notice) to skip it."""
        need = engine.kv_bytes() + sum(ck.size for ck in engine.checkpoints) + 16 * engine.n_cached + 4096
        usage = self.files.usage()
        free, total = disk_space(self.files.dir)
        budget, source = budget_bytes(self.budget_mb, free, sum(u.bytes for u in usage.values()))
        if need > budget:
            hint = (
                "raise state_budget_mb (config.toml) or --state-budget-mb"
                if source == "state_budget_mb"
                else "set state_budget_mb"
            )
            self._notice(
                f"the KV state of conversation {cid} was not saved: its {mib(need)} exceed the {mib(budget)}"
                f" state budget — {hint}; the turn is stored and the transcript is safe"
            )
            return False
        chosen = victims(usage, cid, need, budget)
        if chosen:
            dropped, _busy = drop_states(self.files, self.lock_dir, chosen, f"the {mib(budget)} state budget was full")
            free += sum(u.bytes for u in dropped)
        # The new generation is written before the old one is removed: both are on disk a moment.
        if free - need < floor_bytes(total):
            self._notice(
                f"the KV state of conversation {cid} was not saved: the disk is nearly full ({mib(free)} free)"
                " — free some disk space; the turn is stored and the transcript is safe"
            )
            return False
        return True

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk per conversation with saved state files (for the UI's list)."""
        return {cid: u.bytes for cid, u in self.files.usage().items()}


def _in_ram(checkpoints: Sequence[Checkpoint]) -> tuple[Checkpoint, ...]:
    """Copies whose bytes live in memory (a file-backed checkpoint may be replaced on disk later)."""
    out = []
    for ck in checkpoints:
        try:
            data = ck.load()
        except StateError:
            continue
        out.append(replace(ck, load=_constant(data)))
    return tuple(out)


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data
