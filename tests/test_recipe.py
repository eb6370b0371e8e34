"""Recipe validation: every rule, each asserting the key path its message names."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from imagebuilder.core.errors import RecipeError
from imagebuilder.recipe.k3s_keys import keys_for, load_key_lists
from imagebuilder.recipe.load import load_recipe
from imagebuilder.recipe.rules import K3S_OWN_KEYS
from tests.conftest import ROOT, VALID


def replace(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new)


def add(text: str) -> str:
    return VALID + text


WORKER2 = '  - {hostname: node2, mac: "b8:27:eb:00:00:02", ip: 10.0.0.12}'

# (case id, recipe text, key path the error must name, a fragment of the message)
MALFORMED = [
    ("unknown-top-key", add("colour: blue\n"), "colour", "unknown key"),
    ("unknown-key-suggests", add("timezon: Etc/UTC\n"), "timezon", "did you mean 'timezone'"),
    ("unknown-nested-key", replace("lan_interface: eth0", "lan_iface: eth0"),
     "network.lan_iface", "did you mean 'lan_interface'"),
    ("unknown-worker-key", replace(WORKER2, WORKER2[:-1] + ", role: gpu}"), "workers[1].role", "unknown key"),
    ("duplicate-top-key", add("arch: armhf\n"), "arch", "duplicate key"),
    ("duplicate-nested-key", replace("  master_ip: 10.0.0.1\n", "  master_ip: 10.0.0.1\n  master_ip: 10.0.0.2\n"),
     "network.master_ip", "duplicate key"),
    ("missing-cluster-name", replace("{name: testcluster, domain: cluster.lan}", "{domain: cluster.lan}"),
     "cluster.name", "is required"),
    ("missing-workers", VALID.split("workers:")[0], "workers", "is required"),
    ("missing-base", replace("base:\n  bootstrap: {suite: bookworm}\n", ""), "base", "is required"),
    ("bad-cluster-name", replace("name: testcluster", "name: Test_Cluster"), "cluster.name", "not a cluster name"),
    ("bad-domain", replace("domain: cluster.lan", "domain: 'cluster..lan'"), "cluster.domain", "not a DNS domain"),
    ("workers-not-list", VALID.split("workers:")[0] + "workers: node1\n", "workers", "expected a list"),
    ("network-not-mapping", replace("network:\n  lan_interface: eth0\n  subnet: 10.0.0.0/24\n  master_ip: 10.0.0.1\n"
                                    "  dhcp_range: [10.0.0.100, 10.0.0.199]\n", "network: [eth0]\n"),
     "network", "expected a mapping"),
    ("bool-for-string", replace("lan_interface: eth0", "lan_interface: yes"), "network.lan_interface",
     "expected a string"),
    ("string-for-bool", add("output: {bmap: maybe}\n"), "output.bmap", "expected true or false"),
    ("list-for-string", replace("hostname: node1,", "hostname: [node1],"), "workers[0].hostname", "expected a string"),
    ("bad-mac", replace('"b8:27:eb:00:00:02"', '"b8:27:eb:00:02"'), "workers[1].mac", "not a MAC address"),
    ("bad-mac-hex", replace('"b8:27:eb:00:00:02"', '"b8:27:eb:00:00:zz"'), "workers[1].mac", "not a MAC address"),
    ("mixed-separators", replace('"b8:27:eb:00:00:02"', '"b8-27:eb:00:00:02"'), "workers[1].mac",
     "not a MAC address"),
    ("multicast-mac", replace('"b8:27:eb:00:00:02"', '"01:00:5e:00:00:02"'), "workers[1].mac", "multicast"),
    ("duplicate-mac-other-case", replace('"b8:27:eb:00:00:02"', '"B8-27-EB-00-00-01"'), "workers[1].mac",
     "already given for workers[0]"),
    ("duplicate-hostname", replace("hostname: node2", "hostname: node1"), "workers[1].hostname",
     "already used by workers[0]"),
    ("hostname-equals-master", replace("hostname: node2", "hostname: master"), "workers[1].hostname",
     "already used by master.hostname"),
    ("hostname-underscore", replace("hostname: node2", "hostname: node_2"), "workers[1].hostname",
     "not a valid hostname"),
    ("hostname-leading-dash", replace("hostname: node2", "hostname: -node2"), "workers[1].hostname",
     "not a valid hostname"),
    ("hostname-too-long", replace("hostname: node2", "hostname: " + "n" * 64), "workers[1].hostname",
     "not a valid hostname"),
    ("master-hostname-upper", add("master: {hostname: Master}\n"), "master.hostname", "not a valid hostname"),
    ("ip-outside-subnet", replace("ip: 10.0.0.12", "ip: 10.0.1.12"), "workers[1].ip", "outside the subnet"),
    ("ip-in-dhcp-range", replace("ip: 10.0.0.12", "ip: 10.0.0.150"), "workers[1].ip", "inside the DHCP range"),
    ("ip-is-master", replace("ip: 10.0.0.12", "ip: 10.0.0.1"), "workers[1].ip", "address of the master"),
    ("ip-duplicate", replace("ip: 10.0.0.12", "ip: 10.0.0.11"), "workers[1].ip", "address of workers[0]"),
    ("ip-broadcast", replace("ip: 10.0.0.12", "ip: 10.0.0.255"), "workers[1].ip", "broadcast"),
    ("ip-malformed", replace("ip: 10.0.0.12", "ip: 10.0.0.300"), "workers[1].ip", "not an IPv4 address"),
    ("master-outside-subnet", replace("master_ip: 10.0.0.1", "master_ip: 192.0.2.1"), "network.master_ip",
     "outside the subnet"),
    ("master-in-range", replace("master_ip: 10.0.0.1", "master_ip: 10.0.0.120"), "network.master_ip",
     "inside the DHCP range"),
    ("range-outside-subnet", replace("[10.0.0.100, 10.0.0.199]", "[10.0.0.100, 10.0.5.199]"),
     "network.dhcp_range[1]", "outside the subnet"),
    ("range-reversed", replace("[10.0.0.100, 10.0.0.199]", "[10.0.0.199, 10.0.0.100]"), "network.dhcp_range",
     "reversed"),
    ("range-one-address", replace("[10.0.0.100, 10.0.0.199]", "[10.0.0.100]"), "network.dhcp_range",
     "two addresses"),
    ("subnet-host-bits", replace("subnet: 10.0.0.0/24", "subnet: 10.0.0.1/24"), "network.subnet",
     "write the network address, 10.0.0.0/24"),
    ("subnet-garbage", replace("subnet: 10.0.0.0/24", "subnet: tenet"), "network.subnet", "not an IPv4 network"),
    ("upstream-dns", add("") .replace("  dhcp_range:", "  upstream_dns: [1.1.1.1, dns.example]\n  dhcp_range:"),
     "network.upstream_dns[1]", "not an IPv4 address"),
    ("wifi-without-uplink", replace("lan_interface: eth0", "lan_interface: eth0\n  wifi: {ssid: lab, psk: secret123}"),
     "network.wifi", "uplink_interface"),
    ("wifi-short-psk", replace("lan_interface: eth0",
                               "lan_interface: eth0\n  uplink_interface: wlan0\n  wifi: {ssid: lab, psk: short}"),
     "network.wifi.psk", "8 to 63"),
    ("base-none", replace("  bootstrap: {suite: bookworm}\n", "  mirror: http://127.0.0.1/\n"), "base",
     "exactly one of image, url or bootstrap (got none)"),
    ("base-several", replace("  bootstrap: {suite: bookworm}\n",
                             "  bootstrap: {suite: bookworm}\n  image: ubuntu-24.04-raspi\n"),
     "base", "got image and bootstrap"),
    ("base-unknown-image", replace("  bootstrap: {suite: bookworm}\n", "  image: ubuntu-24.04-rapsi\n"),
     "base.image", "did you mean 'ubuntu-24.04-raspi'"),
    ("base-bad-sha256", replace("  bootstrap: {suite: bookworm}\n",
                                "  url: http://127.0.0.1/a.img.xz\n  sha256: abc123\n"),
     "base.sha256", "64 hex digits"),
    ("base-url-unverified", replace("  bootstrap: {suite: bookworm}\n", "  url: http://127.0.0.1/a.img.xz\n"),
     "base.url", "needs sha256 or checksum_url"),
    ("base-bad-url", replace("  bootstrap: {suite: bookworm}\n", "  url: ftp:/x\n  sha256: " + "a" * 64 + "\n"),
     "base.url", "not a URL"),
    ("bootstrap-suite", replace("{suite: bookworm}", "{suite: buster}"), "base.bootstrap.suite", "not one of"),
    ("bootstrap-layout", replace("{suite: bookworm}", "{suite: bookworm, layout: fedora}"),
     "base.bootstrap.layout", "not one of"),
    ("unknown-arch", replace("arch: arm64", "arch: riscv64"), "arch", "not one of arm64, armhf"),
    ("compress", add("output: {compress: lz4}\n"), "output.compress", "not one of xz, zstd, none"),
    ("image-size", add("output: {image_size: 4 GB}\n"), "output.image_size", "not a size"),
    ("k3s-version", add("k3s: {version: '1.31'}\n"), "k3s.version", "not a k3s release"),
    ("k3s-extra-not-mapping", add("k3s: {extra_config: [a]}\n"), "k3s.extra_config", "expected a mapping"),
    ("k3s-extra-unknown-key", add("k3s: {extra_config: {node-lable: [site=lab]}}\n"), "k3s.extra_config.node-lable",
     "is not a k3s v1.31 server option; did you mean 'node-label'?"),
    ("k3s-extra-agent-only-key", add("k3s: {extra_config: {disable-apiserver-lb: true}}\n"),
     "k3s.extra_config.disable-apiserver-lb", "not a k3s v1.31 server option"),
    ("unknown-pattern-no-mac", add("unknown_workers: {hostname: node}\n"), "unknown_workers.hostname",
     "must contain {mac6}"),
    ("unknown-pattern-bad-field", add("unknown_workers: {hostname: 'n-{serial}'}\n"), "unknown_workers.hostname",
     "placeholders"),
    ("package-name", add("packages: {common: [Htop]}\n"), "packages.common[0]", "not a Debian package name"),
    ("user-name", add("users: [{name: 'Bad User'}]\n"), "users[0].name", "not a user name"),
    ("user-duplicate", add("users: [{name: pi}, {name: pi}]\n"), "users[1].name", "given twice"),
    ("ssh-key", add("users: [{name: pi, ssh_authorized_keys: ['hello']}]\n"), "users[0].ssh_authorized_keys[0]",
     "not an SSH public key"),
    ("password-hash", add("users: [{name: pi, password_hash: secret}]\n"), "users[0].password_hash",
     "sha512-crypt"),
    ("timezone", add("timezone: Mars/Olympus\n"), "timezone", "time zone"),
    ("overlay-missing", add("overlays: [no-such-dir]\n"), "overlays[0]", "not a directory"),
    ("monitoring-group-unicast", add("monitoring: {group: 10.0.0.5}\n"), "monitoring.group",
     "not an IPv4 multicast group"),
    ("monitoring-group-reserved", add("monitoring: {group: 224.0.0.1}\n"), "monitoring.group", "reserved"),
    ("monitoring-port", add("monitoring: {dashboard_port: 70000}\n"), "monitoring.dashboard_port", "1 to 65535"),
    ("monitoring-interval", add("monitoring: {interval: 0}\n"), "monitoring.interval", "1 to 300 seconds"),
    ("netboot-unknown-worker", add("netboot: {workers: [nod1]}\n"), "netboot.workers[0]",
     "not in the workers table; did you mean 'node1'?"),
    ("netboot-all-and-names", add("netboot: {workers: [all, node1]}\n"), "netboot.workers", "not both"),
    ("netboot-none", add("netboot: {workers: []}\n"), "netboot.workers", "no worker boots from the network"),
    ("netboot-twice", add("netboot: {workers: [node1, node1]}\n"), "netboot.workers[1]", "given twice"),
    ("netboot-relative-tree", add("netboot: {tree: srv/netboot}\n"), "netboot.tree", "absolute path"),
    ("netboot-tree-spaces", add("netboot: {tree: '/srv/net boot'}\n"), "netboot.tree", "absolute path"),
    ("netboot-tree-root", add("netboot: {tree: /}\n"), "netboot.tree", "not / itself"),
    ("netboot-tree-dotdot", add("netboot: {tree: /srv/../etc}\n"), "netboot.tree", "without '..'"),
    ("netboot-unknown-key", add("netboot: {serials: true}\n"), "netboot.serials", "unknown"),
    ("sign-key-missing", add("output: {sign_key: keys/none}\n"), "output.sign_key", "keys/none: no such file"),
    ("sign-key-not-text", add("output: {sign_key: [a]}\n"), "output.sign_key", "expected a string"),
]


def test_enough_cases() -> None:
    assert len(MALFORMED) >= 30


@pytest.mark.parametrize(("text", "key", "fragment"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_recipe_names_key(recipe_file, text: str, key: str, fragment: str) -> None:
    path = recipe_file(text)
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    lines = excinfo.value.problems
    matching = [line for line in lines if line.startswith(f"{path}: {key}: ")]
    assert matching, f"no problem names {key}: {lines}"
    assert any(fragment in line for line in matching), matching


def test_sign_key_must_be_a_private_key(recipe_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
                                     "-----END OPENSSH PRIVATE KEY-----\n")
    (keys / "id_ed25519.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx me@host\n")
    (keys / "notes.txt").write_text("my signing key is elsewhere\n")
    for given, fragment in (("keys/id_ed25519.pub", "is a public key: give the private key"),
                            ("keys/notes.txt", "is not an OpenSSH private key"),
                            ("keys", "is a folder, not a key file")):
        path = recipe_file(add(f"output: {{sign_key: {given}}}\n"))
        with pytest.raises(RecipeError) as excinfo:
            load_recipe(path)
        (problem,) = excinfo.value.problems
        assert problem.startswith(f"{path}: output.sign_key: {tmp_path / given} ") and fragment in problem, problem
    recipe = load_recipe(recipe_file(add("output: {sign_key: keys/id_ed25519}\n")))
    assert recipe.sign_key_path() == keys / "id_ed25519"
    # ~ is the home of whoever ran the command (under sudo, theirs).
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SUDO_UID", raising=False)
    recipe = load_recipe(recipe_file(add("output: {sign_key: ~/keys/id_ed25519}\n"), "other.yaml"))
    assert recipe.sign_key_path() == keys / "id_ed25519"


def test_valid_recipe_loads_frozen(recipe_file) -> None:
    recipe = load_recipe(recipe_file(VALID))
    assert recipe.cluster.name == "testcluster"
    assert [w.hostname for w in recipe.workers] == ["node1", "node2"]
    with pytest.raises(AttributeError):
        recipe.arch = "armhf"  # type: ignore[misc]


def test_defaults_are_derived_from_subnet(recipe_file) -> None:
    text = """\
