"""Downloads against a real HTTP server on 127.0.0.1 that can misbehave on request."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imagebuilder.core.context import Context
from imagebuilder.core.errors import ChecksumMismatch, DownloadError, ImageBuilderError
from imagebuilder.sources.checksums import digest_for, newest_matching, parse_listing
from imagebuilder.sources.download import Policy
from imagebuilder.sources.fetch import Spec, apply_mirror, fetch_spec, fetch_url
from tests.conftest import ROOT, VALID

FAST = Policy(attempts=3, backoff=0.01, max_backoff=0.02, connect_timeout=5, read_timeout=5)


@dataclass
class Behaviour:
    """What the server does; tests change it between requests."""

    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    cut_once: set[str] = field(default_factory=set)  # first GET sends half the body, then drops the connection
    truncate: set[str] = field(default_factory=set)  # every GET promises the whole body and sends half
    fail_once: dict[str, int] = field(default_factory=dict)  # first GET answers this status
    ignore_range: bool = False
    delay: float = 0.0  # seconds per 64 KiB sent, to make downloads overlap
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range

    def gets(self, path: str) -> list[str | None]:
        return [r for m, p, r in self.log if m == "GET" and p == path]


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        b = self.server.behaviour
        path = self.path
        b.log.append((self.command, path, self.headers.get("Range")))
        if path in b.redirects:
            self.send_response(302)
            self.send_header("Location", b.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if body and path in b.fail_once:
            status = b.fail_once.pop(path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path not in b.files:
            self.send_error(404)
            return
        data = b.files[path]
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        start = 0
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and not b.ignore_range and (if_range is None or if_range == etag):
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", etag)
        if not b.ignore_range:
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not body:
            return
        send = data[start:]
        cut = body and (path in b.truncate or path in b.cut_once)
        b.cut_once.discard(path)
        if cut:
            send = send[: len(send) // 2]
        for i in range(0, len(send), 65536):
            self.wfile.write(send[i:i + 65536])
            if b.delay:
                time.sleep(b.delay)
        if cut:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.behaviour = Behaviour()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


def running_server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    """The publisher, on 127.0.0.1."""
    yield from running_server()


@pytest.fixture
def mirror() -> Iterator[Server]:
    """A second server on 127.0.0.1: a lab's mirror beside the publisher (`server`)."""
    yield from running_server()


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return Context(cache_dir=tmp_path / "cache")


IMAGE = os.urandom(3 << 20) + bytes(1 << 20)  # 4 MiB: enough to be cut half-way
DIGEST = hashlib.sha256(IMAGE).hexdigest()


def serve_image(server: Server, path: str = "/images/pi.img.xz") -> str:
    server.behaviour.files[path] = IMAGE
    return server.url(path)


def downloads(ctx: Context) -> list[str]:
    """What the download cache holds, besides lock files and the index."""
    d = ctx.cache_dir / "downloads"
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".lock-") and p.name != "index")


