"""Where edgechat keeps its files, and the settings a model is loaded and sampled with."""

from __future__ import annotations

import os
import tomllib
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
    swa_full: bool = True
    seed: int = 0

    @property
    def use_flash_attn(self) -> bool:
        return self.flash_attn if self.flash_attn is not None else self.type_v != "f16"


@dataclass(frozen=True)
class SamplingSettings:
    """How a reply is drawn; temperature 0 is greedy and reproducible."""

    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Defaults:
    """User-level defaults from config.toml; every CLI option can override them."""

    model: str = ""  # empty: the registry's default (smollm2-135m as shipped)
    system_prompt: str = ""
    kv_type: str | None = None  # None: the planner picks (f16 when it fits, else quantized)
    ctx: int | None = None
    gpu_layers: str = "auto"
    threads: int | None = None
    budget_mb: int | None = None
    compaction: str = "summarize"
    max_tokens: int = 512
    temperature: float = 0.7
    seed: int = 0
    theme: str = "auto"  # the chat UI's: auto (from the terminal's COLORFGBG), light, dark, or a Textual theme name
    extra: dict[str, Any] = field(default_factory=dict)


def load_defaults(paths: Paths) -> Defaults:
    """Read `[defaults]` from config.toml; a broken file is an error naming the file."""
    path = paths.user_config
    if not path.exists():
        return Defaults()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}", "fix the syntax or delete the file") from exc
    section = data.get("defaults", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [defaults] must be a table", "see the README for the format")
    known = {f.name: f for f in fields(Defaults) if f.name != "extra"}
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in known:
            raise ConfigError(
                f"{path}: unknown key defaults.{key}",
                f"use one of: {', '.join(sorted(known))}",
            )
        values[key] = value
    result = replace(Defaults(), **values)
    if result.kv_type is not None and result.kv_type not in KV_TYPES:
        raise ConfigError(f"{path}: defaults.kv_type = {result.kv_type!r}", f"use one of {KV_TYPES}")
    if result.compaction not in COMPACTION_POLICIES:
        raise ConfigError(
            f"{path}: defaults.compaction = {result.compaction!r}",
            f"use one of {COMPACTION_POLICIES}",
        )
    return result


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
