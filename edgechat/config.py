"""Where edgechat keeps its files, and the settings a model is loaded and sampled with."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

APP = "edgechat"
KV_TYPES = ("f16", "q8_0", "q4_0")
COMPACTION_POLICIES = ("summarize", "truncate", "off")


@dataclass(frozen=True)
class Paths:
    """Every location edgechat reads or writes, derived from one home (or platformdirs)."""

    data_dir: Path
    config_dir: Path

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "conversations.db"

    @property
    def states_dir(self) -> Path:
        return self.data_dir / "states"

    @property
    def user_registry(self) -> Path:
        return self.config_dir / "models.toml"

    @property
    def user_config(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def fingerprint_cache(self) -> Path:
        return self.data_dir / "fingerprints.json"

    @property
    def model_cache(self) -> Path:
        """Per-model facts that are slow to work out (GGUF header, special tokens): model_cache.py."""
        return self.data_dir / "model-cache"


def private_dir(path: Path) -> Path:
    """Make sure directory `path` exists; when it is created here, only this user may read it (0700).

    Conversations, KV states (whose token ids are the conversation) and locks live
    under the data directory; a fresh one must not be world-readable under umask 022.
    An existing directory keeps the mode its owner gave it.
    """
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    return path


def local_model_file(spec: str) -> Path | None:
    """The file a model spec names when it is an existing local file (absolute), else None.

    The registry's parse_spec takes such a spec for a path by this test too; here it needs no
    registry import (its hub and PyPI code), so a `-m ./model.gguf` start skips them.
    """
    text = spec.strip()
    if not text or "\0" in text or text.startswith(("http://", "https://", "hf:")):
        return None
    path = Path(os.path.expanduser(text))
    try:
        return path.resolve() if path.is_file() else None
    except (OSError, RuntimeError):
        return None


def resolve_paths(home: str | os.PathLike[str] | None = None) -> Paths:
    """`--home` beats EDGECHAT_HOME beats the platform's user directories."""
    root = home if home is not None else os.environ.get("EDGECHAT_HOME")
    if root:
        base = Path(root).expanduser().resolve()
        return Paths(data_dir=base, config_dir=base)
    import platformdirs

    return Paths(
        data_dir=Path(platformdirs.user_data_dir(APP, appauthor=False)),
        config_dir=Path(platformdirs.user_config_dir(APP, appauthor=False)),
    )


@dataclass(frozen=True)
class EngineSettings:
    """Exactly what llama.cpp is asked to allocate; the planner fills it from the budget.

    A saved KV state is only valid for the same type_k, type_v and flash_attn, so those
    three are part of every state file's header.
    """

    model_path: str
    n_ctx: int = 4096
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool | None = None  # None: on exactly when the V cache is quantized
    gpu_layers: int = 0  # -1 offloads every layer
    threads: int | None = None
    n_batch: int = 512
    n_ubatch: int = 512
    swa_full: bool = False
    seed: int = 0

    @property
    def use_flash_attn(self) -> bool:
        return self.flash_attn if self.flash_attn is not None else self.type_v != "f16"


