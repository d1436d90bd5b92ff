"""Memory pressure: give the context's memory back when the machine needs it, take it again
when the machine has room to spare.

The planner sizes the context once, at load, from what is free then; llama.cpp then holds the
whole KV cache from the first token. Other programs come and go afterwards. This module
watches free memory against the floor the planner keeps for them (`planner.ram_floor`, and
the VRAM margin on the GPU holding the cache) and decides; `session.Runtime` acts (saves the
live state, recreates the context from the loaded model, restores what fits).

- **Shrink, at once**, when free memory is below the floor: re-plan with what is free now plus
  what this process's model holds (it is ours to give back). The cache keeps its K/V types
  when a context of them still holds the live conversation (its state is then restored, not
  re-prefilled); otherwise the planner picks (a quantized cache), and fewer GPU layers only
  when no context fits the layers in place. When nothing fits, the smallest context.
- **Grow back**, when a bigger plan has fitted with `margin_bytes` to spare for `hold_s`
  seconds (hysteresis: a machine whose free memory flaps around the floor does not reload
  every turn), toward the plan the model was loaded with and never beyond it: that plan is
  what the user asked for (an explicit --ctx, --kv-type, --budget-mb) as the machine allowed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

from .errors import BudgetError, ConfigError
from .memory import MemorySnapshot
from .planner import MIN_CTX, MIN_UBATCH, VRAM_MARGIN, VRAM_MARGIN_SHARE, Estimate, Plan, ram_floor

MiB = 1 << 20
FLOOR_ENV = "EDGECHAT_MEMORY_FLOOR_MB"  # a fixed RAM floor in MiB ("off": never re-plan)
HOLD_ENV = "EDGECHAT_GROW_HOLD_S"
MARGIN_ENV = "EDGECHAT_GROW_MARGIN_MB"
SETTLE_ENV = "EDGECHAT_REPLAN_SETTLE_S"
DEFAULT_HOLD_S = 60.0
DEFAULT_MARGIN = 256 * MiB
# After a re-plan the kernel's free-memory figure lags what the process gave back: freed pages
# sit in per-CPU lists, and on VMs with free-page reporting (virtio-balloon) they come back
# over 10-20 s (measured here: 200 MiB freed showed as +117 MiB after 11 s, +160 after 19 s).
# For this long after a shrink, what it gave back counts as free, so a look at the stale figure
# does not shrink again for a shortage already met (a new shortage still does); no growing meanwhile.
DEFAULT_SETTLE_S = 20.0
MIN_GAIN = 8 * MiB  # a re-plan that gives back less is not worth a new context
KV_RANK = {"q4_0": 0, "q8_0": 1, "f16": 2}


@dataclass(frozen=True)
class PressureOptions:
    """How the runtime watches memory. `floor_bytes` None: the planner's own floor."""

    floor_bytes: int | None = None
    hold_s: float = DEFAULT_HOLD_S  # free memory must stay up this long before the context grows back
    margin_bytes: int = DEFAULT_MARGIN  # ...with this much to spare beyond the bigger plan
    settle_s: float = DEFAULT_SETTLE_S  # the free figure lags a re-plan this long (see DEFAULT_SETTLE_S)
    watch: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PressureOptions:
        """EDGECHAT_MEMORY_FLOOR_MB (MiB, or "off"), EDGECHAT_GROW_HOLD_S, EDGECHAT_GROW_MARGIN_MB,
        EDGECHAT_REPLAN_SETTLE_S."""
        env = os.environ if env is None else env
        out = cls()
        floor = env.get(FLOOR_ENV, "").strip()
        if floor.lower() == "off":
            out = replace(out, watch=False)
        elif floor:
            out = replace(out, floor_bytes=int(_number(FLOOR_ENV, floor) * MiB))
        if env.get(HOLD_ENV, "").strip():
            out = replace(out, hold_s=_number(HOLD_ENV, env[HOLD_ENV]))
        if env.get(MARGIN_ENV, "").strip():
            out = replace(out, margin_bytes=int(_number(MARGIN_ENV, env[MARGIN_ENV]) * MiB))
        if env.get(SETTLE_ENV, "").strip():
            out = replace(out, settle_s=_number(SETTLE_ENV, env[SETTLE_ENV]))
        return out


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ConfigError(f"{name}={text!r} is not a number of zero or more", f"set {name} to e.g. 1024, or unset it")
    return value