def imagebuilder(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1"}
    env.pop("IMAGEBUILDER_MIRROR", None)
    return subprocess.run([sys.executable, "-m", "imagebuilder", "--cache-dir", str(cache), "fetch", *args],
                          capture_output=True, text=True, cwd=ROOT, check=False, env=env)


# --- checksum listings ------------------------------------------------------------------------------


def test_listing_formats_and_picking_by_name() -> None:
    a, b, c, d = ("a" * 64, "B" * 64, "c" * 64, "d" * 64)
    text = (f"{a}  ubuntu-24.04-preinstalled-server-arm64+raspi.img.xz\n"
            f"{b} *ubuntu-24.04.1-preinstalled-server-arm64+raspi.img.xz\r\n"
            f"\\{c}  dir/odd\\\\name.img\n"
            f"SHA256 (bsd.img.xz) = {d}\n"
            "-----BEGIN PGP SIGNATURE-----\n")
    listing = parse_listing(text)
    assert listing == {
        "ubuntu-24.04-preinstalled-server-arm64+raspi.img.xz": a,
        "ubuntu-24.04.1-preinstalled-server-arm64+raspi.img.xz": b.lower(),
        "odd\\name.img": c,
        "bsd.img.xz": d,
    }
    assert digest_for(listing, "bsd.img.xz", "SUMS") == d
    with pytest.raises(ChecksumMismatch, match="SUMS: has no sha256 for other.img"):
        digest_for(listing, "other.img", "SUMS")
    # A lone digest (a .sha256 file for one image) fits any name.
    assert digest_for(parse_listing(f"{a}\n"), "anything.img.xz", "x.sha256") == a


def test_newest_point_release_is_picked() -> None:
    names = ["ubuntu-24.04-x.img.xz", "ubuntu-24.04.2-x.img.xz", "ubuntu-24.04.10-x.img.xz", "ubuntu-24.04.9-x.img.xz",
             "ubuntu-24.10-x.img.xz"]
    listing = {n: "0" * 64 for n in names}
    assert newest_matching(listing, r"ubuntu-24\.04(\.\d+)?-x\.img\.xz", "SUMS") == "ubuntu-24.04.10-x.img.xz"
    del listing["ubuntu-24.04.10-x.img.xz"], listing["ubuntu-24.04.9-x.img.xz"], listing["ubuntu-24.04.2-x.img.xz"]
    assert newest_matching(listing, r"ubuntu-24\.04(\.\d+)?-x\.img\.xz", "SUMS") == "ubuntu-24.04-x.img.xz"


def test_mirror_rewrites_host_and_keeps_path() -> None:
    url = "https://downloads.example.invalid/images/a%2Bb.img.xz?x=1"
    assert apply_mirror(url, "http://10.1.2.3:8080/pi/") == "http://10.1.2.3:8080/pi/images/a%2Bb.img.xz?x=1"
    assert apply_mirror("file:///srv/a.img", "http://10.1.2.3") == "file:///srv/a.img"
    assert apply_mirror(url, None) == url


# --- fetching ---------------------------------------------------------------------------------------


def test_fetch_verifies_caches_and_second_fetch_asks_nobody(server: Server, ctx: Context) -> None:
    url = serve_image(server)
    path = fetch_url(ctx, url, sha256=DIGEST, policy=FAST)
    assert path == ctx.cache_dir / "downloads" / f"{DIGEST}.img.xz"
    assert path.read_bytes() == IMAGE
    assert downloads(ctx) == [path.name]  # no partial left behind
    before = len(server.behaviour.log)
    assert fetch_url(ctx, url, sha256=DIGEST, policy=FAST) == path
    assert len(server.behaviour.log) == before


def test_checksum_listing_then_index_means_no_io(server: Server, ctx: Context) -> None:
    url = serve_image(server, "/rel/pi-2.img.xz")
    server.behaviour.files["/rel/SHA256SUMS"] = (f"{'0' * 64}  pi-1.img.xz\n{DIGEST} *pi-2.img.xz\n").encode()
    path = fetch_url(ctx, url, checksum_url=server.url("/rel/SHA256SUMS"), policy=FAST, allow_http=True)
    assert path.name == f"{DIGEST}.img.xz"
    before = len(server.behaviour.log)
    assert fetch_url(ctx, url, checksum_url=server.url("/rel/SHA256SUMS"), policy=FAST, allow_http=True) == path
    assert len(server.behaviour.log) == before
    # --refresh reads the listing again but does not download what is already there.
    fetch_url(ctx, url, checksum_url=server.url("/rel/SHA256SUMS"), refresh=True, policy=FAST, allow_http=True)
    assert [p for m, p, _ in server.behaviour.log[before:]] == ["/rel/SHA256SUMS"]


def test_cut_connection_resumes_with_range(server: Server, ctx: Context) -> None:
    url = serve_image(server)
    server.behaviour.cut_once.add("/images/pi.img.xz")
    path = fetch_url(ctx, url, sha256=DIGEST, policy=FAST)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DIGEST
    first, second = server.behaviour.gets("/images/pi.img.xz")
    assert first is None and second == f"bytes={len(IMAGE) // 2}-"


def test_partial_survives_a_failed_run_and_the_next_run_resumes(server: Server, ctx: Context) -> None:
    url = serve_image(server)
    server.behaviour.cut_once.add("/images/pi.img.xz")
    with pytest.raises(DownloadError, match="gave up after 1 attempts"):
        fetch_url(ctx, url, sha256=DIGEST, policy=Policy(attempts=1))
    assert downloads(ctx) == [f".partial-{DIGEST}", f".partial-{DIGEST}.json"]
    assert (ctx.cache_dir / "downloads" / f".partial-{DIGEST}").stat().st_size == len(IMAGE) // 2
    path = fetch_url(ctx, url, sha256=DIGEST, policy=FAST)
    assert path.read_bytes() == IMAGE
    assert server.behaviour.gets("/images/pi.img.xz")[-1] == f"bytes={len(IMAGE) // 2}-"
    assert downloads(ctx) == [path.name]


def test_server_ignoring_range_restarts_cleanly(server: Server, ctx: Context) -> None:
    url = serve_image(server)
    server.behaviour.cut_once.add("/images/pi.img.xz")
    with pytest.raises(DownloadError):
        fetch_url(ctx, url, sha256=DIGEST, policy=Policy(attempts=1))
    server.behaviour.ignore_range = True
    path = fetch_url(ctx, url, sha256=DIGEST, policy=FAST)
    assert path.read_bytes() == IMAGE  # not the first half twice


def test_file_changed_on_server_restarts(server: Server, ctx: Context) -> None:
    """If-Range: the rest of a different file must never be glued to the start of the old one."""
    url = server.url("/images/pi.img.xz")
    server.behaviour.files["/images/pi.img.xz"] = os.urandom(len(IMAGE))
    server.behaviour.cut_once.add("/images/pi.img.xz")
    with pytest.raises(DownloadError):
        fetch_url(ctx, url, sha256=DIGEST, policy=Policy(attempts=1))
    serve_image(server)
    assert fetch_url(ctx, url, sha256=DIGEST, policy=FAST).read_bytes() == IMAGE


def test_truncated_body_gives_up_and_caches_nothing(server: Server, ctx: Context) -> None:
    url = serve_image(server)
    server.behaviour.truncate.add("/images/pi.img.xz")
    server.behaviour.ignore_range = True
    with pytest.raises(DownloadError, match="gave up after 3 attempts without progress"):
        fetch_url(ctx, url, sha256=DIGEST, policy=FAST)
    assert not any(n.startswith(DIGEST) for n in downloads(ctx))


def test_5xx_is_retried_404_is_not(server: Server, ctx: Context) -> None:
    url = serve_image(server)
    server.behaviour.fail_once["/images/pi.img.xz"] = 503
    assert fetch_url(ctx, url, sha256=DIGEST, policy=FAST).read_bytes() == IMAGE
    assert len(server.behaviour.gets("/images/pi.img.xz")) == 2
    with pytest.raises(DownloadError, match=r"/nothing.img.xz: HTTP 404"):
        fetch_url(ctx, server.url("/nothing.img.xz"), sha256="1" * 64, policy=FAST)
    assert len(server.behaviour.gets("/nothing.img.xz")) == 1


def test_redirect_and_sibling_checksum(server: Server, mirror: Server, ctx: Context) -> None:
    """The catalogue's `sibling` scheme: `latest` redirects; the digest is beside the final URL. With a mirror,
    `latest` and the digest come from the publisher, the bytes from the mirror."""
    for srv in (server, mirror):
        serve_image(srv, "/raspios/2025-10-01/pi-lite.img.xz")
    server.behaviour.files["/raspios/2025-10-01/pi-lite.img.xz.sha256"] = f"{DIGEST}  pi-lite.img.xz\n".encode()
    server.behaviour.redirects["/latest"] = "/raspios/2025-10-01/pi-lite.img.xz"
    spec = Spec(url=server.url("/latest"), sibling=True, allow_http=True)
    path = fetch_spec(ctx, spec, mirror=mirror.url("/"), policy=FAST)
    assert path.name == f"{DIGEST}.img.xz" and path.read_bytes() == IMAGE
    assert mirror.behaviour.gets("/raspios/2025-10-01/pi-lite.img.xz")
    assert not server.behaviour.gets("/raspios/2025-10-01/pi-lite.img.xz")  # the bytes came from the mirror
    before = len(server.behaviour.log) + len(mirror.behaviour.log)
    assert fetch_spec(ctx, spec, mirror=mirror.url("/"), offline=True) == path
    assert len(server.behaviour.log) + len(mirror.behaviour.log) == before


def test_pick_newest_from_listing_and_pin(server: Server, mirror: Server, ctx: Context) -> None:
    old = os.urandom(1000)
    for srv in (server, mirror):
        serve_image(srv, "/rel/img-24.04.2.img.xz")
        srv.behaviour.files["/rel/img-24.04.img.xz"] = old
    server.behaviour.files["/rel/SHA256SUMS"] = (f"{hashlib.sha256(old).hexdigest()} *img-24.04.img.xz\n"
                                                 f"{DIGEST} *img-24.04.2.img.xz\n").encode()
    spec = Spec(url=server.url("/rel/"), checksum_url=server.url("/rel/SHA256SUMS"),
                pick=r"img-24\.04(\.\d+)?\.img\.xz", allow_http=True)
    assert fetch_spec(ctx, spec, mirror=mirror.url(""), policy=FAST).read_bytes() == IMAGE
    pinned = Spec(url=spec.url, checksum_url=spec.checksum_url, pick=spec.pick, sha256=hashlib.sha256(old).hexdigest(),
                  allow_http=True)
    assert fetch_spec(ctx, pinned, mirror=mirror.url(""), policy=FAST).read_bytes() == old


# --- a mirror does not vouch for itself ------------------------------------------------------------


def tampered_mirror(server: Server, mirror: Server, path: str) -> bytes:
    """The publisher serves the image and its digest; the mirror a changed image with a digest to match."""
    serve_image(server, path)
    server.behaviour.files[path + ".sha256"] = f"{DIGEST}  {path.rsplit('/', 1)[1]}\n".encode()
    evil = IMAGE[:-1] + b"!"
    mirror.behaviour.files[path] = evil
    mirror.behaviour.files[path + ".sha256"] = f"{hashlib.sha256(evil).hexdigest()}  x\n".encode()
    return evil


def test_tampered_mirror_is_caught_by_the_publishers_digest(server: Server, mirror: Server, ctx: Context) -> None:
    tampered_mirror(server, mirror, "/raspios/pi-lite.img.xz")
    server.behaviour.redirects["/latest"] = "/raspios/pi-lite.img.xz"
    spec = Spec(url=server.url("/latest"), sibling=True, allow_http=True)
    with pytest.raises(ChecksumMismatch):
        fetch_spec(ctx, spec, mirror=mirror.url("/"), policy=FAST)
    assert not mirror.behaviour.gets("/raspios/pi-lite.img.xz.sha256")  # the mirror's digest is never asked
    assert downloads(ctx) == []


def test_mirror_without_the_publisher_needs_a_pinned_digest(mirror: Server, ctx: Context) -> None:
    evil = tampered_mirror(mirror, mirror, "/raspios/pi-lite.img.xz")
    with socket.socket() as closed:  # a publisher that does not answer: a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        publisher = f"http://127.0.0.1:{closed.getsockname()[1]}/raspios/pi-lite.img.xz"
    spec = Spec(url=publisher, sibling=True, allow_http=True)
    with pytest.raises(ImageBuilderError, match="cannot read the publisher's checksum .* does not vouch for it"):
        fetch_spec(ctx, spec, mirror=mirror.url("/"), policy=FAST)
    # Pinned: the right digest fetches the genuine image from the mirror; the mirror's changed one is refused.
    mirror.behaviour.files["/raspios/pi-lite.img.xz"] = IMAGE
    assert fetch_spec(ctx, Spec(url=publisher, sha256=DIGEST), mirror=mirror.url("/"), policy=FAST).read_bytes() \
        == IMAGE
    mirror.behaviour.files["/raspios/pi-lite.img.xz"] = evil
    with pytest.raises(ChecksumMismatch):
        fetch_spec(Context(cache_dir=ctx.cache_dir / "other"), Spec(url=publisher, sha256=DIGEST),
                   mirror=mirror.url("/"), policy=FAST)


def test_checksums_over_plain_http_need_the_users_word(server: Server, ctx: Context) -> None:
    url = serve_image(server)
    server.behaviour.files["/SHA256SUMS"] = f"{DIGEST}  pi.img.xz\n".encode()
    with pytest.raises(ImageBuilderError, match="a checksum read over plain http can be changed on the way"):
        fetch_url(ctx, url, checksum_url=server.url("/SHA256SUMS"), policy=FAST)
    assert server.behaviour.log == []  # refused before asking
    assert fetch_url(ctx, url, checksum_url=server.url("/SHA256SUMS"), policy=FAST, allow_http=True).read_bytes() \
        == IMAGE


def test_mirror_from_environment(server: Server, ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    serve_image(server)
    monkeypatch.setenv("IMAGEBUILDER_MIRROR", server.url(""))
    path = fetch_url(ctx, "https://images.example.invalid/images/pi.img.xz", sha256=DIGEST, policy=FAST)
    assert path.read_bytes() == IMAGE


def test_local_path_and_file_url(tmp_path: Path, ctx: Context) -> None:
    source = tmp_path / "my image.img.gz"
    source.write_bytes(IMAGE)
    assert fetch_url(ctx, str(source), sha256=DIGEST).read_bytes() == IMAGE
    listing = tmp_path / "SHA256SUMS"
    listing.write_text(f"{DIGEST}  my image.img.gz\n")
    other = Context(cache_dir=tmp_path / "cache2")
    path = fetch_url(other, source.as_uri(), checksum_url=listing.as_uri())
    assert path.name == f"{DIGEST}.img.gz"


def test_offline_fails_clearly_when_not_cached(ctx: Context) -> None:
    with pytest.raises(DownloadError, match=r"not in the cache .* and --offline was given"):
        fetch_url(ctx, "https://images.example.invalid/a.img.xz", sha256=DIGEST, offline=True)


# --- the command line -------------------------------------------------------------------------------


def test_cli_prints_path_and_rejects_wrong_digest(server: Server, tmp_path: Path) -> None:
    url = serve_image(server)
    wrong = "f" * 64
    result = imagebuilder(tmp_path / "cache", "--url", url, "--sha256", wrong)
    assert result.returncode == 2, result.stderr
    assert f"imagebuilder: pi.img.xz: sha256 is {DIGEST} but the given sha256 says {wrong}" in result.stderr
    assert "Traceback" not in result.stderr
    left = [p.name for p in (tmp_path / "cache" / "downloads").iterdir() if not p.name.startswith(".lock-")]
    assert left == []  # neither the partial nor a cache entry

    result = imagebuilder(tmp_path / "cache", "--url", url, "--sha256", DIGEST)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'cache' / 'downloads' / DIGEST}.img.xz\n"


def test_cli_offline_message(tmp_path: Path) -> None:
    result = imagebuilder(tmp_path / "cache", "--offline", "--url", "https://x.example.invalid/a.img.xz",
                          "--sha256", DIGEST)
    assert result.returncode == 2
    assert "--offline was given" in result.stderr and "hint:" in result.stderr


def test_two_processes_fetch_once(server: Server, tmp_path: Path) -> None:
    url = serve_image(server)
    server.behaviour.delay = 0.02  # ~1.3 s for the image, so the two runs overlap
    env = {**os.environ, "NO_PROXY": "127.0.0.1"}
    argv = [sys.executable, "-m", "imagebuilder", "--cache-dir", str(tmp_path / "cache"), "fetch", "--url", url,
            "--sha256", DIGEST]
    procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    outputs = {out for out, _ in results}
    assert outputs == {f"{tmp_path / 'cache' / 'downloads' / DIGEST}.img.xz\n"}
    assert len(server.behaviour.gets("/images/pi.img.xz")) == 1
    assert any("waiting for another imagebuilder" in err for _, err in results)


def test_cli_fetches_a_catalogue_image_through_the_recipe_mirror(server: Server, tmp_path: Path,
                                                                  recipe_file) -> None:
    """raspios-lite-trixie: `..._latest` redirects, the digest is in the sibling .sha256; --raw decompresses."""
    import lzma

    raw = os.urandom(1 << 20) + bytes(3 << 20)
    packed = lzma.compress(raw)
    final = "/raspios_lite_arm64/images/raspios_lite_arm64-2025-10-02/2025-10-01-raspios-trixie-arm64-lite.img.xz"
    server.behaviour.files[final] = packed
    server.behaviour.files[final + ".sha256"] = (
        f"{hashlib.sha256(packed).hexdigest()}  2025-10-01-raspios-trixie-arm64-lite.img.xz\n").encode()
    server.behaviour.redirects["/raspios_lite_arm64_latest"] = final
    # A lab without a route to the publisher pins the digest; the mirror alone is asked, never the publisher.
    recipe = recipe_file(VALID.replace("  bootstrap: {suite: bookworm}",
                                       f"  image: raspios-lite-trixie\n  mirror: {server.url('/')}\n"
                                       f"  sha256: {hashlib.sha256(packed).hexdigest()}"))
    result = imagebuilder(tmp_path / "cache", str(recipe), "--raw")
    assert result.returncode == 0, result.stderr
    out = Path(result.stdout.strip())
    assert out == tmp_path / "cache" / "raw" / f"{hashlib.sha256(packed).hexdigest()}.img"
    assert out.read_bytes() == raw
    before = len(server.behaviour.log)
    assert imagebuilder(tmp_path / "cache", str(recipe), "--offline").returncode == 0
    assert len(server.behaviour.log) == before


def test_bootstrap_base_has_nothing_to_fetch(tmp_path: Path, recipe_file) -> None:
    result = imagebuilder(tmp_path / "cache", str(recipe_file(VALID)))
    assert result.returncode == 2
    assert "base.bootstrap: a bootstrapped base is built from packages" in result.stderr
