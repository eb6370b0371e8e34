"""Hostile recipe values: a newline, quotes, ';', $(...), backticks, '#', NUL or a very long value in every
string setting is either refused by validate, naming the key, or lands literally in the rendered files and
changes nothing else.

"Nothing else" is checked on the rendered files themselves: text formats (dnsmasq, nftables, units, shell)
must be exactly those of the plain recipe, and structured ones (YAML, JSON) must parse to the plain
recipe's data with only the hostile value in its place.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagebuilder.build.plan import render_layers
from imagebuilder.core.errors import RecipeError
from imagebuilder.layers.render import systemd_escape
from imagebuilder.recipe.load import load_recipe
from imagebuilder.roles.variables import template_variables
from tests.conftest import SECRETS, require_programs

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@desk"
HASH = "$6$saltsalt$" + "a" * 86
PLAIN: dict[str, Any] = {
    "cluster": {"name": "lab", "domain": "lab.example"},
    "base": {"bootstrap": {"suite": "bookworm", "mirror": "http://mirror.invalid/debian",
                           "image_mirror": "http://mirror.invalid/debian"}},
    "network": {"lan_interface": "eth0", "uplink_interface": "wlan0", "subnet": "10.0.0.0/24",
                "wifi": {"ssid": "labnet", "psk": "passphrase1", "country": "GB"},
                "upstream_dns": ["10.0.2.3"]},
    "users": [{"name": "ops", "ssh_authorized_keys": [KEY], "password_hash": HASH}],
    "timezone": "Europe/Berlin",
    "k3s": {"version": "v1.31.4+k3s1", "extra_config": {"node-label": ["site=lab"], "cluster-domain": "k8s.lab"},
            "assets": "none"},
    "master": {"hostname": "master"},
    "workers": [{"hostname": "w1", "mac": "dc:a6:32:00:00:01"}],
    "unknown_workers": {"hostname": "spare-{mac6}"},
    "packages": {"common": ["htop"], "master": ["vim"], "worker": ["less"]},
    "monitoring": {"group": "239.255.77.1"},
    "output": {"dir": "out", "compress": "zstd", "image_size": "4G"},
}
# Every string setting of the recipe, as a path into PLAIN (list items by index).
SETTINGS = [
    ("cluster", "name"), ("cluster", "domain"), ("base", "bootstrap", "mirror"),
    ("base", "bootstrap", "image_mirror"), ("network", "lan_interface"), ("network", "uplink_interface"),
    ("network", "wifi", "ssid"), ("network", "wifi", "psk"), ("network", "wifi", "country"),
    ("network", "subnet"), ("network", "upstream_dns", 0), ("users", 0, "name"),
    ("users", 0, "ssh_authorized_keys", 0), ("users", 0, "password_hash"), ("timezone",),
    ("k3s", "extra_config", "cluster-domain"), ("k3s", "extra_config", "node-label", 0), ("k3s", "assets"),
    ("k3s", "version"), ("master", "hostname"), ("workers", 0, "hostname"), ("workers", 0, "mac"),
    ("unknown_workers", "hostname"), ("packages", "common", 0), ("packages", "master", 0),
    ("packages", "worker", 0), ("monitoring", "group"), ("output", "dir"), ("output", "image_size"),
]
HOSTILE = ["\nserver=1.2.3.4", "'", '"', "; reboot", "$(reboot)", "`reboot`", "#", "\0", "x" * 5000]


def put(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = doc
    for part in path[:-1]:
        target = target[part]
    if isinstance(target, dict) and path[-1] not in target:
        raise KeyError(path)
    target[path[-1]] = value


def render_all(recipe_path: Path) -> dict[str, str]:
    recipe = load_recipe(recipe_path)
    files = {}
    for role in ("common", "master", "worker"):
        variables = template_variables(recipe, role, secrets=SECRETS, boot_mount="/boot/firmware")
        for layer in render_layers(recipe, role, variables):
            for f in layer.files:
                if not f.symlink and not f.tree_path.endswith(".py"):
                    files[f"{role}:{f.tree_path}"] = f.data.decode()
    return files


def parsed(name: str, text: str) -> Any:
    """Structured files as data; None for a text format (compared as text)."""
    if name.endswith(".json"):
        return json.loads(text)
    if name.endswith((".yaml", ".cfg", "user-data", "network-config", "meta-data")) or "netplan" in name:
        return yaml.safe_load(text)
    return None


def replaced(data: Any, old: Any, new: Any) -> Any:
    """data with every occurrence of the scalar `old` (or inside a string) put back as `new`."""
    if isinstance(data, dict):
        return {replaced(k, old, new): replaced(v, old, new) for k, v in data.items()}
    if isinstance(data, list):
        return [replaced(v, old, new) for v in data]
    if isinstance(data, str) and isinstance(old, str) and old in data:
        return data.replace(old, new)
    return new if data == old else data


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("plain")
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(PLAIN))
    return render_all(path)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: ".".join(map(str, s)))
def test_hostile_values_are_refused_or_stay_in_their_place(setting: tuple[Any, ...], plain: dict[str, str],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    original: Any = PLAIN
    for part in setting:
        original = original[part]
    key = ".".join(f"[{p}]" if isinstance(p, int) else p for p in setting).replace(".[", "[")
    for hostile in HOSTILE:
        value = original + hostile if isinstance(original, str) and hostile.startswith(("\n", ";")) else hostile
        doc = copy.deepcopy(PLAIN)
        put(doc, setting, value)
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=False))
        try:
            files = render_all(path)
        except RecipeError as e:
            # Refused, one line per problem, naming the key (or, for a dict key, its section).
            assert any(f": {key}" in line or f": {key.rsplit('.', 1)[0]}:" in line for line in e.problems), \
                (setting, hostile[:20], e.problems)
            assert all("\n" not in line and "\0" not in line for line in e.problems)
            continue
        # Accepted: the value is in the structured files only, and nothing else changed.
        assert files.keys() == plain.keys()
        for name, text in files.items():
            if name.endswith("meta-data"):
                continue  # its instance-id is a digest of the configuration: it changes with any value
            before = parsed(name, plain[name])
            if before is None:
                assert text == plain[name], (setting, repr(hostile[:20]), name)
            else:
                assert replaced(parsed(name, text), value, original) == before, (setting, repr(hostile[:20]), name)


def test_nothing_hostile_is_accepted_where_a_grammar_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings that reach text formats (names, interfaces, addresses) take no hostile value at all."""
    monkeypatch.chdir(tmp_path)
    for setting in [("network", "lan_interface"), ("network", "uplink_interface"), ("master", "hostname"),
                    ("cluster", "domain"), ("timezone",), ("packages", "master", 0), ("network", "wifi", "country")]:
        for hostile in HOSTILE:
            doc = copy.deepcopy(PLAIN)
            put(doc, setting, hostile)
            path = tmp_path / "recipe.yaml"
            path.write_text(yaml.safe_dump(doc))
            with pytest.raises(RecipeError):
                load_recipe(path)


def test_systemd_escape_agrees_with_systemd() -> None:
    require_programs("systemd-escape")
    for value in ("eth0", "br-lan", "wlan0.5", "en_x:1", ".hidden", "é"):
        real = subprocess.run(["systemd-escape", value], capture_output=True, text=True, check=True).stdout.strip()
        assert systemd_escape(value) == real
    for value in ("/boot/firmware", "/boot", "/"):
        real = subprocess.run(["systemd-escape", "--path", value], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert systemd_escape(value, path=True) == real