@dataclass(frozen=True)
class Reading:
    """Free memory against the floor at one moment, and the machine a re-plan would see.

    `floor` is what the planner keeps for the rest of the machine (or the fixed floor);
    `ram_floor` adds the part of the live plan that is not resident yet (llama.cpp touches
    its compute buffer only as graphs need it), which can still become resident: free RAM
    below `ram_floor` means the live plan no longer fits what a fresh plan would be given.
    """

    ram_free: int
    ram_floor: int
    floor: int = 0
    credit: int = 0  # given back by the last shrink, not shown by the kernel yet (Watcher.credit)
    vram_free: int | None = None  # only when the model's cache lives on a GPU
    vram_floor: int | None = None
    # The snapshot with this process's model memory handed back (what a fresh plan would see).
    machine: MemorySnapshot | None = field(default=None, repr=False, compare=False)

    @property
    def ram_low(self) -> bool:
        return self.ram_free + self.credit < self.ram_floor

    @property
    def vram_low(self) -> bool:
        return self.vram_free is not None and self.vram_floor is not None and self.vram_free < self.vram_floor

    @property
    def pressed(self) -> bool:
        return self.ram_low or self.vram_low

    def describe(self) -> str:
        """E.g. "free RAM fell to 0.9 GB (floor 1.2 GB)": the resource that is short, or RAM."""
        if self.vram_low and not self.ram_low:
            assert self.vram_free is not None and self.vram_floor is not None
            return f"free VRAM fell to {gb(self.vram_free)} (floor {gb(self.vram_floor)})"
        return f"free RAM fell to {gb(self.ram_free)} (floor {gb(self.ram_floor)})"

    def with_margin(self, margin: int) -> MemorySnapshot:
        """The machine with `margin` less free RAM and VRAM: what a grow must still leave spare."""
        assert self.machine is not None
        m = self.machine
        gpus = tuple(replace(g, free=max(0, g.free - margin)) for g in m.gpus)
        return replace(m, ram_available=max(0, m.ram_available - margin), gpus=gpus)


def read(
    snapshot: MemorySnapshot, current: Estimate, options: PressureOptions, held: int | None = None, credit: int = 0
) -> Reading:
    """Free memory now against the floor, for a model whose live settings cost `current` and
    which holds `held` bytes of anonymous memory now (measured; None: take the plan's word).
    `credit`: memory a shrink just gave back that the kernel does not show yet.

    What a re-plan may use is what is free plus what this model holds: measured, not planned,
    so that memory moving between this process and the free pool (a shrink, a grow) leaves
    the sum unchanged, and a re-plan is not followed by another one for the same shortage.
    The floor is the planner's own (a quarter of that sum, plus its margin) unless `options`
    fix one. VRAM is watched only when the cache is on a GPU (allocated in full, as planned).
    """
    need = current.total if snapshot.unified else current.total_cpu
    ours = need if held is None or snapshot.unified else max(0, held)
    available = snapshot.ram_available + credit + ours
    floor = options.floor_bytes if options.floor_bytes is not None else ram_floor(available)
    # Free RAM must cover the floor plus what the plan can still grow into.
    floor_now = floor + max(0, need - ours)
    gpus = snapshot.gpus
    vram_free = vram_floor = None
    if current.total_gpu and gpus and not snapshot.unified:
        vram_free = sum(g.free for g in gpus)
        vram_floor = sum(max(VRAM_MARGIN, int(VRAM_MARGIN_SHARE * g.total)) for g in gpus)
        # Our VRAM goes back to the card that holds most (llama.cpp splits layers; the planner
        # budgets the cards' free memory as one sum).
        i = max(range(len(gpus)), key=lambda k: gpus[k].used)
        g = gpus[i]
        back = replace(g, free=g.free + current.total_gpu, used=max(0, g.used - current.total_gpu))
        gpus = (*gpus[:i], back, *gpus[i + 1 :])
    machine = replace(snapshot, ram_available=available, gpus=gpus)
    return Reading(snapshot.ram_available, floor_now, floor, credit, vram_free, vram_floor, machine)


class Decision(NamedTuple):
    direction: str  # "shrink" | "grow"
    plan: Plan
    reason: str


# replan(ram_floor, machine, ctx=, types=, gpu_layers=, n_ubatch=) -> Plan, raising BudgetError:
# the Runtime binds the model and the user's options (planner.plan underneath).
Replanner = Callable[..., Plan]


