"""Rules across recipe settings: one base, unique names and MACs, addresses inside the subnet and apart.

Also fills in the derived defaults (the master's address, the DHCP range, each worker's address).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from imagebuilder.core.log import log
from imagebuilder.recipe.catalogue import load_catalogue
from imagebuilder.recipe.fields import (
    check_domain,
    check_ipv4,
    check_package,
    check_path,
    check_ssh_key,
    is_ip_address,
    printable,
    shown,
)
from imagebuilder.recipe.k3s_keys import keys_for
from imagebuilder.recipe.model import Recipe, Worker
from imagebuilder.recipe.schema import Loader

Problem = Callable[[str, str], None]
T = TypeVar("T")



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
    _check_workers(recipe, loader.problem)
    _check_users(recipe, loader.problem)
    _check_additions(recipe, loader.problem)
    _check_uplink(recipe, loader.problem)
    _check_k3s_config(recipe, loader.problem, check_names=not loader.failed("k3s.version"))
    _check_netboot(recipe, loader.problem)
    _check_sign_key(recipe, loader.problem, check=not loader.failed("output.sign_key"))
    if any(loader.failed(f"network.{k}") for k in ("subnet", "master_ip", "dhcp_range")):
        return recipe
    return _check_addresses(recipe, loader)


def _check_netboot(recipe: Recipe, problem: Problem) -> None:
    if recipe.netboot is None:
        return
    names = [w.hostname for w in _partial(recipe.workers) if w is not None]
    chosen = recipe.netboot.workers
    if "all" in chosen and len(chosen) > 1:
        problem("netboot.workers", "give [all] or a list of hostnames, not both")
        return
    if not chosen:
        problem("netboot.workers", "no worker boots from the network: give [all] or hostnames, or remove netboot")
    seen: set[str] = set()
    for i, name in enumerate(chosen):
        if name == "all":
            continue
        if name in seen:
            problem(f"netboot.workers[{i}]", f"'{name}' is given twice")
        elif name not in names:
            near = difflib.get_close_matches(name, names, n=1)
            problem(f"netboot.workers[{i}]", f"'{name}' is not in the workers table"
                    + (f"; did you mean '{near[0]}'?" if near else ""))
        seen.add(name)


def _check_sign_key(recipe: Recipe, problem: Problem, *, check: bool) -> None:
    path = recipe.sign_key_path()
    if path is not None and check and (msg := private_key_problem(path)) is not None:
        problem("output.sign_key", msg)


# The private key forms ssh-keygen loads: its own, and the PEM ones of OpenSSL.
_PRIVATE_KEY = re.compile(r"-----BEGIN (OPENSSH |RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY-----")


def private_key_problem(path: Path) -> str | None:
    """What keeps `path` from being a private key ssh-keygen signs with, or None."""
    try:
        with path.open("rb") as f:
            head = f.read(4096).decode(errors="replace")
    except FileNotFoundError:
        return f"{path}: no such file"
    except IsADirectoryError:
        return f"{path} is a folder, not a key file"
    except OSError as e:
        return f"{path}: cannot read it: {e.strerror}"
    if _PRIVATE_KEY.match(head):
        return None
    first = head.splitlines()[0] if head else ""
    if check_ssh_key(first.strip()) is None:
        return f"{path} is a public key: give the private key (the same name without .pub)"
    return f"{path} is not an OpenSSH private key (such as ~/.ssh/id_ed25519, made by ssh-keygen)"


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


def _check_workers(recipe: Recipe, problem: Problem) -> None:
    """No hostname or MAC twice in the table (the master's name included)."""
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


def _check_users(recipe: Recipe, problem: Problem) -> None:
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


def _check_additions(recipe: Recipe, problem: Problem) -> None:
    """The packages and the overlay directories the recipe adds."""
    for role in ("common", "master", "worker"):
        for i, pkg in enumerate(getattr(recipe.packages, role)):
            if (msg := check_package(pkg)) is not None:
                problem(f"packages.{role}[{i}]", msg)
    for i, d in enumerate(recipe.overlays):
        if (msg := check_path(d)) is not None:
            problem(f"overlays[{i}]", msg)
        elif not (recipe.source.parent / d).is_dir():
            problem(f"overlays[{i}]", f"{recipe.source.parent / d} is not a directory")


def _check_uplink(recipe: Recipe, problem: Problem) -> None:
    """The master's way out: its DNS servers, the uplink and what needs one, the API's other names."""
    network = recipe.network
    for i, dns in enumerate(network.upstream_dns):
        if (msg := check_ipv4(dns)) is not None:
            problem(f"network.upstream_dns[{i}]", msg)
    if network.wifi is not None and network.uplink_interface is None:
        problem("network.wifi", "Wi-Fi credentials need network.uplink_interface (e.g. wlan0)")
    if network.uplink_interface is not None and network.uplink_interface == network.lan_interface:
        problem("network.uplink_interface", "must differ from lan_interface")
    if recipe.k3s.api_on_uplink and network.uplink_interface is None:
        problem("k3s.api_on_uplink", "needs network.uplink_interface (the side the API is opened on)")
    for i, name in enumerate(recipe.k3s.tls_san):
        if not is_ip_address(name) and check_domain(name) is not None:
            problem(f"k3s.tls_san[{i}]", f"{shown(name)} is neither an IP address nor a DNS name, e.g. "
                                         "master.example.org or 192.168.1.40")


# k3s configuration keys the build sets itself: the join secrets must stay the build's (a recipe value
# would put the server's token on every worker card, or break the join).
K3S_OWN_KEYS = ("token", "token-file", "agent-token", "agent-token-file", "server", "node-ip", "flannel-iface")


def _check_k3s_config(recipe: Recipe, problem: Problem, *, check_names: bool = True) -> None:
    """k3s.extra_config is written into the master's config.yaml (YAML-dumped, so it cannot break the file's
    syntax); its keys are the flag names of the chosen version's `k3s server` (k3s would skip an unknown
    one with only a warning in its log), its values scalars or lists of them, on one line each."""
    for key, value in recipe.k3s.extra_config.items():
        path = f"k3s.extra_config.{key}"
        if not isinstance(key, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", key):
            problem("k3s.extra_config", f"{shown(key)} is not a k3s option name (as on its command line, "
                                        "without the dashes, e.g. node-label)")
            continue
        if key in K3S_OWN_KEYS:
            problem(path, "is set by imagebuilder (the cluster's secrets and addresses): remove it")
            continue
        if key == "tls-san":
            problem(path, "list the names in k3s.tls_san instead (beside the master's own, which the build adds)")
            continue
        if check_names:
            _check_k3s_key(recipe, key, problem)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            if isinstance(item, bool | int | float) or (isinstance(item, str) and printable(item)
                                                           and len(item) <= 4096):
                continue
            problem(path if i is None else f"{path}[{i}]",
                    f"{shown(item)} is not a k3s option value: a string on one line, a number, true/false, "
                    "or a list of them")


def _check_k3s_key(recipe: Recipe, key: str, problem: Problem) -> None:
    """An unknown key is an error for a minor version we have the keys of; for another one, checked against
    the nearest listed version, only a warning (a newer k3s may have added the key)."""
    listed = keys_for(recipe.k3s.version)
    if key in listed.keys:
        return
    near = difflib.get_close_matches(key, sorted(listed.keys), n=1)
    fix = f"did you mean '{near[0]}'?" if near else "see docs.k3s.io/cli/server"
    if listed.exact:
        problem(f"k3s.extra_config.{key}", f"'{key}' is not a k3s {listed.minor} server option; {fix}")
    else:
        log.warning("WARNING: %s: k3s.extra_config.%s: not a k3s %s server option (imagebuilder has no key "
                    "list for %s, so it checked against %s's); %s", recipe.source, key, listed.minor,
                    recipe.k3s.version, listed.minor, fix)


def _in_subnet(net: ipaddress.IPv4Network, problem: Problem, path: str, value: str) -> bool:
    """Whether `value` is a host address of `net`; a problem at `path` when it is not."""
    address = ipaddress.IPv4Address(value)
    if address not in net:
        problem(path, f"{value} is outside the subnet {net}")
        return False
    if address in (net.network_address, net.broadcast_address):
        problem(path, f"{value} is the network or broadcast address of {net}: use a host address")
        return False
    return True


def _dhcp_range(recipe: Recipe, problem: Problem) -> tuple[str, str, bool]:
    """The DHCP range's first and last address (the subnet's default range when the recipe gives none), and
    whether they can be compared with other addresses."""
    net = recipe.lan()
    first, last = _default_range(net)
    given = recipe.network.dhcp_range
    if given is None:
        return first, last, True
    if len(given) != 2:
        problem("network.dhcp_range", "give two addresses: [first, last]")
        return first, last, True
    first, last = given
    usable = True
    for i, v in enumerate((first, last)):
        if (msg := check_ipv4(v)) is not None:
            problem(f"network.dhcp_range[{i}]", msg)
            usable = False
        elif not _in_subnet(net, problem, f"network.dhcp_range[{i}]", v):
            usable = False
    if usable and ipaddress.IPv4Address(first) > ipaddress.IPv4Address(last):
        problem("network.dhcp_range", f"is reversed: {first} comes after {last}")
    return first, last, usable


def _check_addresses(recipe: Recipe, loader: Loader) -> Recipe:
    """Master, DHCP range and worker addresses against the subnet and each other."""
    problem = loader.problem
    network = recipe.network
    net = recipe.lan()
    master_ip = network.master_ip or str(next(net.hosts()))
    _in_subnet(net, problem, "network.master_ip", master_ip)
    first, last, range_ok = _dhcp_range(recipe, problem)

    def in_range(value: str) -> bool:
        return range_ok and (ipaddress.IPv4Address(first) <= ipaddress.IPv4Address(value)
                             <= ipaddress.IPv4Address(last))

    if in_range(master_ip):
        problem("network.master_ip" if network.master_ip else "network.dhcp_range",
                f"the master's address {master_ip} is inside the DHCP range {first}-{last}")
    seen_ips: dict[str, str] = {master_ip: "the master"}
    for i, w in enumerate(_partial(recipe.workers)):
        path = f"workers[{i}].ip"
        if w is None or w.ip is None or loader.failed(path) or not _in_subnet(net, problem, path, w.ip):
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
