"""Per-cluster secrets, kept in the state directory (0700, files 0600) across rebuilds, never printed.

k3s has two join secrets: the server token, which lets a node join as a server and read the cluster's CA
keys, and the agent token, which lets it join as an agent only. The master gets both; worker images get the
agent token alone, so a lost worker card cannot make its finder a server. The cluster's server CA is made
here too (an EC P-256 key and a self-signed certificate, as k3s makes its own), placed in the master image
before k3s first starts, which k3s then uses as it is; so the workers' token can carry the CA's hash
(K10<sha256>::node:<password>) and an agent joins only the server holding that CA. The client CA is made
the same way and placed beside it (client-ca.crt/.key): k3s signs its own clients with it, and the API
server accepts whatever it signed, so the workstation's kubeconfig (outputs/kubeconfig.py) is signed here.
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

# The CAs k3s takes from server/tls when both files are there at its first start, each in the state
# directory's k3s-<name>/ folder. The request-header CA stays k3s's own: only the API server uses it.
CA_NAMES = ("server-ca", "client-ca")


@dataclass(frozen=True)
class K3sSecrets:
    server_token: str  # the server's password ("token" in its config); only in the master image
    agent_token: str  # the agents' password ("agent-token" in the server's config)
    ca_cert: str  # PEM: /var/lib/rancher/k3s/server/tls/server-ca.crt
    ca_key: str  # PEM: server-ca.key, only in the master image
    client_ca_cert: str  # PEM: /var/lib/rancher/k3s/server/tls/client-ca.crt
    client_ca_key: str  # PEM: client-ca.key, only in the master image

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
    for name in CA_NAMES:
        if not (state / f"k3s-{name}").is_dir():
            _make_ca(state / f"k3s-{name}", name)
    return _read_secrets(state, server, agent)


def read_k3s_secrets(ctx: Context, cluster: str) -> K3sSecrets | None:
    """The secrets if the cluster has them already (reads only)."""
    state = ctx.state_root / cluster
    try:
        return _read_secrets(state, (state / "k3s-token").read_text().strip(),
                             (state / "k3s-agent-token").read_text().strip())
    except OSError:
        return None


def _read_secrets(state: Path, server: str, agent: str) -> K3sSecrets:
    pems = [(state / f"k3s-{name}" / f"{name}.{kind}").read_text() for name in CA_NAMES for kind in ("crt", "key")]
    return K3sSecrets(server, agent, *pems)


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


def _make_ca(target: Path, name: str) -> None:
    """A CA key and self-signed certificate (`name`.key, `name`.crt) in the folder `target`, made whole in a
    temporary folder and renamed into place (a second build making one at the same time keeps the first one's)."""
    with temporary_directory(f".k3s-{name}-", target.parent) as work:
        os.chmod(work, 0o700)
        key, cert = work / f"{name}.key", work / f"{name}.crt"
        run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
        key.chmod(0o600)
        run(["openssl", "req", "-x509", "-new", "-key", key, "-sha256", "-days", "3650",
             "-subj", f"/CN=k3s-{name}@{int(time.time())}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
             "-out", cert])
        cert.chmod(0o600)
        for path in (key, cert, work):
            sync_path(path)
        with contextlib.suppress(OSError):  # made meanwhile by another build: theirs stays
            os.rename(work, target)
        sync_path(target.parent)
