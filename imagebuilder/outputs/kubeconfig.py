"""The workstation's kubeconfig: an admin client certificate signed by the cluster's client CA, trusting its
server CA, for `kubectl --kubeconfig out/<cluster>/kubeconfig` the moment the master is up, with no ssh.

k3s takes both CAs from server/tls at its first start (roles/secrets.py), so it accepts the client
certificate made here as it accepts its own admin's: the user's groups come from the certificate's O, and
system:masters is the group k3s's own admin certificate carries. The file is made again only when it is
missing, expiring, or no longer matches the cluster's CAs or the master's address: rebuilds leave it alone.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from imagebuilder.core.context import Context
from imagebuilder.core.resources import atomic_output, temporary_directory
from imagebuilder.core.run import run
from imagebuilder.recipe.fields import is_ip_address
from imagebuilder.recipe.model import Recipe
from imagebuilder.roles.secrets import K3sSecrets

ADMIN = "imagebuilder-admin"
ADMIN_GROUP = "system:masters"  # the group of k3s's own admin (deps.go: user.SystemPrivilegedGroup)
DAYS = 3650  # as long as the CAs
RENEW_SECONDS = 30 * 86400  # a certificate this close to its end is made again


def kubeconfig_path(recipe: Recipe) -> Path:
    return recipe.output_dir / "kubeconfig"


def api_url(recipe: Recipe) -> str:
    return f"https://{recipe.network.master_ip}:6443"


def sign_certificate(work: Path, name: str, ca_cert: str, ca_key: str, *, subject: str, usage: str,
                     sans: Sequence[str] = ()) -> tuple[Path, Path]:
    """A new EC P-256 key and a certificate for it signed by the CA, as `name`.crt and `name`.key in the
    private folder `work`. usage: clientAuth or serverAuth; sans: DNS names and IP addresses."""
    ca_crt_file, ca_key_file = work / f"{name}-ca.crt", work / f"{name}-ca.key"
    for path, text in ((ca_crt_file, ca_cert), (ca_key_file, ca_key)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    key, cert = work / f"{name}.key", work / f"{name}.crt"
    run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
    key.chmod(0o600)
    extensions = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                  f"extendedKeyUsage={usage}"]
    if sans:
        extensions.append("subjectAltName=" + ",".join(f"{'IP' if is_ip_address(s) else 'DNS'}:{s}" for s in sans))
    run(["openssl", "req", "-x509", "-new", "-key", key, "-CA", ca_crt_file, "-CAkey", ca_key_file, "-sha256",
         "-days", str(DAYS), "-subj", subject, *(a for e in extensions for a in ("-addext", e)), "-out", cert])
    ca_key_file.unlink()
    return cert, key


def render_kubeconfig(recipe: Recipe, server_ca: str, client_cert: str, client_key: str) -> dict[str, Any]:
    cluster, user = recipe.cluster.name, f"{ADMIN}@{recipe.cluster.name}"
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": cluster, "cluster": {"server": api_url(recipe),
                                                   "certificate-authority-data": _b64(server_ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": _b64(client_cert),
                                          "client-key-data": _b64(client_key)}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }


def write_kubeconfig(ctx: Context, recipe: Recipe, secrets: K3sSecrets) -> Path:
    """out/<cluster>/kubeconfig (0600), made when missing or stale; its path either way."""
    final = kubeconfig_path(recipe)
    # The CA key is written out for openssl: into the state directory, which is its owner's only.
    with temporary_directory(".kubeconfig-", ctx.state_dir(recipe.cluster.name)) as work:
        if _is_current(final, recipe, secrets, work):
            return final
        cert, key = sign_certificate(work, "admin", secrets.client_ca_cert, secrets.client_ca_key,
                                     subject=f"/O={ADMIN_GROUP}/CN={ADMIN}", usage="clientAuth")
        document = render_kubeconfig(recipe, secrets.ca_cert, cert.read_text(), key.read_text())
        with atomic_output(final, 0o600) as tmp:
            tmp.write_text(yaml.safe_dump(document, sort_keys=False))
    return final


def _is_current(path: Path, recipe: Recipe, secrets: K3sSecrets, work: Path) -> bool:
    """The kubeconfig at `path` trusts this cluster's server CA, names its master, and holds a client
    certificate the client CA signed that is not about to expire."""
    try:
        document = yaml.safe_load(path.read_text())
        cluster = document["clusters"][0]["cluster"]
        client = base64.b64decode(document["users"][0]["user"]["client-certificate-data"])
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, ValueError):
        return False
    if cluster.get("certificate-authority-data") != _b64(secrets.ca_cert) or cluster.get("server") != api_url(recipe):
        return False
    (work / "current.crt").write_bytes(client)
    (work / "client-ca.crt").write_text(secrets.client_ca_cert)
    verified = run(["openssl", "verify", "-CAfile", work / "client-ca.crt", work / "current.crt"], check=False)
    lasting = run(["openssl", "x509", "-in", work / "current.crt", "-noout", "-checkend", str(RENEW_SECONDS)],
                  check=False)
    return verified.returncode == 0 and lasting.returncode == 0


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
