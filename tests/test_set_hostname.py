"""The worker's first-boot hostname lookup (overlays/worker), run on a fake tree with a fake MAC."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "overlays/worker/root/usr/local/lib/imagebuilder/set_hostname.py"

TABLE = {
    "lan_interface": "eth0",
    "boot_mount": "/boot/firmware",
    "unknown_pattern": "node-{mac6}",
    "workers": [{"mac": "b8:27:eb:00:00:01", "hostname": "node1", "ip": "10.0.0.11"}],
}


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("set_hostname", PROGRAM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sh = _load()


def test_seed_wins_over_the_mac_table() -> None:
    assert sh.choose_hostname("edge7", TABLE, "b8:27:eb:00:00:01") == "edge7"


def test_mac_table_compares_normalised_macs() -> None:
    assert sh.choose_hostname(None, TABLE, "B8-27-EB-00-00-01") == "node1"


def test_unknown_mac_takes_the_pattern() -> None:
    assert sh.choose_hostname(None, TABLE, "dc:a6:32:0a:1b:2c") == "node-0a1b2c"


def test_invalid_seed_is_ignored() -> None:
    assert sh.choose_hostname("Not_A_Name", TABLE, "b8:27:eb:00:00:01") == "node1"


def _tree(tmp_path: Path, mac: str, seed: str | None) -> Path:
    (tmp_path / "etc/imagebuilder").mkdir(parents=True)
    (tmp_path / "etc/imagebuilder/cluster-table.json").write_text(json.dumps(TABLE))
    (tmp_path / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tbuildhost\n")
    (tmp_path / "etc/hostname").write_text("buildhost\n")
    (tmp_path / "sys/class/net/eth0").mkdir(parents=True)
    (tmp_path / "sys/class/net/eth0/address").write_text(mac + "\n")
    (tmp_path / "boot/firmware").mkdir(parents=True)
    if seed is not None:
        (tmp_path / "boot/firmware/imagebuilder-hostname").write_text(seed + "\n")
    return tmp_path


@pytest.mark.parametrize(("seed", "mac", "expected"), [
    ("edge7", "b8:27:eb:00:00:01", "edge7"),
    (None, "b8:27:eb:00:00:01", "node1"),
    (None, "dc:a6:32:0a:1b:2c", "node-0a1b2c"),
])
def test_program_writes_hostname_and_hosts(tmp_path: Path, seed: str | None, mac: str, expected: str) -> None:
    root = _tree(tmp_path, mac, seed)
    # As the unit will run it: the image's python3, a separate process, the standard library only.
    result = subprocess.run([sys.executable, "-I", PROGRAM, "--root", root],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == expected
    assert (root / "etc/hostname").read_text() == expected + "\n"
    hosts = (root / "etc/hosts").read_text().splitlines()
    assert hosts == ["127.0.0.1\tlocalhost", f"127.0.1.1\t{expected}"]


def test_program_reads_the_seed_flash_writes(tmp_path: Path) -> None:
    # The seed name flash writes and the one the lookup reads must be the same file.
    from imagebuilder.disk.seed import SEED_NAME

    assert SEED_NAME == sh.SEED_NAME
