"""Per-cluster secrets, kept in the state directory (0700, files 0600) across rebuilds, never printed.

k3s has two join secrets: the server token, which lets a node join as a server and read the cluster's CA
keys, and the agent token, which lets it join as an agent only. The master gets both; worker images get the
agent token alone, so a lost worker card cannot make its finder a server. The cluster's server CA is made
here too (an EC P-256 key and a self-signed certificate, as k3s makes its own), placed in the master image
before k3s first starts, which k3s then uses as it is; so the workers' token can carry the CA's hash
(K10<sha256>::node:<password>) and an agent joins only the server holding that CA.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.core.context import Context
from imagebuilder.core.resources import sync_path, temporary_directory
from imagebuilder.core.run import run


@dataclass(frozen=True)
class K3sSecrets:
    server_token: str  # the server's password ("token" in its config); only in the master image
    agent_token: str  # the agents' password ("agent-token" in the server's config)
    ca_cert: str  # PEM: /var/lib/rancher/k3s/server/tls/server-ca.crt
    ca_key: str  # PEM: server-ca.key, only in the master image

    @property
    def ca_hash(self) -> str:
        """What k3s checks a server's CA against: the sha256 of the server-ca.crt file (one certificate)."""
        return hashlib.sha256(self.ca_cert.encode()).hexdigest()

    @property
    def worker_token(self) -> str:
        """The token a worker joins with: the agent password, pinned to the cluster's CA."""
        return f"K10{self.ca_hash}::node:{self.agent_token}"


def k3s_secrets(ctx: Context, cluster: str) -> K3sSecrets:
    """The cluster's k3s secrets: made on the first build, reused by every later one.

    A worker image built next month must still join the master built today.
    """
    state = ctx.state_dir(cluster)
    server = secret(state / "k3s-token", lambda: secrets.token_hex(32))
    agent = secret(state / "k3s-agent-token", lambda: secrets.token_hex(32))
    ca = state / "k3s-server-ca"
    if not ca.is_dir():
        _make_ca(ca)
    return K3sSecrets(server, agent, (ca / "server-ca.crt").read_text(), (ca / "server-ca.key").read_text())


def read_k3s_secrets(ctx: Context, cluster: str) -> K3sSecrets | None:
    """The secrets if the cluster has them already (reads only)."""
    state = ctx.state_root / cluster
    try:
        return K3sSecrets((state / "k3s-token").read_text().strip(), (state / "k3s-agent-token").read_text().strip(),
                          (state / "k3s-server-ca/server-ca.crt").read_text(),
                          (state / "k3s-server-ca/server-ca.key").read_text())
    except OSError:
        return None


def secret(path: Path, make: Callable[[], str]) -> str:
    """The secret in `path`, made once: two first builds at once end up with one secret, the same in both.

    The new value is written to a private temporary file and flushed, then linked to its name; a link
    fails if the name exists, so the build that comes second takes the first one's value.
    """
    if not path.exists():
        tmp = path.with_name(f".{path.name}.new-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(make() + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            sync_path(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def _make_ca(target: Path) -> None:
    """A CA key and self-signed certificate in the folder `target`, made whole in a temporary folder and
    renamed into place (a second build making one at the same time keeps the first one's)."""
    with temporary_directory(".k3s-server-ca-", target.parent) as work:
        os.chmod(work, 0o700)
        key, cert = work / "server-ca.key", work / "server-ca.crt"
        run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
        key.chmod(0o600)
        run(["openssl", "req", "-x509", "-new", "-key", key, "-sha256", "-days", "3650",
             "-subj", f"/CN=k3s-server-ca@{int(time.time())}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
             "-out", cert])
        cert.chmod(0o600)
        for path in (key, cert, work):
            sync_path(path)
        with contextlib.suppress(OSError):  # made meanwhile by another build: theirs stays
            os.rename(work, target)
        sync_path(target.parent)