cluster: {name: c}
base: {bootstrap: {}}
network: {subnet: 192.168.50.0/24}
workers:
  - {hostname: a, mac: "DC-A6-32-00-00-0A"}
  - {hostname: b, mac: "dc:a6:32:00:00:0b", ip: 192.168.50.10}
  - {hostname: c, mac: "dc:a6:32:00:00:0c"}
"""
    recipe = load_recipe(recipe_file(text))
    assert recipe.network.master_ip == "192.168.50.1"
    assert recipe.network.dhcp_range == ("192.168.50.100", "192.168.50.199")
    assert recipe.workers[0].mac == "dc:a6:32:00:00:0a"
    # .10 is taken by b, so a and c get the next free addresses in table order.
    assert [w.ip for w in recipe.workers] == ["192.168.50.11", "192.168.50.10", "192.168.50.12"]
    assert recipe.base.bootstrap is not None and recipe.base.bootstrap.layout == "raspios"
    assert recipe.output.compress == "xz" and recipe.unknown_workers.hostname == "node-{mac6}"


def test_numeric_looking_mac_is_taken_as_written(recipe_file) -> None:
    # YAML 1.1 reads 10:20:30:40:50:58 as a base-60 integer; we take the text.
    recipe = load_recipe(recipe_file(replace('"b8:27:eb:00:00:02"', "10:20:30:40:50:58")))
    assert recipe.workers[1].mac == "10:20:30:40:50:58"


def test_sizes_and_macs_are_parsed_once_at_load(recipe_file) -> None:
    text = add("output: {image_size: 3500M}\n").replace("b8:27:eb:00:00:01", "B8-27-EB-00-00-01")
    recipe = load_recipe(recipe_file(text))
    assert recipe.output.image_size == 3500 * 2**20
    assert recipe.workers[0].mac == "b8:27:eb:00:00:01"
    assert load_recipe(recipe_file(VALID)).output.image_size is None


def test_every_problem_is_reported(recipe_file) -> None:
    text = replace("arch: arm64", "arch: sparc").replace('"b8:27:eb:00:00:02"', '"zz"') + "colour: red\n"
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(recipe_file(text))
    keys = {line.split(": ")[1] for line in excinfo.value.problems}
    assert {"arch", "workers[1].mac", "colour"} <= keys


def test_problem_names_line(recipe_file) -> None:
    path = recipe_file(replace("arch: arm64", "arch: sparc"))
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    assert excinfo.value.problems == [f"{path}: arch: 'sparc' is not one of arm64, armhf (line 4)"]


def test_yaml_syntax_error_gives_line_and_column(recipe_file) -> None:
    path = recipe_file("cluster: {name: x\nbase: [\n")
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    (line,) = excinfo.value.problems
    assert re.match(rf"{re.escape(str(path))}: line \d+, column \d+: YAML does not parse", line)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(tmp_path / "nope.yaml")
    assert excinfo.value.problems == [f"{tmp_path / 'nope.yaml'}: no such file (check the path)"]


def test_unreadable_file(recipe_file) -> None:
    path = recipe_file(VALID)
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path.parent)
    assert "cannot read it" in excinfo.value.problems[0]


def test_empty_file(recipe_file) -> None:
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(recipe_file(""))
    keys = {line.split(": ")[1] for line in excinfo.value.problems}
    assert keys == {"cluster", "base", "workers"}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_shipped_recipes_validate(name: str) -> None:
    load_recipe(ROOT / "recipes" / name)


def test_make_images_builds_offline() -> None:
    assert load_recipe(ROOT / "recipes" / "cluster.yaml").k3s.assets == "none"


def test_shipped_recipes_differ_only_in_base() -> None:
    def settings(name: str) -> list[str]:
        text = (ROOT / "recipes" / name).read_text()
        # cluster.yaml, which `make images` builds offline, alone says k3s.assets: none; the bases with
        # netplan show a Wi-Fi uplink, which the bootstrap base cannot have.
        wifi = ("  uplink_interface: wlan0", '  wifi: {ssid: my-network, psk: "change this passphrase", country: GB}')
        return [line for line in text.splitlines() if not line.lstrip().startswith("#") and line != "  assets: none"
                and line not in wifi]

    cluster = settings("cluster.yaml")
    for other in ("ubuntu.yaml", "raspios.yaml"):
        lines = settings(other)
        assert len(lines) == len(cluster)
        assert len([a for a, b in zip(cluster, lines, strict=True) if a != b]) == 1, other


def test_k3s_extra_config_takes_the_server_and_agent_flags_of_its_version(recipe_file) -> None:
    config = "{disable: [traefik], node-label: [site=lab], kubelet-arg: [max-pods=50], secrets-encryption: true}"
    recipe = load_recipe(recipe_file(add(f"k3s: {{version: v1.31.4+k3s1, extra_config: {config}}}\n")))
    assert set(recipe.k3s.extra_config) == {"disable", "node-label", "kubelet-arg", "secrets-encryption"}


def test_k3s_version_without_a_key_list_is_checked_against_the_nearest_with_a_warning(
        recipe_file, caplog: pytest.LogCaptureFixture) -> None:
    path = recipe_file(add("k3s: {version: v1.35.2+k3s1, extra_config: {node-lable: [a=b], node-label: [c=d]}}\n"))
    with caplog.at_level(logging.WARNING):
        recipe = load_recipe(path)
    assert recipe.k3s.extra_config == {"node-lable": ["a=b"], "node-label": ["c=d"]}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"WARNING: {path}: k3s.extra_config.node-lable: not a k3s v1.31 server option (imagebuilder "
                        "has no key list for v1.35.2+k3s1, so it checked against v1.31's); did you mean 'node-label'?"]


def test_k3s_key_lists_are_flag_names() -> None:
    lists = load_key_lists()
    assert "v1.31" in lists
    for minor, keys in lists.items():
        assert re.fullmatch(r"v1\.\d+", minor)
        assert all(re.fullmatch(r"[a-z][a-z0-9-]*", k) for k in keys), minor
        # The keys the build sets itself are real server options (the recipe is told they are taken).
        assert set(K3S_OWN_KEYS) <= keys, minor
    text = (ROOT / "imagebuilder/data/k3s-keys.yaml").read_text()
    assert "pkg/cli/cmds/server.go" in text and "docs.k3s.io/cli/server" in text


def test_nearest_key_list() -> None:
    assert keys_for("v1.31.4+k3s1").exact and keys_for("v1.31.4+k3s1").minor == "v1.31"
    newer, older = keys_for("v1.40.1+k3s1"), keys_for("v1.20.0+k3s1")
    assert not newer.exact and newer.minor == max(load_key_lists(), key=lambda m: int(m.split(".")[1]))
    assert not older.exact and older.minor == min(load_key_lists(), key=lambda m: int(m.split(".")[1]))
