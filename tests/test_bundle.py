"""Portable conversations: export a bundle in one data directory, import it in another.

The importing home stands for another machine: its next turn resumes from the bundled state
(same model file, llama.cpp build and KV types) or re-reads the transcript with one notice.
A bundle that was tampered with or cut short is refused with one line, and nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest

from edgechat.bundle import BundleError, export_bundle, import_bundle
from edgechat.config import resolve_paths
from edgechat.errors import ModelError
from edgechat.state import StateFiles
from edgechat.store import NewMessage, Store

from .conftest import run_cli

FIRST = "My name is Ada and I keep bees. Say hello."
SECOND = "What do I keep?"


def _runtime(home: Path, model: Path | None = None, **kw):
    """A runtime on `home`; without `model` a turn loads the conversation's own model spec."""
    from edgechat import Runtime

    kw.setdefault("ctx", 1024)
    return Runtime(model=str(model) if model else None, home=home, threads=2, **kw)


def _turn(home: Path, cid: str, model: Path | None = None, **kw):
    with _runtime(home, model, **kw) as rt:
        return rt.conversation(cid).send(SECOND, max_tokens=16, temperature=0)


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> dict:
    """One turn in home A, its bundle (written by the CLI), then A's own next turn in a new
    runtime: what an import elsewhere must reproduce."""
    root = tmp_path_factory.mktemp("origin")
    home = root / "a"
    with _runtime(home) as rt:
        conv = rt.new_conversation(model=str(smollm2))
        conv.send(FIRST, max_tokens=16, temperature=0)
        cid = conv.id
    out = root / "out"
    out.mkdir()
    bundle = out / "ada.edgechat"
    p = run_cli("conversations", "export", cid[:5], "--bundle", str(bundle), "--json", home=home)
    assert p.returncode == 0, p.stderr
    second = _turn(home, cid)
    assert second.stats.restored_from == "state"
    return {"home": home, "cid": cid, "bundle": bundle, "export": json.loads(p.stdout), "second": second}