@dataclass(frozen=True)
class EngineOptions:
    """How the user asked for a model to be loaded; None leaves the choice to config.toml, then
    the planner.

    One value travels from the command line (or the API) to the Runtime, so a reload with
    other settings is `replace(options, **changed)` and nothing of one conversation's settings
    can linger in the next runtime.
    """

    model: str | None = None
    ctx: int | None = None
    type_k: str | None = None
    type_v: str | None = None
    flash_attn: bool | None = None  # None: on exactly when the V cache is quantized
    gpu_layers: str | int | None = None  # "auto", a layer count, -1 for all
    threads: int | None = None  # None: chosen per turn from the machine's load
    budget_mb: int | None = None
    compaction: str | None = None
    swa_full: bool = False
    rpc: tuple[str, ...] = ()  # llama.cpp RPC servers "host:port": their devices take layers like GPUs
    rpc_allow_public: bool = False
    # Disk the saved KV states may take, in MiB (None: config.toml, else the smaller of 20 GiB
    # and 10 % of the free disk). Not an engine setting: it rides here so a reload keeps it.
    state_budget_mb: int | None = None

    def given(self, *, kv_type: str | None = None, **given: Any) -> EngineOptions:
        """These options with keyword options as the CLI and the API spell them (None: not
        given); `kv_type` sets K and V alike unless `type_k`/`type_v` say otherwise."""
        values = {k: v for k, v in given.items() if v is not None}
        if "rpc" in values:  # `--rpc a:1,b:2`, a list, or a tuple
            from .rpc import split_endpoints

            values["rpc"] = split_endpoints(values["rpc"])
        if kv_type is not None:
            values.setdefault("type_k", kv_type)
            values.setdefault("type_v", kv_type)
        return replace(self, **values).checked()

    def checked(self) -> EngineOptions:
        """Itself, or a ConfigError naming the first bad value and what to use instead."""
        for t in (self.type_k, self.type_v):
            if t is not None and t not in KV_TYPES:
                raise ConfigError(f"unknown KV cache type {t!r}", f"use one of {', '.join(KV_TYPES)}")
        if self.compaction is not None and self.compaction not in COMPACTION_POLICIES:
            raise ConfigError(f"unknown compaction policy {self.compaction!r}", f"use one of {COMPACTION_POLICIES}")
        for name, value in (
            ("--ctx", self.ctx), ("--budget-mb", self.budget_mb), ("--threads", self.threads),
            ("--state-budget-mb", self.state_budget_mb),
        ):  # fmt: skip
            if value is not None and value < 1:
                raise ConfigError(
                    f"{name} {value} must be a positive number", f"give {name} a value above 0, or leave it out"
                )
        parse_gpu_layers(self.gpu_layers)
        return self

    def over(self, defaults: Defaults) -> EngineOptions:
        """These options, with config.toml's values where they leave a choice open."""
        return replace(
            self,
            model=self.model or defaults.model or None,
            ctx=self.ctx or defaults.ctx,
            type_k=self.type_k or defaults.kv_type,
            type_v=self.type_v or defaults.kv_type,
            gpu_layers=self.gpu_layers if self.gpu_layers is not None else defaults.gpu_layers,
            threads=self.threads or defaults.threads,
            budget_mb=self.budget_mb or defaults.budget_mb,
            compaction=self.compaction or defaults.compaction,
            rpc=self.rpc or defaults.rpc,
            state_budget_mb=self.state_budget_mb or defaults.state_budget_mb,
        )

    @property
    def kv_label(self) -> str:
        """The KV cache type as asked ("auto": the planner picks)."""
        k, v = self.type_k or "auto", self.type_v or self.type_k or "auto"
        return k if k == v else f"{k}/{v}"


@dataclass(frozen=True)
class SamplingSettings:
    """How a reply is drawn; temperature 0 is greedy and reproducible.

    The defaults keep small models out of loops: llama.cpp's classic repetition penalty
    (1.1 over the last 64 tokens; its own default is now 1.0, i.e. off) measured best on
    the test models (see scripts/bench_sampling.py and README "Sampling"); DRY is
    available but off. The loop guard ends a reply that repeats one span `loop_repeats`
    times in a row (finish_reason "repetition"). A registry model's recommended values
    (models.toml `sampling`) replace these; config.toml, a conversation's settings and
    explicit options replace those in turn.
    """

    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    dry_multiplier: float = 0.0  # > 0 turns llama.cpp's DRY sampler on (0.8 is its usual value)
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_last_n: int = -1  # -1: the whole context
    loop_guard: bool = True
    loop_repeats: int = 3
    seed: int = 0


# The SamplingSettings fields a models.toml `sampling` table, config.toml and the CLI may set.
SAMPLING_KEYS = tuple(f.name for f in fields(SamplingSettings))
_SAMPLING_TYPES: dict[str, type] = {f.name: type(getattr(SamplingSettings(), f.name)) for f in fields(SamplingSettings)}


