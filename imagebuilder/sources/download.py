"""Move the bytes of one URL into a partial file: streaming, resuming, retrying, hashing as it goes.

The partial survives an interruption, with the server's validator (ETag or Last-Modified) beside it, so
the next attempt (in this run or the next one) asks only for the rest with a Range request. A server
that ignores Range, or whose file changed meanwhile, answers 200 and the download restarts from zero.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import unquote, urlsplit

import requests
from urllib3.exceptions import HTTPError as Urllib3Error

from imagebuilder.core.errors import DownloadError
from imagebuilder.core.log import Progress, log

_CHUNK = 1 << 20
_T = TypeVar("_T")
_USER_AGENT = "imagebuilder (+https://github.com/imagebuilder)"


@dataclass(frozen=True)
class Policy:
    """How patient a download is. Tests shorten the waits."""

    attempts: int = 6  # consecutive failures without progress before giving up
    backoff: float = 1.0  # first wait; doubles up to `max_backoff`
    max_backoff: float = 30.0
    connect_timeout: float = 15.0
    read_timeout: float = 60.0


DEFAULT_POLICY = Policy()


class _Retry(Exception):
    """A failure worth another attempt: a dropped connection, a timeout, a 5xx, a short body."""


@dataclass(frozen=True)
class Transfer:
    """A finished transfer: where the bytes are, their sha256, and the URL they finally came from."""

    path: Path
    sha256: str
    url: str


def local_path(url: str) -> Path | None:
    """The file a `file://` URL or a plain path names; None for http(s)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme in ("http", "https"):
        return None
    return Path(url)


def file_name(url: str) -> str:
    return unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])


def read_text(session: requests.Session, url: str, policy: Policy = DEFAULT_POLICY) -> str:
    """A small text document (a checksum listing), with the same retries as a download."""
    path = local_path(url)
    if path is not None:
        try:
            return path.read_text(errors="replace")
        except OSError as e:
            raise DownloadError(f"{url}: cannot read it: {e.strerror}", "check the path") from None

    def attempt() -> str:
        response = _get(session, url, {}, policy)
        with response:
            return response.content.decode(errors="replace")

    return _with_retries(url, policy, attempt, progress=lambda: 0)


def final_url(session: requests.Session, url: str, policy: Policy = DEFAULT_POLICY) -> str:
    """Where `url` redirects to, asked with HEAD (the body is not wanted)."""
    if local_path(url) is not None:
        return url

    def attempt() -> str:
        try:
            response = session.head(url, allow_redirects=True,
                                    timeout=(policy.connect_timeout, policy.read_timeout))
        except (requests.ConnectionError, requests.Timeout) as e:
            raise _Retry(str(e)) from None
        _check_status(response, url)
        return response.url

    return _with_retries(url, policy, attempt, progress=lambda: 0)


def download(session: requests.Session, url: str, partial: Path, desc: str,
             policy: Policy = DEFAULT_POLICY) -> Transfer:
    """Fetch `url` into `partial`, resuming what an earlier attempt left there. The caller holds the lock."""
    path = local_path(url)
    if path is not None:
        return _copy_local(path, partial, desc)
    state = _PartialState(partial)
    return _with_retries(url, policy, lambda: _attempt(session, url, state, desc, policy), progress=state.size)


def _with_retries(url: str, policy: Policy, attempt: Callable[[], _T], progress: Callable[[], int]) -> _T:
    failures = 0
    wait = policy.backoff
    while True:
        before = progress()
        try:
            return attempt()
        except _Retry as e:
            # Progress resets the count: a flaky link that keeps moving forward finishes eventually.
            failures = 1 if progress() > before else failures + 1
            if failures >= policy.attempts:
                raise DownloadError(
                    f"{url}: gave up after {failures} attempts without progress: {e}",
                    "check the network or the mirror; run the command again to resume where it stopped",
                ) from None
            log.warning("%s: %s; retrying in %.1fs", file_name(url) or url, e, wait)
            time.sleep(wait)
            wait = min(wait * 2, policy.max_backoff)


def _get(session: requests.Session, url: str, headers: dict[str, str], policy: Policy) -> requests.Response:
    try:
        response = session.get(url, headers=headers, stream=True, allow_redirects=True,
                               timeout=(policy.connect_timeout, policy.read_timeout))
    except (requests.ConnectionError, requests.Timeout) as e:
        raise _Retry(f"connection failed: {e}") from None
    try:
        _check_status(response, url)
    except BaseException:
        response.close()
        raise
    return response