def _key(e: Estimate) -> tuple[int, int, int, int]:
    return (e.n_ctx, KV_RANK.get(e.type_k, 0) + KV_RANK.get(e.type_v, 0), e.gpu_layers, e.n_ubatch)


def better(a: Estimate, b: Estimate) -> bool:
    """`a` gives at least as much as `b` in every setting (context, cache precision, GPU layers,
    micro-batch) and more in one."""
    ka, kb = _key(a), _key(b)
    return ka != kb and all(x >= y for x, y in zip(ka, kb, strict=True))


def same_settings(a: Estimate, b: Estimate) -> bool:
    return _key(a) == _key(b) and (a.type_k, a.type_v) == (b.type_k, b.type_v)


class Watcher:
    """Decides, at each look, whether the live context should shrink or grow (see the module doc)."""

    def __init__(self, options: PressureOptions) -> None:
        self.options = options
        self._room_since: float | None = None  # since when a bigger plan has fitted
        self._last: float | None = None  # when the last re-plan was made
        self._given = 0  # what it gave back (measured), not yet trusted to show as free
        self.stuck = False  # pressed, and even the smallest context would give nothing back

    def reset(self) -> None:
        """A model was (re)loaded: nothing observed so far applies."""
        self._room_since = None
        self._last = None
        self._given = 0
        self.stuck = False

    def made(self, now: float, given_back: int) -> None:
        """A re-plan was carried out, giving back `given_back` bytes (measured; < 0: it took)."""
        self._last = now
        self._given = max(0, given_back)

    def settling(self, now: float) -> bool:
        """Too soon after the last re-plan to trust the free-memory figure (see DEFAULT_SETTLE_S)."""
        return self._last is not None and now - self._last < self.options.settle_s

    def credit(self, now: float) -> int:
        """Memory the last shrink gave back that the kernel may not show yet: counted as free
        until `settle_s` has passed, then the kernel's figure is trusted again."""
        return self._given if self.settling(now) else 0

    def decide(
        self,
        reading: Reading,
        now: float,
        current: Plan,
        base: Plan,
        replan: Replanner,
        *,
        live_tokens: int = 0,
        types_fixed: bool = False,
        layers_fixed: bool = False,
    ) -> Decision | None:
        """`current`: the live plan; `base`: the plan at load (the ceiling for growing back);
        `live_tokens`: what the live conversation holds (a context of the same K/V types that
        keeps it is preferred); `types_fixed`/`layers_fixed`: the user chose them. The reading
        should count `credit(now)` as held. Call `made` once a decision is carried out."""
        if reading.pressed:
            self._room_since = None
            new = self._smaller(reading, current, base, replan, live_tokens, types_fixed, layers_fixed)
            if new is None:
                self.stuck = True
                return None
            self.stuck = False
            return Decision("shrink", new, reading.describe())
        self.stuck = False
        if self.settling(now):
            self._room_since = None  # the hold-off counts from when the figures can be trusted
            return None
        bigger = None if not better(base, current) else self._bigger(reading, current, base, replan)
        if bigger is None:
            self._room_since = None
            return None
        if self._room_since is None:
            self._room_since = now
        held = now - self._room_since
        if held < self.options.hold_s:
            return None
        self._room_since = None
        return Decision("grow", bigger, f"free RAM back at {gb(reading.ram_free)} for {held:.0f} s")

    def _smaller(
        self,
        reading: Reading,
        current: Plan,
        base: Plan,
        replan: Replanner,
        live_tokens: int,
        types_fixed: bool,
        layers_fixed: bool,
    ) -> Plan | None:
        floor, machine = reading.floor, reading.machine
        keep = (current.type_k, current.type_v)

        def attempt(**kw: Any) -> Plan | None:
            try:
                return replan(floor, machine, ctx=base.n_ctx, **kw)
            except BudgetError:
                return None

        same = attempt(types=keep, gpu_layers=current.gpu_layers)
        if types_fixed or (same is not None and live_tokens and same.n_ctx > live_tokens):
            pick = same
        else:
            pick = attempt(types=None, gpu_layers=current.gpu_layers) or same
        if pick is None and current.gpu_layers and not layers_fixed:
            pick = attempt(types=keep if types_fixed else None, gpu_layers="auto")
        if pick is None:
            # Nothing fits what is free: give back all that can be given, the smallest context.
            cheapest = keep if types_fixed else ("q4_0", "q4_0")  # V stays f16 where flash attention is off
            try:
                pick = replan(
                    0, machine, ctx=min(MIN_CTX, base.n_ctx), types=cheapest, gpu_layers=current.gpu_layers,
                    n_ubatch=MIN_UBATCH,
                )  # fmt: skip
            except BudgetError:
                return None
        if same_settings(pick, current):
            return None
        gives_back = (reading.ram_low and _ram(pick, reading) + MIN_GAIN <= _ram(current, reading)) or (
            reading.vram_low and pick.total_gpu + MIN_GAIN <= current.total_gpu
        )
        return pick if gives_back else None

    def _bigger(self, reading: Reading, current: Plan, base: Plan, replan: Replanner) -> Plan | None:
        machine = reading.with_margin(self.options.margin_bytes)
        for types, layers in (
            ((base.type_k, base.type_v), base.gpu_layers),
            ((current.type_k, current.type_v), current.gpu_layers),
        ):
            try:
                p = replan(reading.floor, machine, ctx=base.n_ctx, types=types, gpu_layers=layers)
            except BudgetError:
                continue
            if better(p, current):
                return p
        return None