def check_sampling(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Type- and range-check sampling overrides (from a file or the CLI); ints pass where floats are wanted."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _SAMPLING_TYPES:
            raise ConfigError(f"{where}: unknown sampling key {key!r}", f"use one of: {', '.join(SAMPLING_KEYS)}")
        kind = _SAMPLING_TYPES[key]
        ok = type(value) is kind or (kind is float and type(value) is int)
        if not ok:
            raise ConfigError(f"{where}.{key} = {value!r} must be {kind.__name__}", "fix the value")
        value = kind(value)
        problem = _sampling_range(key, value)
        if problem:
            raise ConfigError(f"{where}.{key} = {value!r} {problem}", "fix the value")
        out[key] = value
    return out


def _sampling_range(key: str, value: Any) -> str:
    """What is wrong with one sampling value ("" when nothing)."""
    if key in ("max_tokens", "loop_repeats", "dry_allowed_length") and value < 1:
        return "must be at least 1"
    if key in ("top_k", "temperature", "presence_penalty", "frequency_penalty", "dry_multiplier") and value < 0:
        return "must not be negative"
    if key in ("top_p", "min_p") and not 0 <= value <= 1:
        return "must be between 0 and 1"
    if key == "repeat_penalty" and value <= 0:
        return "must be positive (1 is off)"
    if key == "dry_base" and value < 1:
        return "must be at least 1"
    if key in ("repeat_last_n", "dry_last_n") and value < -1:
        return "must be -1 (the whole context), 0 (off) or a token count"
    return ""


@dataclass(frozen=True)
class Defaults:
    """User-level defaults from config.toml; every CLI option can override them.

    Sampling keys (any SamplingSettings field: temperature, repeat_penalty, loop_guard, ...)
    are kept in `sampling`, and only the ones the file sets: an unset key leaves the model's
    recommended value (models.toml) in force.
    """

    model: str = ""  # empty: the registry's default (smollm2-135m as shipped)
    system_prompt: str = ""
    kv_type: str | None = None  # None: the planner picks (f16 when it fits, else quantized)
    ctx: int | None = None
    gpu_layers: str = "auto"
    threads: int | None = None
    budget_mb: int | None = None
    state_budget_mb: int | None = None  # None: the smaller of 20 GiB and 10 % of the free disk
    compaction: str = "summarize"
    theme: str = "auto"  # the chat UI's: auto (from the terminal's COLORFGBG), light, dark, or a Textual theme name
    rpc: tuple[str, ...] = ()  # llama.cpp RPC servers ("host:port") whose devices take layers like GPUs
    sampling: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def max_tokens(self) -> int:
        return int(self.sampling.get("max_tokens", SamplingSettings.max_tokens))

    @property
    def temperature(self) -> float:
        return float(self.sampling.get("temperature", SamplingSettings.temperature))

    @property
    def seed(self) -> int:
        return int(self.sampling.get("seed", SamplingSettings.seed))


def load_defaults(paths: Paths) -> Defaults:
    """Read `[defaults]` from config.toml; a broken file is an error naming the file."""
    path = paths.user_config
    if not path.exists():
        return Defaults()
    import tomllib  # here: most starts have no config.toml

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}", "fix the syntax or delete the file") from exc
    section = data.get("defaults", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [defaults] must be a table", "see the README for the format")
    known = {f.name: f for f in fields(Defaults) if f.name not in ("extra", "sampling")}
    values: dict[str, Any] = {}
    sampling: dict[str, Any] = {}
    for key, value in section.items():
        if key in _SAMPLING_TYPES:
            sampling[key] = value
        elif key not in known:
            raise ConfigError(
                f"{path}: unknown key defaults.{key}",
                f"use one of: {', '.join(sorted([*known, *SAMPLING_KEYS]))}",
            )
        else:
            problem = _bad_value(key, value)
            if problem:
                raise ConfigError(f"{path}: defaults.{key} = {_toml_value(value)} {problem}", _VALUE_HINTS[key])
            values[key] = tuple(value) if key == "rpc" else value
    result = replace(Defaults(), **values, sampling=check_sampling(sampling, f"{path}: defaults"))
    if result.kv_type is not None and result.kv_type not in KV_TYPES:
        raise ConfigError(f"{path}: defaults.kv_type = {result.kv_type!r}", f"use one of {KV_TYPES}")
    if result.compaction not in COMPACTION_POLICIES:
        raise ConfigError(
            f"{path}: defaults.compaction = {result.compaction!r}",
            f"use one of {COMPACTION_POLICIES}",
        )
    return result


# What each [defaults] key takes, for the error that names a wrong value.
_VALUE_HINTS = {
    "model": 'a model name or path, e.g. model = "smollm2-135m"',
    "system_prompt": 'a string, e.g. system_prompt = "You are concise."',
    "kv_type": f'one of {", ".join(KV_TYPES)}, e.g. kv_type = "q8_0"',
    "ctx": "a number of tokens, e.g. ctx = 4096",
    "gpu_layers": 'gpu_layers = "auto" or a number of layers (-1: all)',
    "threads": "a number of CPU threads, e.g. threads = 4",
    "budget_mb": "a number of MiB, e.g. budget_mb = 2048",
    "state_budget_mb": "the MiB of disk saved KV states may take, e.g. state_budget_mb = 10240",
    "compaction": f"one of {', '.join(COMPACTION_POLICIES)}",
    "max_tokens": "a number of tokens, e.g. max_tokens = 512",
    "temperature": "a number from 0 (greedy), e.g. temperature = 0.7",
    "seed": "a whole number, e.g. seed = 0",
    "theme": 'auto, light, dark or a Textual theme name, e.g. theme = "auto"',
    "rpc": 'a list of llama.cpp RPC servers, e.g. rpc = ["127.0.0.1:50052"]',
}
_STRINGS = ("model", "system_prompt", "kv_type", "compaction", "theme")
_POSITIVE = ("ctx", "threads", "budget_mb", "state_budget_mb", "max_tokens")


def _toml_value(v: Any) -> str:
    """A value as config.toml spells it, for error messages."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    import json

    return json.dumps(v, ensure_ascii=False)


def _bad_value(key: str, value: Any) -> str:
    """Why `value` cannot be defaults.`key` ("" when it can): TOML types are checked here, not on use."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if key in _STRINGS:
        return "" if isinstance(value, str) else "is not a string"
    if key in _POSITIVE:
        return "" if is_int and value > 0 else "is not a positive whole number"
    if key == "seed":
        return "" if is_int else "is not a whole number"
    if key == "temperature":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        return "" if ok else "is not a number >= 0"
    if key == "gpu_layers":
        return "" if value == "auto" or is_int else 'is not "auto" or a whole number'
    if key == "rpc":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return "" if ok else "is not a list of strings"
    return ""


def parse_gpu_layers(value: str | int | None) -> str | int:
    """`--gpu-layers` / defaults.gpu_layers as "auto" or an int (-1: all), or a ConfigError."""
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(
            f"--gpu-layers {value!r} is not auto or a number", "use --gpu-layers auto, 0, a layer count, or -1 for all"
        ) from None


def save_default(paths: Paths, key: str, value: Any) -> None:
    """Write one default into config.toml in place; None removes it (TOML has no null).

    The file is the user's: it is edited with tomlkit, so comments, formatting and any other
    table survive, and replaced atomically (a crash leaves the old file or the new one).
    """
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    path = paths.user_config
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        doc = tomlkit.parse(text)
    except (TOMLKitError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}", "fix the syntax or delete the file, then save again") from exc
    section = doc.get("defaults")
    if section is None:
        section = tomlkit.table()
        doc["defaults"] = section
    elif not isinstance(section, dict):
        raise ConfigError(f"{path}: [defaults] must be a table", "see the README for the format")
    if value is None:
        if key in section:
            del section[key]
    else:
        section[key] = value
    _write_atomic(path, tomlkit.dumps(doc))


def _write_atomic(path: Path, text: str) -> None:
    """Replace a file the user may also edit: a unique temporary file, fsync, rename; its mode is kept."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.chmod(tmp, path.stat().st_mode & 0o777)
        except FileNotFoundError:
            os.chmod(tmp, 0o600)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
