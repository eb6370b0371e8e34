"""Checks of single recipe values: each returns a message naming the fix, or None when the value is good.

A check may also normalise the value by returning ("ok", new_value) (MACs in any case and separator).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

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
