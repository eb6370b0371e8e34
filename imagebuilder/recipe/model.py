"""The recipe: one YAML file describing a cluster, loaded into frozen dataclasses.

Every setting is declared once below (type, default, help, check); `schema.Loader` derives parsing and
type checks from the declarations, `check_cluster` adds the rules that span several settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from imagebuilder.core.errors import RecipeError
from imagebuilder.recipe.catalogue import LAYOUTS, load_catalogue
from imagebuilder.recipe.schema import Loader, setting
from imagebuilder.recipe.yamlfile import load_document

Problem = Callable[[str, str], None]
T = TypeVar("T")

_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_CLUSTER_NAME = re.compile(r"^[a-z0-9-]{1,40}$")
_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+:~-]+)?$")
_SIZE = re.compile(r"^[1-9][0-9]*[MG]$")
_K3S_VERSION = re.compile(r"^v[0-9]+\.[0-9]+\.[0-9]+\+k3s[0-9]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_hostname(value: str) -> str | None:
    if _HOSTNAME.match(value):
        return None
    return (f"'{value}' is not a valid hostname (RFC 1123 label: 1-63 of a-z, 0-9 and '-', "
            "not starting or ending with '-')")


def check_cluster_name(value: str) -> str | None:
    if _CLUSTER_NAME.match(value):
        return None
    return f"'{value}' is not a cluster name: use 1 to 40 of a-z, 0-9 and '-'"


def check_domain(value: str) -> str | None:
    if all(_HOSTNAME.match(label) for label in value.split(".")) and len(value) <= 253:
        return None
    return f"'{value}' is not a DNS domain: dot-separated labels of a-z, 0-9 and '-', e.g. cluster.lan"


def check_mac(value: str) -> str | tuple[str, str] | None:
    lowered = value.strip().lower()
    if not _MAC.match(lowered):
        return f"'{value}' is not a MAC address: write six hex pairs, e.g. b8:27:eb:00:00:01"
    normal = lowered.replace("-", ":")
    if int(normal[:2], 16) & 1:
        return f"'{value}' is a multicast MAC address: a network card's address has an even first byte"
    return ("ok", normal)


def check_ipv4(value: str) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return f"'{value}' is not an IPv4 address, e.g. 10.0.0.1"
    return None


def check_subnet(value: str) -> str | None:
    try:
        ipaddress.IPv4Network(value)
    except ValueError as e:
        if "has host bits set" in str(e):
            network = ipaddress.IPv4Network(value, strict=False)
            return f"'{value}' has host bits set: write the network address, {network}"
        return f"'{value}' is not an IPv4 network: write it as ADDRESS/PREFIX, e.g. 10.0.0.0/24"
    if ipaddress.IPv4Network(value).num_addresses < 8:
        return f"'{value}' is too small for a cluster: use a /29 or larger"
    return None


def check_one_of(*choices: str) -> Any:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        return f"'{value}' is not one of {', '.join(choices)}"
    return check


def check_sha256(value: str) -> str | tuple[str, str] | None:
    if _SHA256.match(value.lower()):
        return ("ok", value.lower())
    return f"'{value}' is not a sha256 digest: it must be 64 hex digits"


def check_url(value: str) -> str | None:
    if re.match(r"^(https?|file)://[^\s]+$", value):
        return None
    return f"'{value}' is not a URL: it must start with http://, https:// or file://"


def check_user(value: str) -> str | None:
    return None if _USER.match(value) else f"'{value}' is not a user name: use a-z, 0-9, '_' and '-'"


def check_ssh_key(value: str) -> str | None:
    if re.match(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$", value):
        return None
    return "is not an SSH public key line (e.g. 'ssh-ed25519 AAAA... me@host', from ~/.ssh/id_ed25519.pub)"


def check_password_hash(value: str) -> str | None:
    if re.match(r"^\$6\$(rounds=\d+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{86}$", value):
        return None
    return "is not a sha512-crypt hash: make one with 'mkpasswd -m sha-512' (package whois)"


def check_package(value: str) -> str | None:
    if _PACKAGE.match(value):
        return None
    return f"'{value}' is not a Debian package name (lower case, e.g. htop or htop=3.2.2-2)"


def check_size(value: str) -> str | None:
    return None if _SIZE.match(value) else f"'{value}' is not a size: write e.g. 3500M or 4G"


def check_timezone(value: str) -> str | None:
    if not re.match(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$", value):
        return f"'{value}' is not a time zone name, e.g. Europe/Berlin or Etc/UTC"
    zoneinfo = Path("/usr/share/zoneinfo")
    if zoneinfo.is_dir() and not (zoneinfo / value).is_file():
        return f"'{value}' is not a known time zone (see /usr/share/zoneinfo), e.g. Europe/Berlin"
    return None


def check_k3s_version(value: str) -> str | None:
    if _K3S_VERSION.match(value):
        return None
    return f"'{value}' is not a k3s release: write it as on the releases page, e.g. v1.31.4+k3s1"


def check_k3s_assets(value: str) -> str | None:
    if value in ("release", "none") or check_url(value) is None or value.startswith(("/", ".", "~")):
        return None
    return f"'{value}' is not release, none, a URL or a folder path (start a relative path with ./)"


def check_psk(value: str) -> str | None:
    if 8 <= len(value) <= 63 or re.match(r"^[0-9a-fA-F]{64}$", value):
        return None
    return "a WPA passphrase has 8 to 63 characters"


def check_unknown_pattern(value: str) -> str | None:
    try:
        sample = value.format(mac6="0a1b2c", mac="b827eb0a1b2c")
    except (KeyError, IndexError, ValueError):
        return f"'{value}' may only use the placeholders {{mac6}} and {{mac}}"
    if "{mac" not in value:
        return f"'{value}' must contain {{mac6}} or {{mac}}, or every unknown worker gets the same name"
    if not _HOSTNAME.match(sample):
        return f"'{value}' does not make a valid hostname (e.g. it gives '{sample}')"
    return None


# ---------------------------------------------------------------------------------------------------
# The settings.


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


@dataclass(frozen=True, kw_only=True)
class Wifi:
    ssid: str = setting(help="network name")
    psk: str = setting(help="WPA passphrase", check=check_psk)
    country: str = setting(default="GB", help="regulatory domain (two letters)")


@dataclass(frozen=True, kw_only=True)
class Network:
    lan_interface: str = setting(default="eth0", help="the cluster LAN interface on every node")
    uplink_interface: str | None = setting(default=None,
                                           help="master's way out; omit for an isolated cluster")
    wifi: Wifi | None = setting(default=None, help="credentials when the uplink is wireless")
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
    dir: str = setting(default="out", help="where images go (relative to the current directory), under <cluster>/")
    compress: str = setting(default="xz", check=check_one_of("xz", "zstd", "none"),
                            help="compressed copies: xz, zstd or none")
    bmap: bool = setting(default=True, help="write .bmap files for bmaptool")
    image_size: str | None = setting(default=None, check=check_size,
                                     help="image size (e.g. 4G); default: what the packages need")


def check_multicast_group(value: str) -> str | None:
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        address = None
    if address is None or not address.is_multicast:
        return f"'{value}' is not an IPv4 multicast group: use one in 239.0.0.0/8, e.g. 239.255.77.1"
    if address in ipaddress.IPv4Network("224.0.0.0/24"):
        return f"'{value}' is reserved for routing protocols: use one in 239.0.0.0/8, e.g. 239.255.77.1"
    return None


def check_port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"{value} is not a port: use 1 to 65535"


def check_interval(value: int) -> str | None:
    return None if 1 <= value <= 300 else f"{value} is not an interval: use 1 to 300 seconds"


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
    output: Output = setting(default=Output, help="what the build writes")
    # Not recipe keys: filled in by load_recipe.
    source: Path = dataclasses.field(default=Path("."), metadata={"internal": True})
    digest: str = dataclasses.field(default="", metadata={"internal": True})

    @property
    def output_dir(self) -> Path:
        return (Path(self.output.dir) / self.cluster.name).resolve()

    def overlay_dirs(self) -> list[Path]:
        return [(self.source.parent / d).resolve() for d in self.overlays]

    def lan(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.network.subnet)


# ---------------------------------------------------------------------------------------------------
# Rules across settings.


def _default_range(net: ipaddress.IPv4Network) -> tuple[str, str]:
    hosts = list(net.hosts()) if net.num_addresses <= 4096 else None
    if hosts is not None and len(hosts) >= 254:
        return str(hosts[99]), str(hosts[198])
    if hosts is None:
        return str(net.network_address + 100), str(net.network_address + 199)
    half = len(hosts) // 2
    return str(hosts[half]), str(hosts[-1])


def check_cluster(recipe: Recipe, loader: Loader) -> Recipe:
    """Check what involves several settings; fill in derived defaults. Returns the completed recipe.

    Settings that already failed their own check are not checked again against others.
    """
    _check_base(recipe, loader.problem)
    _check_names(recipe, loader.problem)
    if any(loader.failed(f"network.{k}") for k in ("subnet", "master_ip", "dhcp_range")):
        return recipe
    return _check_addresses(recipe, loader)


def _partial(items: tuple[T, ...]) -> tuple[T | None, ...]:
    """A table as the loader may hand it over while problems are pending: failed items are None."""
    return items


def _check_base(recipe: Recipe, problem: Problem) -> None:
    base = recipe.base
    given = [k for k in ("image", "url", "bootstrap") if getattr(base, k) is not None]
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        problem("base", f"give exactly one of image, url or bootstrap (got {what})")
    if base.url is not None and base.sha256 is None and base.checksum_url is None:
        problem("base.url", "needs sha256 or checksum_url, so the download can be verified")
    if base.sha256 is not None and base.checksum_url is not None:
        problem("base.sha256", "give sha256 or checksum_url, not both")
    if base.bootstrap is not None and (base.sha256 or base.checksum_url):
        problem("base.bootstrap", "a bootstrapped base has no published checksum: remove sha256/checksum_url")
    if base.image is not None:
        catalogue = load_catalogue()
        if base.image not in catalogue:
            near = difflib.get_close_matches(base.image, list(catalogue), n=1)
            fix = f"did you mean '{near[0]}'?" if near else "see 'imagebuilder images'"
            problem("base.image", f"'{base.image}' is not in the catalogue; {fix}")
        elif recipe.arch not in catalogue[base.image].arches:
            problem("arch", f"{base.image} is not published for {recipe.arch}; "
                            f"it has {', '.join(catalogue[base.image].arches)}")


def _check_names(recipe: Recipe, problem: Problem) -> None:
    """Hostnames, MACs, users, packages and overlay directories."""
    seen_names: dict[str, str] = {recipe.master.hostname: "master.hostname"}
    seen_macs: dict[str, int] = {}
    for i, w in enumerate(_partial(recipe.workers)):
        if w is None:  # failed its own checks
            continue
        if w.hostname in seen_names:
            problem(f"workers[{i}].hostname", f"'{w.hostname}' is already used by {seen_names[w.hostname]}")
        else:
            seen_names[w.hostname] = f"workers[{i}]"
        if w.mac in seen_macs:
            problem(f"workers[{i}].mac", f"{w.mac} is already given for workers[{seen_macs[w.mac]}]")
        else:
            seen_macs[w.mac] = i
    users: list[str] = []
    for i, user in enumerate(_partial(recipe.users)):
        if user is None:
            continue
        if user.name in users:
            problem(f"users[{i}].name", f"'{user.name}' is given twice")
        users.append(user.name)
        for j, line in enumerate(user.ssh_authorized_keys):
            if (msg := check_ssh_key(line)) is not None:
                problem(f"users[{i}].ssh_authorized_keys[{j}]", msg)
    for role in ("common", "master", "worker"):
        for i, pkg in enumerate(getattr(recipe.packages, role)):
            if (msg := check_package(pkg)) is not None:
                problem(f"packages.{role}[{i}]", msg)
    for i, d in enumerate(recipe.overlays):
        if not (recipe.source.parent / d).is_dir():
            problem(f"overlays[{i}]", f"{recipe.source.parent / d} is not a directory")
    network = recipe.network
    for i, dns in enumerate(network.upstream_dns):
        if (msg := check_ipv4(dns)) is not None:
            problem(f"network.upstream_dns[{i}]", msg)
    if network.wifi is not None and network.uplink_interface is None:
        problem("network.wifi", "Wi-Fi credentials need network.uplink_interface (e.g. wlan0)")
    if network.uplink_interface is not None and network.uplink_interface == network.lan_interface:
        problem("network.uplink_interface", "must differ from lan_interface")


def _check_addresses(recipe: Recipe, loader: Loader) -> Recipe:
    """Master, DHCP range and worker addresses against the subnet and each other."""
    problem = loader.problem
    network = recipe.network
    net = recipe.lan()

    def in_subnet(path: str, value: str) -> bool:
        address = ipaddress.IPv4Address(value)
        if address not in net:
            problem(path, f"{value} is outside the subnet {net}")
            return False
        if address in (net.network_address, net.broadcast_address):
            problem(path, f"{value} is the network or broadcast address of {net}: use a host address")
            return False
        return True

    master_ip = network.master_ip or str(next(net.hosts()))
    in_subnet("network.master_ip", master_ip)
    first, last = _default_range(net)
    range_ok = True
    if network.dhcp_range is not None:
        if len(network.dhcp_range) != 2:
            problem("network.dhcp_range", "give two addresses: [first, last]")
        else:
            first, last = network.dhcp_range
            for i, v in enumerate((first, last)):
                if (msg := check_ipv4(v)) is not None:
                    problem(f"network.dhcp_range[{i}]", msg)
                    range_ok = False
                elif not in_subnet(f"network.dhcp_range[{i}]", v):
                    range_ok = False
            if range_ok and ipaddress.IPv4Address(first) > ipaddress.IPv4Address(last):
                problem("network.dhcp_range", f"is reversed: {first} comes after {last}")

    def in_range(value: str) -> bool:
        return range_ok and (ipaddress.IPv4Address(first) <= ipaddress.IPv4Address(value)
                             <= ipaddress.IPv4Address(last))

    if in_range(master_ip):
        problem("network.master_ip" if network.master_ip else "network.dhcp_range",
                f"the master's address {master_ip} is inside the DHCP range {first}-{last}")
    seen_ips: dict[str, str] = {master_ip: "the master"}
    for i, w in enumerate(_partial(recipe.workers)):
        path = f"workers[{i}].ip"
        if w is None or w.ip is None or loader.failed(path) or not in_subnet(path, w.ip):
            continue
        if in_range(w.ip):
            problem(path, f"{w.ip} is inside the DHCP range {first}-{last}: pick an address outside it")
        if w.ip in seen_ips:
            problem(path, f"{w.ip} is already the address of {seen_ips[w.ip]}")
        else:
            seen_ips[w.ip] = f"workers[{i}]"

    workers = _assign_addresses(recipe.workers, net, seen_ips, in_range)
    network = dataclasses.replace(network, master_ip=master_ip, dhcp_range=(first, last))
    return dataclasses.replace(recipe, network=network, workers=workers)


def _assign_addresses(workers: tuple[Worker, ...], net: ipaddress.IPv4Network, taken: dict[str, str],
                      in_range: Any) -> tuple[Worker, ...]:
    """Give workers without an `ip` the next free host address from .10 up, in table order."""
    candidates = (str(h) for h in net.hosts() if int(h) - int(net.network_address) >= 10)
    out = []
    for w in workers:
        if w is not None and w.ip is None:
            ip = next((c for c in candidates if c not in taken and not in_range(c)), None)
            if ip is not None:
                taken[ip] = w.hostname
                out.append(dataclasses.replace(w, ip=ip))
                continue
        out.append(w)
    return tuple(out)


def load_recipe(path: Path) -> Recipe:
    """Load and validate a recipe; raise RecipeError with one line per problem."""
    shown = str(path)
    try:
        doc = load_document(path)
    except FileNotFoundError:
        raise RecipeError([f"{shown}: no such file (check the path)"]) from None
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as e:
        raise RecipeError([f"{shown}: cannot read it: {e.strerror if isinstance(e, OSError) else e}"]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise RecipeError([f"{shown}: {where}: YAML does not parse: {e.problem or e.context}"]) from None
    except yaml.YAMLError as e:
        raise RecipeError([f"{shown}: YAML does not parse: {e}"]) from None

    loader = Loader(doc)
    recipe = loader.load(Recipe, doc.data)
    if recipe is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        recipe = dataclasses.replace(recipe, source=path.resolve(), digest=digest)
        recipe = check_cluster(recipe, loader)
    if loader.problems:
        def sort_key(p: tuple[str, str]) -> int:
            return doc.lines.get(p[0], 0)
        lines = []
        for key, message in sorted(loader.problems, key=sort_key):
            line = doc.lines.get(key)
            lines.append(f"{shown}: {key}: {message}" + (f" (line {line})" if line else ""))
        raise RecipeError(lines)
    assert isinstance(recipe, Recipe)
    return recipe


def summary(recipe: Recipe) -> str:
    base = recipe.base
    if base.image:
        what = base.image
    elif base.url:
        what = base.url.rsplit("/", 1)[-1]
    else:
        assert base.bootstrap is not None
        what = f"debian {base.bootstrap.suite} bootstrap ({base.bootstrap.layout} layout)"
    n = len(recipe.workers)
    return f"{recipe.cluster.name}: base {what}, {recipe.arch}, {n} worker{'s' if n != 1 else ''}"
