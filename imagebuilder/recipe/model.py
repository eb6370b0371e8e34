"""The recipe: one YAML file describing a cluster, loaded into frozen dataclasses.

Every setting is declared once below (type, default, help, check); `schema.Loader` derives parsing and
type checks from the declarations, `rules.check_cluster` adds the rules that span several settings.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuilder.core.invoker import home
from imagebuilder.recipe.catalogue import LAYOUTS
from imagebuilder.recipe.fields import (
    check_cluster_name,
    check_country,
    check_domain,
    check_hostname,
    check_interface,
    check_interval,
    check_ipv4,
    check_k3s_assets,
    check_k3s_version,
    check_mac,
    check_multicast_group,
    check_one_of,
    check_password_hash,
    check_path,
    check_port,
    check_psk,
    check_served_dir,
    check_sha256,
    check_size,
    check_ssid,
    check_subnet,
    check_timezone,
    check_unknown_pattern,
    check_url,
    check_user,
)
from imagebuilder.recipe.schema import setting


@dataclass(frozen=True, kw_only=True)
class Cluster:
    name: str = setting(help="names the output and state directories: 1-40 of a-z, 0-9, '-'",
                        check=check_cluster_name)
    domain: str = setting(default="cluster.lan", help="DNS domain the master serves", check=check_domain)


@dataclass(frozen=True, kw_only=True)
class Bootstrap:
    suite: str = setting(default="bookworm", help="Debian suite to bootstrap",
                         check=check_one_of("bookworm", "trixie"))
    mirror: str | None = setting(default=None, check=check_url,
                                 help="Debian mirror for the build; default: the host's apt sources")
    image_mirror: str | None = setting(default=None, check=check_url,
                                       help="mirror the nodes' apt sources name; default: `mirror`")
    layout: str = setting(default="raspios", check=check_one_of(*LAYOUTS),
                          help="partition labels: raspios (bootfs/rootfs) or ubuntu (system-boot/writable)")
    security: bool = setting(default=True,
                             help="bootstrap with the suite's security updates; false only for a mirror that "
                                  "lacks or breaks them: the images then have no security suite in their sources")


@dataclass(frozen=True, kw_only=True)
class Base:
    image: str | None = setting(default=None, help="a name from the built-in catalogue (`imagebuilder images`)")
    url: str | None = setting(default=None, check=check_url, help="an image URL (.img, .xz, .gz, .zst, .zip)")
    sha256: str | None = setting(default=None, check=check_sha256,
                                 help="the image's published sha256 (with `url` or to pin a catalogue image)")
    checksum_url: str | None = setting(default=None, check=check_url,
                                       help="a SHA256SUMS-style listing that holds the image's digest")
    mirror: str | None = setting(default=None, check=check_url,
                                 help="rewrites the download host (a lab's local mirror); "
                                      "also IMAGEBUILDER_MIRROR")
    bootstrap: Bootstrap | None = setting(default=None, help="build the base from Debian packages")
    allow_http_checksums: bool = setting(
        default=False, help="accept checksum listings over plain http (for the base and k3s.assets); "
                            "otherwise only https, a file, or a pinned sha256")


@dataclass(frozen=True, kw_only=True)
class Wifi:
    ssid: str = setting(help="network name", check=check_ssid)
    psk: str = setting(help="WPA passphrase", check=check_psk)
    country: str = setting(default="GB", help="regulatory domain (two letters)", check=check_country)


@dataclass(frozen=True, kw_only=True)
class Network:
    lan_interface: str = setting(default="eth0", help="the cluster LAN interface on every node",
                                 check=check_interface)
    uplink_interface: str | None = setting(default=None, check=check_interface,
                                           help="master's way out; omit for an isolated cluster")
    wifi: Wifi | None = setting(default=None, help="credentials when the uplink is wireless")
    uplink_ssh: bool = setting(default=False,
                               help="let ssh in to the master from the uplink (otherwise nothing starts a "
                                    "connection from there; ssh from the cluster LAN always works)")
    subnet: str = setting(default="10.0.0.0/24", help="the cluster LAN", check=check_subnet)
    master_ip: str | None = setting(default=None, check=check_ipv4,
                                    help="master's static LAN address; default: the subnet's first host")
    dhcp_range: tuple[str, ...] | None = setting(
        default=None, help="[first, last] leases for MACs not in the table; default: hosts .100-.199 "
                           "(or the upper half of a small subnet)")
    upstream_dns: tuple[str, ...] = setting(default=["1.1.1.1", "9.9.9.9"],
                                            help="servers dnsmasq forwards other names to")


@dataclass(frozen=True, kw_only=True)
class User:
    name: str = setting(help="login name", check=check_user)
    ssh_authorized_keys: tuple[str, ...] = setting(default=[], help="public keys allowed to log in")
    password_hash: str | None = setting(default=None, check=check_password_hash,
                                        help="sha512-crypt hash; password login stays off without it")


@dataclass(frozen=True, kw_only=True)
class K3s:
    version: str = setting(default="v1.31.4+k3s1", help="k3s release", check=check_k3s_version)
    extra_config: dict[str, Any] = setting(default={}, help="merged into the master's k3s config.yaml")
    assets: str = setting(default="release", check=check_k3s_assets,
                          help="where the binary and air-gap images come from: `release` (the GitHub "
                               "release), a folder or URL holding them, or `none` (images without the "
                               "binary); IMAGEBUILDER_K3S_ASSETS overrides it")
    tls_san: tuple[str, ...] = setting(
        default=[], help="more names and addresses for the API server's certificate (k3s's tls-san), e.g. the "
                         "master's uplink name; its hostname, FQDN and LAN address are always in")
    api_on_uplink: bool = setting(
        default=False, help="let the k3s API (6443/tcp) in to the master from the uplink, for kubectl on a "
                            "workstation there (otherwise it is open on the cluster LAN only)")


@dataclass(frozen=True, kw_only=True)
class Master:
    hostname: str = setting(default="master", help="the master's hostname", check=check_hostname)


@dataclass(frozen=True, kw_only=True)
class Worker:
    hostname: str = setting(help="the hostname this MAC gets", check=check_hostname)
    mac: str = setting(help="MAC address of its LAN interface (':' or '-', any case)", check=check_mac)
    ip: str | None = setting(default=None, check=check_ipv4,
                             help="reserved address; default: the next free one from .10 up")


@dataclass(frozen=True, kw_only=True)
class UnknownWorkers:
    hostname: str = setting(default="node-{mac6}", check=check_unknown_pattern,
                            help="name for a MAC not in the table ({mac6}: its last 6 hex digits)")


@dataclass(frozen=True, kw_only=True)
class Packages:
    common: tuple[str, ...] = setting(default=[], help="installed on every node")
    master: tuple[str, ...] = setting(default=[], help="installed on the master")
    worker: tuple[str, ...] = setting(default=[], help="installed on the workers")


@dataclass(frozen=True, kw_only=True)
class Output:
    dir: str = setting(default="out", check=check_path,
                       help="where images go (relative to the current directory), under <cluster>/")
    compress: str = setting(default="xz", check=check_one_of("xz", "zstd", "none"),
                            help="compressed copies: xz, zstd or none")
    bmap: bool = setting(default=True, help="write .bmap files for bmaptool")
    image_size: int | None = setting(default=None, check=check_size, written_as=str | None,
                                     help="image size (e.g. 4G); default: what the packages need")
    sign_key: str | None = setting(default=None, check=check_path,
                                   help="an OpenSSH private key (relative to the recipe; ~ is your home) that signs "
                                        "SHA256SUMS into SHA256SUMS.sig; `flash --recipe` then checks it with KEY.pub")
    reproducible: bool = setting(default=False,
                                 help="the same recipe, base and cluster state give the same master.img and "
                                      "worker.img, byte for byte, whenever they are built: each image's file systems "
                                      "are made again from its files (several seconds per image and build); also "
                                      "on when SOURCE_DATE_EPOCH is set")


@dataclass(frozen=True, kw_only=True)
class Monitoring:
    enabled: bool = setting(default=True, help="a status beacon on every node and the dashboard on the master")
    group: str = setting(default="239.255.77.1", check=check_multicast_group,
                         help="multicast group the beacons send to (administratively scoped: 239.0.0.0/8)")
    port: int = setting(default=7777, check=check_port, help="UDP port of the beacons")
    interval: int = setting(default=5, check=check_interval, help="seconds between beacons (1-300)")
    dashboard_port: int = setting(default=8080, check=check_port,
                                  help="HTTP port of the dashboard, on the master's LAN address only")


@dataclass(frozen=True, kw_only=True)
class Netboot:
    workers: tuple[str, ...] = setting(default=["all"],
                                       help="which workers boot from the network: [all], or hostnames from the "
                                            "table (the others boot from their cards)")
    tree: str = setting(default="/srv/netboot", check=check_served_dir,
                        help="where the master keeps the boot files (TFTP), the shared root and each node's "
                             "state")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    cluster: Cluster = setting(help="the cluster's name and DNS domain")
    base: Base = setting(help="exactly one of image / url / bootstrap")
    arch: str = setting(default="arm64", check=check_one_of("arm64", "armhf"),
                        help="arm64 (Pi 3, 4, 5) or armhf (Pi 2)")
    network: Network = setting(default=Network, help="the cluster LAN and the master's uplink")
    users: tuple[User, ...] = setting(default=[], help="login users")
    timezone: str = setting(default="Etc/UTC", check=check_timezone, help="time zone of every node")
    k3s: K3s = setting(default=K3s, help="the Kubernetes distribution")
    master: Master = setting(default=Master, help="the gateway node")
    workers: tuple[Worker, ...] = setting(help="the cluster table: one entry per known worker card")
    unknown_workers: UnknownWorkers = setting(default=UnknownWorkers, help="workers not in the table")
    packages: Packages = setting(default=Packages, help="extra Debian packages per role")
    overlays: tuple[str, ...] = setting(default=[],
                                        help="extra overlay directories (relative to the recipe), "
                                             "applied after the built-in ones")
    monitoring: Monitoring = setting(default=Monitoring, help="cluster status: beacons and the dashboard")
    netboot: Netboot | None = setting(default=None,
                                      help="workers without cards: the master serves their boot files and root")
    output: Output = setting(default=Output, help="what the build writes")
    # Not recipe keys: filled in by load_recipe.
    source: Path = dataclasses.field(default=Path("."), metadata={"internal": True})
    digest: str = dataclasses.field(default="", metadata={"internal": True})

    @property
    def output_dir(self) -> Path:
        return (Path(self.output.dir) / self.cluster.name).resolve()

    def sign_key_path(self) -> Path | None:
        """output.sign_key as a path: ~ is the home of whoever ran the command (through sudo too)."""
        key = self.output.sign_key
        if key is None:
            return None
        if key == "~" or key.startswith("~/"):
            return home() / key[2:]
        return (self.source.parent / key).resolve()

    def overlay_dirs(self) -> list[Path]:
        return [(self.source.parent / d).resolve() for d in self.overlays]

    def netboot_workers(self) -> tuple[Worker, ...]:
        """The workers that boot from the network (none without `netboot`)."""
        if self.netboot is None:
            return ()
        if "all" in self.netboot.workers:
            return self.workers
        return tuple(w for w in self.workers if w.hostname in self.netboot.workers)

    def lan(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.network.subnet)
