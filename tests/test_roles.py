"""The role configuration rendered from recipes: several workers, an unknown-MAC pattern, no uplink,
Wi-Fi; checked for content and, where the tool is installed, with the real tool."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagebuilder.build.plan import render_layers
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.engine.checks import check_exports
from imagebuilder.layers.description import load_description
from imagebuilder.layers.render import BUILTIN, RenderedLayer
from imagebuilder.layers.write import write_layer
from imagebuilder.recipe.catalogue import LAYOUTS
from imagebuilder.recipe.load import load_recipe
from imagebuilder.roles.secrets import k3s_secrets, read_k3s_secrets
from imagebuilder.roles.variables import template_variables
from tests.conftest import SECRETS, require_programs

CLUSTER = """\
cluster: {name: lab, domain: lab.example}
base: {bootstrap: {}}
network:
  lan_interface: eth0
  subnet: 192.168.77.0/24
  dhcp_range: [192.168.77.150, 192.168.77.200]
  upstream_dns: [192.168.1.53]
users:
  - {name: ops, ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@desk"]}
timezone: Europe/Berlin
k3s: {extra_config: {disable: [traefik], node-label: [site=lab]}}
workers:
  - {hostname: w1, mac: "DC-A6-32-00-00-01"}
  - {hostname: w2, mac: "dc:a6:32:00:00:02", ip: 192.168.77.20}
  - {hostname: w3, mac: "dc:a6:32:00:00:03"}
unknown_workers: {hostname: "spare-{mac6}"}
"""


def rendered(recipe_text: str, role: str, tmp_path: Path, recipe_file: Any) -> dict[str, RenderedLayer]:
    recipe = load_recipe(recipe_file(recipe_text))
    variables = template_variables(recipe, role, secrets=SECRETS, boot_mount="/boot/firmware")
    return {layer.name: layer for layer in render_layers(recipe, role, variables)}


def files_of(layers: dict[str, RenderedLayer]) -> dict[str, str]:
    return {f.tree_path: f.data.decode() for layer in layers.values() for f in layer.files if not f.symlink}


@pytest.fixture
def master(tmp_path: Path, recipe_file: Any) -> dict[str, str]:
    return files_of(rendered(CLUSTER, "master", tmp_path, recipe_file))


@pytest.fixture
def worker(tmp_path: Path, recipe_file: Any) -> dict[str, str]:
    return files_of(rendered(CLUSTER, "worker", tmp_path, recipe_file))


def test_dnsmasq_reserves_every_worker_on_the_lan_only(master: dict[str, str]) -> None:
    conf = master["root/etc/dnsmasq.d/cluster.conf"].splitlines()
    assert "interface=eth0" in conf and "bind-dynamic" in conf
    assert not [line for line in conf if line.startswith("interface=") and line not in ("interface=eth0",
                                                                                       "interface=lo")]
    assert "dhcp-range=192.168.77.150,192.168.77.200,255.255.255.0,12h" in conf
    assert [line for line in conf if line.startswith("dhcp-host=")] == [
        "dhcp-host=dc:a6:32:00:00:01,w1,192.168.77.10,infinite",
        "dhcp-host=dc:a6:32:00:00:02,w2,192.168.77.20,infinite",
        "dhcp-host=dc:a6:32:00:00:03,w3,192.168.77.11,infinite",
    ]
    assert "host-record=master.lab.example,master,192.168.77.1" in conf
    assert "server=192.168.1.53" in conf and "local=/lab.example/" in conf
    assert "dhcp-option=option:router,192.168.77.1" in conf


def test_dnsmasq_accepts_the_config(master: dict[str, str], tmp_path: Path) -> None:
    require_programs("dnsmasq")
    conf = tmp_path / "cluster.conf"
    conf.write_text(master["root/etc/dnsmasq.d/cluster.conf"])
    out = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    conf.write_text(master["root/etc/dnsmasq.d/cluster.conf"] + "dhcp-range=nonsense\n")
    assert subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True,
                          check=False).returncode != 0


def test_netboot_serves_the_pi_bootloader_on_the_lan_only(tmp_path: Path, recipe_file: Any,
                                                          master: dict[str, str]) -> None:
    files = files_of(rendered(CLUSTER + "netboot: {workers: [w1, w3], tree: /srv/pxe}\n", "master", tmp_path,
                              recipe_file))
    conf = files["root/etc/dnsmasq.d/cluster.conf"].splitlines()
    assert [line for line in conf if line.startswith("dhcp-host=")] == [
        "dhcp-host=dc:a6:32:00:00:01,set:netboot,w1,192.168.77.10,infinite",
        "dhcp-host=dc:a6:32:00:00:02,w2,192.168.77.20,infinite",
        "dhcp-host=dc:a6:32:00:00:03,set:netboot,w3,192.168.77.11,infinite",
    ]
    assert "enable-tftp=eth0" in conf and "tftp-root=/srv/pxe/tftp,eth0" in conf
    assert 'pxe-service=tag:netboot,0,"Raspberry Pi Boot"' in conf
    # Without netboot: no TFTP at all, and the firewall keeps port 69 closed.
    assert not any("tftp" in line or "pxe" in line for line in master["root/etc/dnsmasq.d/cluster.conf"].splitlines())
    assert " 69," not in master["root/etc/nftables.conf"] and "67, 69, 123" in files["root/etc/nftables.conf"]
    require_programs("dnsmasq", "nft", "unshare")
    path = tmp_path / "cluster.conf"
    path.write_text(files["root/etc/dnsmasq.d/cluster.conf"])
    out = subprocess.run(["dnsmasq", "--test", f"--conf-file={path}"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    rules = tmp_path / "nftables.conf"
    rules.write_text(files["root/etc/nftables.conf"])
    out = subprocess.run(["unshare", "--net", "nft", "-c", "-f", rules], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    exports = files["root/etc/exports"]
    check_exports(exports)
    # The shared root (it holds the join token) for the netbooted workers' addresses only, not the subnet.
    assert ("/srv/pxe/root 192.168.77.10(ro,async,no_subtree_check,no_root_squash) "
            "192.168.77.11(ro,async,no_subtree_check,no_root_squash)\n") in exports
    # Each node's state for its own address only; w2 boots from its card and has none.
    assert "/srv/pxe/nodes/dc-a6-32-00-00-01 192.168.77.10(rw,sync,no_subtree_check,no_root_squash)" in exports
    assert "dc-a6-32-00-00-02" not in exports and "/srv/pxe" not in master["root/etc/exports"]
    everyone = files_of(rendered(CLUSTER + "netboot: {}\n", "master", tmp_path, recipe_file))
    assert sum("set:netboot" in line for line in everyone["root/etc/dnsmasq.d/cluster.conf"].splitlines()) == 3


def test_isolated_cluster_has_no_nat_and_a_default_route(master: dict[str, str], tmp_path: Path) -> None:
    rules = master["root/etc/nftables.conf"]
    # No NAT and no uplink: only the LAN's own filter (tests/test_firewall.py tries it with packets).
    assert "masquerade" not in rules and "eth1" not in rules and 'iifname "eth0" drop' in rules
    route = master["root/etc/systemd/system/imagebuilder-default-route.service"]
    assert "ip route add default dev eth0" in route and "ConditionPathExists" not in route
    network = yaml.safe_load(master["boot/network-config"])
    assert network == {"version": 2, "ethernets": {"eth0": {
        "dhcp4": False, "addresses": ["192.168.77.1/24"],
        "nameservers": {"addresses": ["127.0.0.1"], "search": ["lab.example"]}}}}


def test_uplink_masquerades_out_and_drops_in(tmp_path: Path, recipe_file: Any) -> None:
    text = CLUSTER.replace("  lan_interface: eth0\n", "  lan_interface: eth0\n  uplink_interface: eth1\n")
    files = files_of(rendered(text, "master", tmp_path, recipe_file))
    rules = files["root/etc/nftables.conf"]
    assert 'oifname "eth1" ip saddr 192.168.77.0/24 masquerade' in rules
    assert 'iifname "eth1" ct state established,related accept' in rules and 'iifname "eth1" drop' in rules
    assert 'iifname "eth1" tcp dport 22 accept' not in rules  # ssh from the uplink only when asked
    assert "ConditionPathExists" in files["root/etc/systemd/system/imagebuilder-default-route.service"]
    assert yaml.safe_load(files["boot/network-config"])["ethernets"]["eth1"] == {"dhcp4": True}
    require_programs("nft", "unshare")
    path = tmp_path / "nftables.conf"
    path.write_text(rules)
    # In a network namespace of its own: the check can never touch this machine's ruleset.
    out = subprocess.run(["unshare", "--net", "nft", "-c", "-f", path], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_wifi_uplink(tmp_path: Path, recipe_file: Any) -> None:
    text = CLUSTER.replace("  lan_interface: eth0\n", "  lan_interface: eth0\n  uplink_interface: wlan0\n"
                           "  wifi: {ssid: 'lab: \"5G\"', psk: 'p#ss: word', country: DE}\n")
    network = yaml.safe_load(files_of(rendered(text, "master", tmp_path, recipe_file))["boot/network-config"])
    assert network["wifis"] == {"wlan0": {"dhcp4": True, "regulatory-domain": "DE",
                                          "access-points": {'lab: "5G"': {"password": "p#ss: word"}}}}


CLOUD_CFG = "root/etc/cloud/cloud.cfg.d/90-imagebuilder.cfg"


def test_cloud_config(master: dict[str, str], worker: dict[str, str]) -> None:
    for files in (master, worker):
        # The seed's user-data is empty: what the node needs is system configuration, which survives a
        # card whose seed files were replaced.
        assert files["boot/user-data"].startswith("#cloud-config\n")
        assert yaml.safe_load(files["boot/user-data"]) == {}
        data = yaml.safe_load(files[CLOUD_CFG])
        assert data["users"][0]["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@desk"]
        assert data["users"][0]["lock_passwd"] is True and data["ssh_pwauth"] is False
        assert data["timezone"] == "Europe/Berlin" and data["ssh_deletekeys"] is True
        # A node's name is the recipe's: cloud-init must never set it or rewrite /etc/hosts.
        assert "hostname" not in data and data["preserve_hostname"] is True
        assert data["manage_etc_hosts"] is False
        assert yaml.safe_load(files["root/etc/imagebuilder/network-config"]) == yaml.safe_load(
            files["boot/network-config"])
    assert master["root/etc/hostname"] == "master\n"
    assert "127.0.1.1\tmaster.lab.example master" in master["root/etc/hosts"]
    assert yaml.safe_load(master["boot/meta-data"])["instance-id"].startswith("lab-master-")


def test_worker_table_and_units(worker: dict[str, str]) -> None:
    table = json.loads(worker["root/etc/imagebuilder/cluster-table.json"])
    assert table["unknown_pattern"] == "spare-{mac6}" and table["lan_interface"] == "eth0"
    assert [(w["mac"], w["hostname"]) for w in table["workers"]] == [
        ("dc:a6:32:00:00:01", "w1"), ("dc:a6:32:00:00:02", "w2"), ("dc:a6:32:00:00:03", "w3")]
    unit = worker["root/etc/systemd/system/imagebuilder-hostname.service"]
    # No device unit: the program waits for the LAN interface itself (a board's NIC may have another name).
    # Named before the network (DHCP sends the name); beside cloud-init-local, which does not use it.
    assert "Before=network-pre.target networking.service" in unit and "cloud-init-local" not in unit
    assert ".device" not in unit
    assert "After=boot-firmware.mount" in unit
    assert "What=192.168.77.1:/srv/jobs" in worker["root/etc/systemd/system/srv-jobs.mount"]


def test_k3s_configs(master: dict[str, str], worker: dict[str, str]) -> None:
    server = yaml.safe_load(master["root/etc/rancher/k3s/config.yaml"])
    assert server == {"token": SECRETS.server_token, "agent-token": SECRETS.agent_token, "node-ip": "192.168.77.1",
                      "flannel-iface": "eth0", "tls-san": ["master", "master.lab.example", "192.168.77.1"],
                      "write-kubeconfig-mode": "0600", "disable": ["traefik"], "node-label": ["site=lab"]}
    agent = yaml.safe_load(worker["root/etc/rancher/k3s/config.yaml"])
    # The agent token alone, pinned to the cluster CA's hash: K10<sha256 of server-ca.crt>::node:<password>.
    assert agent == {"server": "https://192.168.77.1:6443", "flannel-iface": "eth0",
                     "token": f"K10{hashlib.sha256(SECRETS.ca_cert.encode()).hexdigest()}::node:{SECRETS.agent_token}"}
    assert master["root/var/lib/rancher/k3s/server/tls/server-ca.crt"] == SECRETS.ca_cert
    assert master["root/var/lib/rancher/k3s/server/tls/server-ca.key"] == SECRETS.ca_key
    assert master["root/var/lib/rancher/k3s/server/tls/client-ca.crt"] == SECRETS.client_ca_cert
    assert master["root/var/lib/rancher/k3s/server/tls/client-ca.key"] == SECRETS.client_ca_key


def test_workers_carry_no_server_secret(worker: dict[str, str]) -> None:
    for name, text in worker.items():
        assert SECRETS.server_token not in text and "PRIVATE KEY" not in text, name


def test_k3s_config_is_private_in_the_tree(tmp_path: Path, recipe_file: Any) -> None:
    layers = rendered(CLUSTER, "worker", tmp_path, recipe_file)
    tree = tmp_path / "tree"
    written = [p for layer in layers.values() for p in write_layer(layer, tree)]
    assert "/boot/firmware/user-data" in written
    assert stat.S_IMODE((tree / "etc/rancher/k3s/config.yaml").stat().st_mode) == 0o600
    assert stat.S_IMODE((tree / "usr/local/lib/imagebuilder/k3s-node-ip").stat().st_mode) == 0o755


def test_common_layer_asks_for_cgroups(tmp_path: Path, recipe_file: Any) -> None:
    layers = rendered(CLUSTER, "common", tmp_path, recipe_file)
    assert "cgroup_enable=memory" in layers["common"].kernel_arguments
    assert "imagebuilder-beacon.service" in layers["common"].units


def test_exports_for_the_subnet_only(master: dict[str, str]) -> None:
    line = master["root/etc/exports"].splitlines()[-1]
    assert line == "/srv/jobs 192.168.77.0/24(rw,sync,no_subtree_check,root_squash)"
    check_exports(master["root/etc/exports"])
    with pytest.raises(ImageBuilderError, match="not a valid export line"):
        check_exports("/srv/jobs *(rw,no_such_option)\n")


def test_secrets_made_once_private_and_reused(tmp_path: Path) -> None:
    require_programs("openssl")
    ctx = Context(state_root=tmp_path / "state")
    first = k3s_secrets(ctx, "lab")
    state = tmp_path / "state" / "lab"
    for name in ("k3s-token", "k3s-agent-token", "k3s-server-ca/server-ca.key", "k3s-server-ca/server-ca.crt",
                 "k3s-client-ca/client-ca.key", "k3s-client-ca/client-ca.crt"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert len(first.server_token) == len(first.agent_token) == 64 and first.server_token != first.agent_token
    assert k3s_secrets(ctx, "lab") == first == read_k3s_secrets(ctx, "lab")
    assert first.client_ca_cert != first.ca_cert
    # Two CAs that verify themselves, whose keys are the certificates' (what k3s checks when it takes them).
    for name in ("server-ca", "client-ca"):
        cert, key = state / f"k3s-{name}/{name}.crt", state / f"k3s-{name}/{name}.key"
        subprocess.run(["openssl", "verify", "-CAfile", cert, cert], check=True, capture_output=True)
        text = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-text"], capture_output=True, text=True,
                              check=True).stdout
        assert "CA:TRUE" in text and "Certificate Sign" in text and "prime256v1" in text
        assert f"CN = k3s-{name}@" in text
        pub = [subprocess.run(argv, capture_output=True, check=True).stdout for argv in (
            ["openssl", "x509", "-in", cert, "-noout", "-pubkey"], ["openssl", "pkey", "-in", key, "-pubout"])]
        assert pub[0] == pub[1]


def test_two_first_builds_at_once_end_with_one_secret(tmp_path: Path) -> None:
    """Each process makes its own value; the one linked first is the one both keep."""
    # Every maker holds until the same moment, so all eight are inside the window between the check for
    # the file and the link (each says on stderr that it made a value).
    script = ("import secrets, sys, time; from pathlib import Path; from imagebuilder.roles.secrets import secret\n"
              "def make():\n"
              "    time.sleep(max(0.0, float(sys.argv[2]) - time.time())); print('made', file=sys.stderr)\n"
              "    return secrets.token_hex(32)\n"
              "print(secret(Path(sys.argv[1]), make))\n")
    together = str(time.time() + 4)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "token"), together],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [p.communicate() for p in procs]
    assert [err.strip() for _, err in results] == ["made"] * 8, results
    values = {out.strip() for out, _ in results}
    assert len(values) == 1 and (tmp_path / "token").read_text().strip() in values
    assert [p.name for p in tmp_path.iterdir()] == ["token"]


def test_rootless_build_defers_packages_and_their_units(tmp_path: Path, recipe_file: Any) -> None:
    recipe = load_recipe(recipe_file(CLUSTER))
    variables = template_variables(recipe, "master", secrets=SECRETS, boot_mount="/boot/firmware",
                                   first_boot_packages=("nfs-common", "dnsmasq", "nftables"))
    data = variables["user_data"]
    assert data["packages"] == ["nfs-common", "dnsmasq", "nftables"] and data["package_update"] is True
    assert data["runcmd"] == [["systemctl", "enable", "--now", "nftables.service"]]


def test_first_boot_needs_no_generated_locale_and_has_zoneinfo(master: dict[str, str]) -> None:
    # Found by the boot test: cloud-init's default locale is not generated on a minimal base, and
    # its timezone module needs tzdata.
    assert yaml.safe_load(master[CLOUD_CFG])["locale"] == "C.UTF-8"
    assert "tzdata" in load_description(BUILTIN / "common").packages


def test_bookworm_base_gets_cloud_init(recipe_file: Any) -> None:
    # Raspberry Pi OS Bookworm configures itself with its own firstboot script, not cloud-init: the build
    # installs cloud-init and points it at the seed on the boot partition, so its workers self-join too.
    from imagebuilder.roles.cloudinit import cloud_init_for_base

    text = CLUSTER.replace("base: {bootstrap: {}}", "base: {image: raspios-lite-bookworm}")
    bookworm = load_recipe(recipe_file(text))
    packages, layer = cloud_init_for_base(bookworm, LAYOUTS["raspios"])
    assert packages == ("cloud-init", "cloud-guest-utils") and layer is not None
    (config,) = layer.files
    assert config.path == "etc/cloud/cloud.cfg.d/90-imagebuilder-datasource.cfg"
    assert yaml.safe_load(config.data) == {"datasource_list": ["NoCloud", "None"],
                                           "datasource": {"NoCloud": {"fs_label": "bootfs"}}}
    for other in ("raspios-lite-trixie", "ubuntu-24.04-raspi"):
        recipe = load_recipe(recipe_file(CLUSTER.replace("base: {bootstrap: {}}", f"base: {{image: {other}}}")))
        assert cloud_init_for_base(recipe, LAYOUTS["raspios"]) == ((), None)
    assert cloud_init_for_base(load_recipe(recipe_file(CLUSTER)), LAYOUTS["raspios"]) == ((), None)


def test_netboot_initramfs_scripts_parse_and_name_the_tree(tmp_path: Path, recipe_file: Any,
                                                           worker: dict[str, str]) -> None:
    layers = rendered(CLUSTER + "netboot: {tree: /srv/pxe}\n", "worker", tmp_path, recipe_file)
    assert "netboot" in layers and not any("initramfs-tools" in name for name in worker)
    scripts = {f.tree_path: f for f in layers["netboot"].files}
    bottom = scripts["root/etc/initramfs-tools/scripts/init-bottom/imagebuilder-netboot"]
    assert 'tree="/srv/pxe"' in bottom.data.decode() and bottom.mode == 0o755
    require_programs("dash")
    for f in (f for f in scripts.values() if not f.path.endswith(".service")):
        path = tmp_path / f.path.rsplit("/", 1)[-1]
        path.write_bytes(f.data)
        out = subprocess.run(["dash", "-n", path], capture_output=True, text=True, check=False)
        assert out.returncode == 0, (f.path, out.stderr)