def _members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _repack(src: Path, dest: Path, edit: Callable[[dict[str, bytes]], None], *, resign: bool = True) -> Path:
    """A copy of bundle `src` with its members edited; `resign` rewrites the manifest to match
    (a careful forger), otherwise the old manifest stays (a careless edit)."""
    members = _members(src)
    edit(members)
    if resign:
        manifest = json.loads(members["manifest.json"])
        manifest["members"] = [
            {"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
            for n, d in members.items()
            if n != "manifest.json"
        ]
        members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dest, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dest


def _edit_json(name: str, change: Callable[[dict], None]) -> Callable[[dict[str, bytes]], None]:
    def edit(members: dict[str, bytes]) -> None:
        doc = json.loads(members[name])
        change(doc)
        members[name] = json.dumps(doc).encode()

    return edit


def _transcript(home: Path, cid: str) -> list[dict]:
    """Every message with its flags, without the store's own row ids."""
    store = Store(resolve_paths(home).db_path)
    try:
        return [{k: v for k, v in asdict(m).items() if k not in ("id", "conversation_id")} for m in store.messages(cid)]
    finally:
        store.close()


# export and import ----------------------------------------------------------------------------


def test_the_bundle_is_one_private_file_with_a_checked_manifest(origin):
    bundle: Path = origin["bundle"]
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert os.listdir(bundle.parent) == [bundle.name]  # no temp file left beside it
    data = origin["export"]
    assert data["conversation_id"] == origin["cid"] and data["state"] is True and data["messages"] == 2
    assert data["bytes"] == bundle.stat().st_size and data["state_bytes"] > 0
    members = _members(bundle)
    assert set(members) == {"manifest.json", "conversation.json", "state.json", "state.kv"}
    manifest = json.loads(members["manifest.json"])
    assert (manifest["format"], manifest["version"], manifest["conversation_id"]) == (
        "edgechat-bundle",
        1,
        origin["cid"],
    )
    for m in manifest["members"]:
        assert len(members[m["name"]]) == m["size"]
        assert hashlib.sha256(members[m["name"]]).hexdigest() == m["sha256"]
    header = json.loads(members["state.json"])
    assert header["conversation_id"] == origin["cid"] and header["payload"] == "state.kv"


def test_an_imported_conversation_resumes_from_the_bundled_state_with_the_same_reply(origin, tmp_path):
    home = tmp_path / "b"
    p = run_cli("conversations", "import", str(origin["bundle"]), "--json", home=home)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["conversation_id"] == data["source_id"] == origin["cid"]
    assert data["state"] is True and data["model_here"] is True and data["notices"] == []
    assert _transcript(home, origin["cid"]) == _transcript(origin["home"], origin["cid"])[:2]
    r = _turn(home, origin["cid"])  # no -m: the conversation's own model spec travelled with it
    want = origin["second"]
    assert r.stats.restored_from == "state", r.notices
    assert r.notices == ()
    assert r.stats.prefill_tokens == want.stats.prefill_tokens < r.stats.context_tokens / 2
    assert r.text == want.text


def test_an_existing_id_is_refused_and_as_new_imports_a_copy_under_a_fresh_id(origin, tmp_path):
    home = tmp_path / "c"
    paths = resolve_paths(home)
    cid = origin["cid"]
    import_bundle(paths, origin["bundle"])
    header_before = (home / "states" / f"{cid}.json").read_bytes()

    with pytest.raises(BundleError) as caught:
        import_bundle(paths, origin["bundle"])
    assert "already here" in caught.value.message and "--as-new" in caught.value.hint
    assert "\n" not in str(caught.value)
    assert len(_transcript(home, cid)) == 2
    assert (home / "states" / f"{cid}.json").read_bytes() == header_before

    copy = import_bundle(paths, origin["bundle"], as_new=True)
    assert copy.conversation_id != cid and copy.source_id == cid
    assert StateFiles(paths.states_dir).read_header(copy.conversation_id).conversation_id == copy.conversation_id
    assert _transcript(home, copy.conversation_id) == _transcript(home, cid)
    r = _turn(home, copy.conversation_id)
    assert r.stats.restored_from == "state", r.notices
    assert r.text == origin["second"].text


def test_a_bundle_that_does_not_fit_this_machine_resumes_from_the_transcript_with_one_notice(origin, tmp_path):
    """Another model file (its sha256) or another KV type: each one a re-read of the transcript
    and one notice naming why. Another llama.cpp build whose state format this one reads still
    resumes from the bundled state (issue 17: upgrades keep the states that load). (One home,
    copies imported --as-new, so two runtimes serve the turns.)"""
    home = tmp_path / "d"
    paths = resolve_paths(home)

    def imported(field: str | None, value: str | None = None) -> str:
        bundle = origin["bundle"]
        if field is not None:
            edit = _edit_json("state.json", lambda h: h.update({field: value}))
            bundle = _repack(bundle, tmp_path / f"{field}.edgechat", edit)
        result = import_bundle(paths, bundle, as_new=True)
        assert result.state is True
        return result.conversation_id

    cases = {
        "different model file": (imported("model_fingerprint", "0" * 64), "f16"),
        "f16/f16": (imported(None), "q8_0"),  # the bundle is right; this machine asks for a q8_0 cache
    }
    for kv in ("f16", "q8_0"):
        with _runtime(home, kv_type=kv) as rt:
            for k, (said, (cid, _)) in enumerate((s, c) for s, c in cases.items() if c[1] == kv):
                r = rt.conversation(cid).send(SECOND, max_tokens=2, temperature=0)
                assert r.stats.restored_from == "transcript", said
                assert len(r.notices) == 1 and "not used" in r.notices[0] and said in r.notices[0], r.notices
                if k == 0:  # (a second copy finds its identical tokens still in the live cache)
                    assert r.stats.prefill_tokens > r.stats.context_tokens / 2  # the history, re-read
    other_build = imported("llama_build", "llama-cpp-python 0.0.1")
    with _runtime(home, kv_type="f16") as rt:
        rt.cache.claim(None)  # nothing of the copies above in the live cache
        r = rt.conversation(other_build).send(SECOND, max_tokens=2, temperature=0)
        assert r.stats.restored_from == "state", r.notices


# refused bundles ------------------------------------------------------------------------------


def _flip_in_place(src: Path, dest: Path) -> Path:
    """One byte of the payload flipped inside the archive as written (zip's own CRC sees it)."""
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo("state.kv")
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x01
    dest.write_bytes(bytes(raw))
    return dest


def _flip(members: dict[str, bytes]) -> None:
    data = bytearray(members["state.kv"])
    data[len(data) // 2] ^= 0x01
    members["state.kv"] = bytes(data)


def _lie_about_size(members: dict[str, bytes]) -> None:
    manifest = json.loads(members["manifest.json"])
    for m in manifest["members"]:
        if m["name"] == "state.kv":
            m["size"] += 1
    members["manifest.json"] = json.dumps(manifest).encode()


TAMPERED: dict[str, Callable[[Path, Path], Path]] = {
    "payload-byte-flipped": _flip_in_place,
    "payload-byte-flipped-and-repacked": lambda s, d: _repack(s, d, _flip, resign=False),
    "truncated-file": lambda s, d: (d.write_bytes(s.read_bytes()[: s.stat().st_size // 2]), d)[1],
    "manifest-lies-about-a-size": lambda s, d: _repack(s, d, _lie_about_size, resign=False),
    "payload-cut-and-manifest-re-signed": lambda s, d: _repack(
        s, d, lambda m: m.update({"state.kv": m["state.kv"][:-100]})
    ),
    "state-of-another-conversation": lambda s, d: _repack(
        s, d, _edit_json("state.json", lambda h: h.update({"conversation_id": "deadbeef"}))
    ),
    "a-member-outside-the-format": lambda s, d: _repack(s, d, lambda m: m.update({"run.sh": b"rm -rf ~"})),
    "an-id-that-is-a-path": lambda s, d: _repack(
        s, d, _edit_json("conversation.json", lambda c: c["conversation"].update({"id": "../x"}))
    ),
    "a-newer-bundle-version": lambda s, d: _repack(
        s, d, _edit_json("manifest.json", lambda m: m.update({"version": 99})), resign=False
    ),
    "not-a-bundle": lambda s, d: (d.write_text("hello"), d)[1],
}


@pytest.mark.parametrize("damage", list(TAMPERED))
def test_a_tampered_or_truncated_bundle_is_refused_with_one_line_and_nothing_written(origin, tmp_path, damage):
    bad = TAMPERED[damage](origin["bundle"], tmp_path / "bad.edgechat")
    home = tmp_path / "e"
    with pytest.raises(BundleError) as caught:
        import_bundle(resolve_paths(home), bad)
    assert "\n" not in str(caught.value) and str(bad) in str(caught.value)
    if damage == "a-newer-bundle-version":
        assert "upgrade edgechat" in str(caught.value)
    assert not home.exists()


def test_the_cli_refuses_a_tampered_bundle_in_one_line(origin, tmp_path):
    bad = _flip_in_place(origin["bundle"], tmp_path / "bad.edgechat")
    home = tmp_path / "f"
    p = run_cli("conversations", "import", str(bad), home=home)
    assert p.returncode == 1
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "damaged or changed after export" in p.stderr and "export it again" in p.stderr
    assert not home.exists()


# the transcript, the model spec ----------------------------------------------------------------


def test_a_conversation_without_a_state_travels_as_its_transcript_with_every_flag(tmp_path):
    src, dest = resolve_paths(tmp_path / "src"), resolve_paths(tmp_path / "dest")
    store = Store(src.db_path)
    settings = {"system_prompt": "Be brief.", "compaction": "truncate", "temperature": 0.3}
    rec = store.create_conversation("smollm2-135m", settings, "Flags")
    first = store.append_turn(rec.id, [NewMessage("user", "one", tokens=1), NewMessage("assistant", "two", tokens=1)])
    rows = store.begin_turn(rec.id, NewMessage("user", "three", tokens=1), replace_ids=[first[1].id])
    summary = NewMessage("system", "they counted", kind="summary")
    store.finish_turn(rec.id, rows, "fo", 1, reason="stopped", compact_ids=[first[0].id], summary=summary)
    store.close()

    out = export_bundle(src, rec.id, tmp_path / "flags.edgechat")
    assert out.state is False and out.messages == 5
    assert set(_members(tmp_path / "flags.edgechat")) == {"manifest.json", "conversation.json"}
    got = import_bundle(dest, tmp_path / "flags.edgechat")
    assert got.state is False
    assert _transcript(dest.data_dir, rec.id) == _transcript(src.data_dir, rec.id)
    flags = {
        (m["kind"], m["compacted"], m["replaced"], m["partial"], m["reason"])
        for m in _transcript(dest.data_dir, rec.id)
    }
    assert ("summary", False, False, False, None) in flags and ("message", False, False, True, "stopped") in flags
    assert ("message", True, False, False, None) in flags and ("message", False, True, False, None) in flags
    store = Store(dest.db_path)
    try:
        imported = store.conversation(rec.id)
    finally:
        store.close()
    assert (imported.title, imported.model, imported.settings) == ("Flags", "smollm2-135m", settings)


def test_a_damaged_state_is_left_out_of_the_bundle_with_a_notice(origin, tmp_path):
    home = tmp_path / "copy"
    shutil.copytree(origin["home"], home)
    payload = next((home / "states").glob(f"{origin['cid']}-*.kv"))
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0x01
    payload.write_bytes(bytes(data))
    out = export_bundle(resolve_paths(home), origin["cid"], tmp_path / "t.edgechat")
    assert out.state is False and len(out.notices) == 1 and "checksum" in out.notices[0], out.notices
    assert set(_members(tmp_path / "t.edgechat")) == {"manifest.json", "conversation.json"}


def _moved_model(origin, tmp_path: Path) -> Path:
    """The origin bundle as if its model file lived at a path this machine does not have."""
    gone = "/nonexistent/models/SmolLM2-135M-Instruct.Q4_1.gguf"

    def move(c: dict) -> None:
        c["conversation"]["model"] = gone
        c["model"]["spec"] = gone

    return _repack(origin["bundle"], tmp_path / "moved.edgechat", _edit_json("conversation.json", move))


def test_a_model_path_missing_here_is_a_notice_at_import_and_a_hint_at_the_next_turn(origin, tmp_path):
    home = tmp_path / "g"
    got = import_bundle(resolve_paths(home), _moved_model(origin, tmp_path))
    assert got.model_here is False
    assert len(got.notices) == 1 and "-m NAME|PATH" in got.notices[0], got.notices
    with _runtime(home) as rt, pytest.raises(ModelError) as caught:
        rt.conversation(origin["cid"]).send(SECOND, max_tokens=4, temperature=0)
    assert "not on this machine" in caught.value.message and "-m NAME|PATH" in caught.value.hint


def test_a_model_path_missing_here_is_found_by_its_sha256_among_the_local_models(origin, tmp_path, smollm2):
    home = tmp_path / "h"
    (home / "models").mkdir(parents=True)
    os.symlink(smollm2, home / "models" / "smol.gguf")
    got = import_bundle(resolve_paths(home), _moved_model(origin, tmp_path))
    assert got.model_here is True and Path(got.model) == smollm2.resolve()
    assert len(got.notices) == 1 and "the same file" in got.notices[0]


# checkpoints -------------------------------------------------------------------------------------


def test_checkpoints_travel_and_a_hybrid_resumes_from_them_with_the_same_reply(tiny_qwen35, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with _runtime(a, tiny_qwen35, ctx=2048) as rt:
        conv = rt.new_conversation()
        conv.send("First message about boats.", max_tokens=8, temperature=0)
        cid = conv.id
    out = export_bundle(resolve_paths(a), cid, tmp_path / "hybrid.edgechat")
    assert out.checkpoints >= 1
    assert {f"state.ck{k}" for k in range(out.checkpoints)} <= set(_members(tmp_path / "hybrid.edgechat"))
    got = import_bundle(resolve_paths(b), tmp_path / "hybrid.edgechat")
    assert got.checkpoints == out.checkpoints

    def second(home: Path):
        with _runtime(home, tiny_qwen35, ctx=2048) as rt:
            return rt.conversation(cid).send("Second message.", max_tokens=8, temperature=0)

    want, r = second(a), second(b)
    assert want.stats.restored_from == r.stats.restored_from == "checkpoint", r.notices
    assert r.stats.prefill_tokens == want.stats.prefill_tokens
    assert r.text == want.text