def _ram(e: Estimate, reading: Reading) -> int:
    unified = reading.machine is not None and reading.machine.unified
    return e.total if unified else e.total_cpu


@dataclass(frozen=True)
class Replan:
    """One re-plan of the live context: what changed, why, and what it cost.

    `send --json` and the server's `edgechat` object carry it as `replan` (null when none).
    `planned_before`/`planned_after` are the planner's figures for the two settings (host
    memory; VRAM in `planned_gpu_*`); `restored`: the live conversation's cache came back into
    the new context (no re-prefill); `reloaded_model`: the GPU layer split changed, so the
    model was loaded again (a context change alone keeps it).
    """

    reason: str
    direction: str  # "shrink" | "grow"
    ctx_before: int
    ctx_after: int
    kv_before: str
    kv_after: str
    gpu_layers_before: int
    gpu_layers_after: int
    n_ubatch_before: int
    n_ubatch_after: int
    ram_free: int
    ram_floor: int
    planned_before: int
    planned_after: int
    planned_kv_before: int
    planned_kv_after: int
    planned_gpu_before: int
    planned_gpu_after: int
    conversation_id: str | None
    live_tokens: int
    restored: bool
    reloaded_model: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, compacted: int = 0, policy: str = "", *, in_turn: bool = False) -> str:
        """The one notice: "free RAM fell to 0.9 GB (floor 1.2 GB): context 8,192 → 2,048 tokens,
        KV q8_0; 6 old turns summarized". `compacted`: turns the turn that followed compacted;
        `in_turn`: said by that turn (else between turns, before the conversation's next one)."""
        changes = [
            f"context {self.ctx_before:,} → {self.ctx_after:,} tokens"
            if self.ctx_after != self.ctx_before
            else f"context stays {self.ctx_after:,} tokens"
        ]
        if self.kv_after != self.kv_before:
            changes.append(f"KV {self.kv_after}")
        if self.gpu_layers_after != self.gpu_layers_before:
            changes.append(f"{self.gpu_layers_after} GPU layers")
        if self.n_ubatch_after != self.n_ubatch_before:
            changes.append(f"n_ubatch {self.n_ubatch_after}")
        text = f"{self.reason}: " + ", ".join(changes)
        if compacted:
            done = "summarized" if policy == "summarize" else "dropped from the context (kept in the transcript)"
            return f"{text}; {compacted} old turn{'s' if compacted != 1 else ''} {done}"
        if self.live_tokens and self.restored:
            return f"{text}; the conversation's cache was kept ({self.live_tokens:,} tokens)"
        if self.live_tokens and in_turn:
            return f"{text}; the conversation is read again from its transcript"
        if self.live_tokens and self.live_tokens >= self.ctx_after:
            return f"{text}; the conversation ({self.live_tokens:,} tokens) no longer fits: its next turn compacts it"
        if self.live_tokens:
            return f"{text}; the conversation is rebuilt from its transcript on its next turn"
        return text


def gb(n: int) -> str:
    """Bytes as the notices say them: 0.9 GB, 512 MB."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GB"
    return f"{n / MiB:.0f} MB"
