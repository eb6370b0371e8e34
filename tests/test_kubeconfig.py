"""kubectl from the workstation: the kubeconfig the build writes, tried with openssl and a real TLS handshake.

The server in the handshake presents a certificate signed by the cluster's server CA with the names the
master's k3s is configured with (its tls-san); it demands a client certificate from the client CA, as the
k3s API server does once it has taken both CAs from server/tls at its first start."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.outputs.kubeconfig import kubeconfig_path, sign_certificate, write_kubeconfig
from imagebuilder.recipe.load import load_recipe
from imagebuilder.recipe.model import Recipe
from imagebuilder.roles.k3s import api_names, k3s_config
from imagebuilder.roles.secrets import K3sSecrets, k3s_secrets
from tests.conftest import VALID, require_programs, require_root
from tests.test_roles import files_of, rendered

UPLINK = "  uplink_interface: eth1\n"
K3S = "k3s: {tls_san: [pi.example.org, 192.168.1.40], api_on_uplink: true}\n"


def recipe_text(network_extra: str = UPLINK, extra: str = K3S) -> str:
    return VALID.replace("  lan_interface: eth0\n", "  lan_interface: eth0\n" + network_extra) + extra


@pytest.fixture
def cluster(tmp_path: Path, recipe_file: Any) -> tuple[Context, Recipe, K3sSecrets]:
    require_programs("openssl")
    ctx = Context(state_root=tmp_path / "state", invoker=None)
    recipe = load_recipe(recipe_file(recipe_text()))
    recipe.output_dir.mkdir(parents=True)
    return ctx, recipe, k3s_secrets(ctx, recipe.cluster.name)


def user_of(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    return {"server": document["clusters"][0]["cluster"]["server"],
            "ca": base64.b64decode(document["clusters"][0]["cluster"]["certificate-authority-data"]).decode(),
            "cert": base64.b64decode(document["users"][0]["user"]["client-certificate-data"]).decode(),
            "key": base64.b64decode(document["users"][0]["user"]["client-key-data"]).decode()}


def files(folder: Path, **texts: str) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text)
    return {name: folder / name for name in texts}


def openssl(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, argv)], capture_output=True, text=True, check=False)


def test_client_certificate_chains_to_the_client_ca(cluster: tuple[Context, Recipe, K3sSecrets],
                                                     tmp_path: Path) -> None:
    ctx, recipe, secrets = cluster
    path = write_kubeconfig(ctx, recipe, secrets)
    assert path == recipe.output_dir / "kubeconfig" and stat.S_IMODE(path.stat().st_mode) == 0o600
    user = user_of(path)
    assert user["server"] == "https://10.0.0.1:6443" and user["ca"] == secrets.ca_cert
    f = files(tmp_path / "pem", cert=user["cert"], client_ca=secrets.client_ca_cert, server_ca=secrets.ca_cert)
    assert openssl("verify", "-CAfile", f["client_ca"], f["cert"]).returncode == 0
    assert openssl("verify", "-CAfile", f["server_ca"], f["cert"]).returncode != 0
    text = openssl("x509", "-in", f["cert"], "-noout", "-text").stdout
    assert "Subject: O = system:masters, CN = imagebuilder-admin" in text
    assert "TLS Web Client Authentication" in text and "CA:FALSE" in text
    # No trace of a CA key outside the state directory, nor in the kubeconfig.
    assert secrets.client_ca_key not in path.read_text() and "PRIVATE KEY" not in user["cert"]
    assert list((tmp_path / "state" / recipe.cluster.name).glob(".kubeconfig-*")) == []


def test_rebuilds_keep_it_and_a_new_ca_or_address_replaces_it(cluster: tuple[Context, Recipe, K3sSecrets],
                                                               tmp_path: Path, recipe_file: Any) -> None:
    ctx, recipe, secrets = cluster
    first = write_kubeconfig(ctx, recipe, secrets).read_bytes()
    assert write_kubeconfig(ctx, recipe, secrets).read_bytes() == first
    other = k3s_secrets(Context(state_root=tmp_path / "other-state", invoker=None), recipe.cluster.name)
    assert write_kubeconfig(ctx, recipe, other).read_bytes() != first
    assert user_of(kubeconfig_path(recipe))["ca"] == other.ca_cert
    moved = load_recipe(recipe_file(recipe_text().replace("master_ip: 10.0.0.1", "master_ip: 10.0.0.2")))
    assert user_of(write_kubeconfig(ctx, moved, secrets))["server"] == "https://10.0.0.2:6443"
    kubeconfig_path(recipe).write_text("not: [a kubeconfig")
    assert user_of(write_kubeconfig(ctx, recipe, secrets))["server"] == "https://10.0.0.1:6443"


def handshake(server: dict[str, Path], client: dict[str, Path], hostname: str) -> tuple[str, str]:
    """A TLS server on 127.0.0.1 demanding a client certificate, and a client; what each of them saw."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server["cert"], server["key"])
    server_ctx.load_verify_locations(server["client_ca"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=client["ca"])
    client_ctx.load_cert_chain(client["cert"], client["key"])
    seen = {"server": "no connection"}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
                    seen["server"] = "ok"
            except (OSError, ssl.SSLError) as e:
                seen["server"] = str(e)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                    client_ctx.wrap_socket(raw, server_hostname=hostname) as tls:
                got = "ok" if tls.recv(2) == b"ok" else "closed"
        except (OSError, ssl.SSLError) as e:
            got = str(e)
        thread.join(10)
    return seen["server"], got


def server_side(tmp_path: Path, recipe: Recipe, secrets: K3sSecrets, name: str) -> dict[str, Path]:
    work = tmp_path / name
    work.mkdir(mode=0o700)
    # Named as k3s's supervisor on 6443 names its own (pkg/cluster/https.go: CN and O "k3s", SANs its tls-san).
    cert, key = sign_certificate(work, "server", secrets.ca_cert, secrets.ca_key, subject="/O=k3s/CN=k3s",
                                 usage="serverAuth", sans=api_names(recipe))
    return {"cert": cert, "key": key, **files(work, client_ca=secrets.client_ca_cert)}


def client_side(tmp_path: Path, kubeconfig: Path, name: str) -> dict[str, Path]:
    user = user_of(kubeconfig)
    return files(tmp_path / name, ca=user["ca"], cert=user["cert"], key=user["key"])


def test_tls_handshake_with_the_kubeconfig(cluster: tuple[Context, Recipe, K3sSecrets], tmp_path: Path,
                                           recipe_file: Any) -> None:
    ctx, recipe, secrets = cluster
    server = server_side(tmp_path, recipe, secrets, "server")
    client = client_side(tmp_path, write_kubeconfig(ctx, recipe, secrets), "client")
    for hostname in ("10.0.0.1", "master.cluster.lan", "pi.example.org", "192.168.1.40"):
        assert handshake(server, client, hostname) == ("ok", "ok"), hostname
    assert "match" in handshake(server, client, "elsewhere.example.org")[1]

    # Another cluster (same recipe, its own state): its kubeconfig trusts neither way.
    other_ctx = Context(state_root=tmp_path / "other-state", invoker=None)
    other = k3s_secrets(other_ctx, recipe.cluster.name)
    kubeconfig_path(recipe).unlink()
    stranger = client_side(tmp_path, write_kubeconfig(other_ctx, recipe, other), "stranger")
    server_saw, client_saw = handshake(server, stranger, "10.0.0.1")
    assert server_saw != "ok" and "CERTIFICATE_VERIFY_FAILED" in client_saw
    # Its client certificate with our server CA trusted: the server refuses it.
    mixed = {**stranger, "ca": client["ca"]}
    server_saw, client_saw = handshake(server, mixed, "10.0.0.1")
    assert "certificate verify failed" in server_saw and client_saw != "ok"
    # Our kubeconfig against a server whose certificate another cluster's server CA signed: refused.
    impostor = server_side(tmp_path, recipe, other, "impostor")
    impostor["client_ca"] = server["client_ca"]
    assert "CERTIFICATE_VERIFY_FAILED" in handshake(impostor, client, "10.0.0.1")[1]


def test_server_names_are_the_masters_and_the_recipes(cluster: tuple[Context, Recipe, K3sSecrets],
                                                       tmp_path: Path) -> None:
    ctx, recipe, secrets = cluster
    names = api_names(recipe)
    assert names == ["master", "master.cluster.lan", "10.0.0.1", "pi.example.org", "192.168.1.40"]
    assert k3s_config(recipe, "master", secrets)["tls-san"] == names
    cert = server_side(tmp_path, recipe, secrets, "server")["cert"]
    assert openssl("verify", "-CAfile", files(tmp_path / "ca", ca=secrets.ca_cert)["ca"], cert).returncode == 0
    text = openssl("x509", "-in", cert, "-noout", "-ext", "subjectAltName,extendedKeyUsage").stdout
    assert ("DNS:master, DNS:master.cluster.lan, IP Address:10.0.0.1, DNS:pi.example.org, "
            "IP Address:192.168.1.40") in text
    assert "TLS Web Server Authentication" in text


@pytest.mark.parametrize("asked", [False, True])
def test_api_on_the_uplink_only_when_asked(tmp_path: Path, recipe_file: Any, asked: bool) -> None:
    text = recipe_text(extra=K3S if asked else "")
    rules = files_of(rendered(text, "master", tmp_path, recipe_file))["root/etc/nftables.conf"]
    opened = 'iifname "eth1" tcp dport 6443 accept' in rules
    assert opened == asked
    # Before the uplink's drop, else it would never be reached.
    assert rules.index('iifname "eth1" drop') > (rules.index("dport 6443 accept") if asked else 0)
    require_programs("nft", "unshare")
    (tmp_path / "nftables.conf").write_text(rules)
    userns = [] if os.geteuid() == 0 else ["--map-root-user"]  # nft -c needs CAP_NET_ADMIN in the namespace
    check = subprocess.run(["unshare", *userns, "--net", "nft", "-c", "-f", tmp_path / "nftables.conf"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(("network", "extra", "message"), [
    ("", "k3s: {api_on_uplink: true}\n", "k3s.api_on_uplink: needs network.uplink_interface"),
    (UPLINK, "k3s: {tls_san: [ok.example, 'not a name']}\n", "k3s.tls_san[1]: 'not a name' is neither"),
    (UPLINK, "k3s: {extra_config: {tls-san: [x.example]}}\n", "k3s.extra_config.tls-san: list the names in "
                                                              "k3s.tls_san instead"),
])
def test_recipe_mistakes(recipe_file: Any, network: str, extra: str, message: str) -> None:
    with pytest.raises(ImageBuilderError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(recipe_file(recipe_text(network, extra)))


def test_kubeconfig_command(tmp_path: Path, recipe_file: Any) -> None:
    require_programs("openssl")
    path = recipe_file(recipe_text())

    def command(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "imagebuilder", "--state-dir", tmp_path / "state",
                               "kubeconfig", path, *map(str, argv)],
                              cwd=tmp_path, capture_output=True, text=True, check=False)

    before = command()
    assert before.returncode == 2 and "has no CAs yet" in before.stderr and "imagebuilder build" in before.stderr
    k3s_secrets(Context(state_root=tmp_path / "state", invoker=None), "testcluster")
    made = command()
    assert made.returncode == 0, made.stderr
    kubeconfig = tmp_path / "out/testcluster/kubeconfig"
    assert made.stdout == f"{kubeconfig}\n"
    copied = command("--output", tmp_path / "copy.yaml")
    assert copied.returncode == 0 and copied.stdout == ""
    assert (tmp_path / "copy.yaml").read_bytes() == kubeconfig.read_bytes()
    assert stat.S_IMODE((tmp_path / "copy.yaml").stat().st_mode) == 0o600


def test_under_sudo_the_files_are_the_users(tmp_path: Path, recipe_file: Any) -> None:
    """`sudo imagebuilder kubeconfig`: the kubeconfig it makes and the copy it writes are the invoker's."""
    require_root()
    require_programs("openssl")
    path = recipe_file(recipe_text())
    k3s_secrets(Context(state_root=tmp_path / "state", invoker=None), "testcluster")
    result = subprocess.run([sys.executable, "-m", "imagebuilder", "--state-dir", tmp_path / "state", "kubeconfig",
                             path, "--output", tmp_path / "copy.yaml"], cwd=tmp_path, capture_output=True, text=True,
                            check=False, env={**os.environ, "SUDO_UID": "65534", "SUDO_GID": "65534"})
    assert result.returncode == 0, result.stderr
    for made in (tmp_path / "out/testcluster/kubeconfig", tmp_path / "copy.yaml"):
        assert (made.stat().st_uid, made.stat().st_gid, stat.S_IMODE(made.stat().st_mode)) == (65534, 65534, 0o600)