def _check_status(response: requests.Response, url: str) -> None:
    status = response.status_code
    if status >= 500 or status in (408, 429):
        raise _Retry(f"HTTP {status} {response.reason}")
    if status >= 400 and status != 416:
        raise DownloadError(f"{url}: HTTP {status} {response.reason}",
                            "check the URL (base.url, the catalogue entry) or the mirror (base.mirror, "
                            "IMAGEBUILDER_MIRROR)")


class _PartialState:
    """The partial file and the validator of the response it holds the start of."""

    def __init__(self, partial: Path) -> None:
        self.partial = partial
        self.meta = partial.with_name(partial.name + ".json")

    def size(self) -> int:
        try:
            return self.partial.stat().st_size
        except FileNotFoundError:
            return 0

    def validator(self, url: str) -> str | None:
        try:
            meta = json.loads(self.meta.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return meta.get("validator") if meta.get("url") == url else None

    def start(self, url: str, response: requests.Response) -> None:
        """A full response begins: forget what the partial held."""
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        if validator and validator.startswith("W/"):
            validator = None  # a weak ETag cannot make a Range request conditional
        self.partial.write_bytes(b"")
        self.meta.write_text(json.dumps({"url": url, "validator": validator}))

    def forget(self) -> None:
        for path in (self.partial, self.meta):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _attempt(session: requests.Session, url: str, state: _PartialState, desc: str, policy: Policy) -> Transfer:
    # Identity: a server that gzips the transfer would otherwise hand requests a body it decodes.
    headers = {"Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
    have = state.size()
    validator = state.validator(url)
    if have and validator:
        headers["Range"] = f"bytes={have}-"
        headers["If-Range"] = validator
    elif have:
        state.forget()  # no validator: the rest could belong to a different file
        have = 0
    response = _get(session, url, headers, policy)
    with response:
        digest = hashlib.sha256()
        if response.status_code == 416 and _complete_size(response) == have:
            # An earlier run got every byte and stopped before verifying.
            _hash_file(state.partial, digest)
            return Transfer(state.partial, digest.hexdigest(), response.url)
        if response.status_code == 206 and _range_start(response) == have:
            log.info("  resuming %s at %.1f MiB", desc, have / 2**20)
            _hash_file(state.partial, digest)
            total = have + int(response.headers.get("Content-Length", "-1"))
        else:
            if have:
                log.info("  %s: the server sent the whole file; starting again", desc)
            if response.status_code != 200:
                state.forget()
                raise _Retry(f"HTTP {response.status_code} to a Range request")
            state.start(url, response)
            have = 0
            total = int(response.headers.get("Content-Length", "-1"))
        with state.partial.open("ab") as out, Progress(desc, total if total >= 0 else None) as progress:
            progress.update(have)
            try:
                for chunk in response.raw.stream(_CHUNK, decode_content=False):
                    _write(out, chunk, state.partial)
                    digest.update(chunk)
                    progress.update(len(chunk))
            except (requests.RequestException, Urllib3Error, ConnectionError, TimeoutError) as e:
                raise _Retry(f"connection broken after {progress.done / 2**20:.1f} MiB: {e}") from None
            if total >= 0 and progress.done < total:
                raise _Retry(f"the body ended after {progress.done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        return Transfer(state.partial, digest.hexdigest(), response.url)


def _write(out: BinaryIO, chunk: bytes, path: Path) -> None:
    try:
        out.write(chunk)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise DownloadError(f"{path.parent}: no space left for the download",
                            "free some space or point --cache-dir elsewhere; the next run resumes") from None


def _range_start(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Range", "")
    if not value.startswith("bytes ") or "-" not in value:
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _complete_size(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Range", "")
    if value.startswith("bytes */"):
        with contextlib.suppress(ValueError):
            return int(value[8:])
    return None


def _hash_file(path: Path, digest: hashlib._Hash) -> None:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)


def _copy_local(source: Path, partial: Path, desc: str) -> Transfer:
    try:
        handle = source.open("rb")
    except OSError as e:
        raise DownloadError(f"{source}: cannot read it: {e.strerror}", "check the path") from None
    digest = hashlib.sha256()
    with handle, partial.open("wb") as out, Progress(desc, source.stat().st_size) as progress:
        while chunk := handle.read(_CHUNK):
            _write(out, chunk, partial)
            digest.update(chunk)
            progress.update(len(chunk))
    return Transfer(partial, digest.hexdigest(), source.as_uri())

