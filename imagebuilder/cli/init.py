"""The init command: a starter recipe that says what a person with real boards must fill in."""

from __future__ import annotations

import argparse
from pathlib import Path

from imagebuilder.cli.command import Command
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.invoker import home
from imagebuilder.recipe.fields import check_cluster_name, check_ssh_key

# Public keys looked for in the invoking user's ~/.ssh, best first.
KEY_FILES = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")

STARTER = """\
# A Raspberry Pi cluster: one master (the gateway: DHCP/DNS, NAT to the uplink, NFS /srv/jobs, the k3s
# server) and workers that all boot the same worker image. Fill in the three places marked FILL IN, then:
#   imagebuilder validate {path}
#   sudo imagebuilder build {path}
cluster:
  name: {name}
  domain: cluster.lan
base:
  # Debian bootstrapped from packages (no download). `imagebuilder images` lists the published images
  # (Raspberry Pi OS Lite, Ubuntu Server) to use instead: base: {{image: raspios-lite-trixie}}.
  bootstrap: {{suite: bookworm}}
arch: arm64            # Pi 3, 4 (and 5 where the base has its files); armhf for the Pi 2
network:
  lan_interface: eth0  # every node's Ethernet port: the cluster LAN (one switch, nothing else on it)
  # FILL IN: the master's way out. A Pi has one Ethernet port, and the LAN takes it, so the uplink is
  #  - a USB Ethernet adapter: eth1 (the bootstrap base names interfaces eth0, eth1, ...), or
  #  - Wi-Fi: wlan0 with the wifi block below; cloud-init applies Wi-Fi through netplan only, so this
  #    needs the Ubuntu or the Raspberry Pi OS base (the bootstrap base has no Wi-Fi firmware).
  # Without an uplink the cluster is isolated: no NAT, no time from the internet.
  uplink_interface: eth1
  # wifi: {{ssid: "my network", psk: "my passphrase", country: GB}}
  subnet: 10.0.0.0/24
  master_ip: 10.0.0.1
users:
  # FILL IN (if empty): the nodes work without a login, but one that does not come up can then only be
  # read from its console. One line of your ~/.ssh/id_ed25519.pub per key.
  - name: pi
    ssh_authorized_keys: [{keys}]
timezone: Etc/UTC
k3s:
  version: v1.31.4+k3s1
  # The k3s binary comes from its GitHub release; `assets: none` builds images without it.
master:
  hostname: master
# FILL IN: the cluster table, one line per worker card: the MAC of its Ethernet port and the name it takes.
# To find the MACs: flash the worker image onto every card and power them on with the master; each one
# names itself node-<last 6 hex digits of its MAC>. Then, on the cluster LAN,
#   imagebuilder scan {path}
# prints the lines to paste here. Then rebuild, and reflash the master (its DHCP reservations) and the
# worker cards (each takes its name from the table on its own card; or flash --hostname NAME). A worker
# not in the table still joins, under its node-... name.
workers: []
#  - {{hostname: node1, mac: "dc:a6:32:00:00:01"}}
# reproducible: true makes every build of this recipe, base and cluster state give the same image bytes
# (5 to 10 seconds more per image and build); for images you publish or sign.
output: {{dir: out, compress: xz, bmap: true, reproducible: false}}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", type=Path, default=Path("cluster.yaml"), metavar="RECIPE",
                        help="where to write the starter recipe (default: %(default)s); never overwritten")
    parser.add_argument("--name", default="picluster", help="the cluster's name (default: %(default)s)")


def init(ctx: Context, args: argparse.Namespace) -> int:
    path: Path = args.path
    if (problem := check_cluster_name(args.name)) is not None:
        raise ImageBuilderError(f"--name: {problem}", "for example --name picluster")
    keys = invoking_user_keys()
    text = STARTER.format(path=path, name=args.name, keys=", ".join(f'"{k}"' for k in keys))
    try:
        with open(path, "x") as out:
            out.write(text)
    except FileExistsError:
        raise ImageBuilderError(f"{path}: already exists; init writes only a new file",
                                f"give another name: imagebuilder init my-cluster.yaml, or edit {path}") from None
    except OSError as e:
        raise ImageBuilderError(f"{path}: cannot write it: {e.strerror}", "choose a folder of yours") from None
    ctx.give_back(path)
    print(f"{path}: a starter recipe for cluster {args.name}")
    print("  login: " + (f"{len(keys)} public key(s) of yours from ~/.ssh" if keys
                         else "no public key found in ~/.ssh: add one under users (see the comment)"))
    print("  next: set network.uplink_interface, then build, flash and power on; 'imagebuilder scan' finds "
          "the workers' MACs")
    return 0


def invoking_user_keys() -> list[str]:
    """The public keys in ~/.ssh of the person who ran the command (under sudo: the user, not root)."""
    keys = []
    for name in KEY_FILES:
        try:
            line = (home() / ".ssh" / name).read_text().strip().splitlines()[0]
        except (OSError, IndexError, UnicodeDecodeError):
            continue
        # Only a key the recipe takes as it is, and that sits in a YAML string unquoted.
        if line and check_ssh_key(line) is None and '"' not in line and "\\" not in line:
            keys.append(line)
    return keys


COMMANDS = [
    Command("init", "write a starter recipe (commented) for a cluster of real boards", add_arguments, init),
]
