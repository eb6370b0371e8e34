"""Checks of single recipe values: each returns a message naming the fix, or None when the value is good.

A check may also normalise the value by returning ("ok", new_value): MACs in any case and separator, sizes
as bytes.
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
# The kernel's rules for an interface name (dev_valid_name): 1-15 bytes, not "." or "..", no "/", ":" or
# whitespace. We also keep out quotes and the like: the name goes into shell scripts, unit names, dnsmasq
# and nftables configs.
_INTERFACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


def shown(value: object, limit: int = 60) -> str:
    """A value as an error message shows it: on one line, control characters escaped, cut when long."""
    text = str(value).encode("unicode_escape").decode("ascii")
    return "'" + (text[:limit] + "..." if len(text) > limit else text) + "'"


def printable(value: str) -> bool:
    """No control characters (newline, NUL, escape...): a value that must stay on its line."""
    return not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value)


def check_interface(value: str) -> str | None:
    if _INTERFACE.fullmatch(value) and value not in (".", ".."):
        return None
    return (f"{shown(value)} is not a network interface name: 1-15 of A-Z, a-z, 0-9, '_', '.' and '-', "
            "e.g. eth0 or wlan0")


def check_ssid(value: str) -> str | None:
    if 1 <= len(value.encode()) <= 32 and printable(value):
        return None
    return f"{shown(value)} is not a Wi-Fi network name: 1 to 32 bytes, no control characters"


def check_country(value: str) -> str | None:
    if re.fullmatch(r"[A-Z]{2}|00", value):
        return None
    return f"{shown(value)} is not a Wi-Fi country: two capital letters (ISO 3166), e.g. GB or DE"


def check_path(value: str) -> str | None:
    if value and printable(value) and len(value) <= 4096:
        return None
    return f"{shown(value)} is not a usable path: it must be one line without control characters"


def check_hostname(value: str) -> str | None:
    if _HOSTNAME.fullmatch(value):
        return None
    return (f"{shown(value)} is not a valid hostname (RFC 1123 label: 1-63 of a-z, 0-9 and '-', "
            "not starting or ending with '-')")


def check_cluster_name(value: str) -> str | None:
    if _CLUSTER_NAME.fullmatch(value):
        return None
    return f"{shown(value)} is not a cluster name: use 1 to 40 of a-z, 0-9 and '-'"


def check_domain(value: str) -> str | None:
    if all(_HOSTNAME.fullmatch(label) for label in value.split(".")) and len(value) <= 253:
        return None
    return f"{shown(value)} is not a DNS domain: dot-separated labels of a-z, 0-9 and '-', e.g. cluster.lan"


def check_mac(value: str) -> str | tuple[str, str] | None:
    lowered = value.strip().lower()
    if not _MAC.fullmatch(lowered):
        return f"{shown(value)} is not a MAC address: write six hex pairs, e.g. b8:27:eb:00:00:01"
    normal = lowered.replace("-", ":")
    if int(normal[:2], 16) & 1:
        return f"{shown(value)} is a multicast MAC address: a network card's address has an even first byte"
    return ("ok", normal)


def is_ip_address(text: str) -> bool:
    """IPv4 or IPv6 (a certificate's SAN is an IP entry then, a DNS entry otherwise)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_ipv4(value: str) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return f"{shown(value)} is not an IPv4 address, e.g. 10.0.0.1"
    return None


def check_subnet(value: str) -> str | None:
    try:
        ipaddress.IPv4Network(value)
    except ValueError as e:
        if "has host bits set" in str(e):
            network = ipaddress.IPv4Network(value, strict=False)
            return f"{shown(value)} has host bits set: write the network address, {network}"
        return f"{shown(value)} is not an IPv4 network: write it as ADDRESS/PREFIX, e.g. 10.0.0.0/24"
    if ipaddress.IPv4Network(value).num_addresses < 8:
        return f"{shown(value)} is too small for a cluster: use a /29 or larger"
    return None


def check_one_of(*choices: str) -> Any:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        return f"{shown(value)} is not one of {', '.join(choices)}"
    return check


def check_sha256(value: str) -> str | tuple[str, str] | None:
    if _SHA256.fullmatch(value.lower()):
        return ("ok", value.lower())
    return f"{shown(value)} is not a sha256 digest: it must be 64 hex digits"


def check_url(value: str) -> str | None:
    if re.fullmatch(r"(https?|file)://[^\s\"'`<>\\#\x00-\x1f\x7f]+", value) and len(value) <= 2048:
        return None
    return f"{shown(value)} is not a URL: it must start with http://, https:// or file://"


def check_user(value: str) -> str | None:
    return None if _USER.fullmatch(value) else f"{shown(value)} is not a user name: use a-z, 0-9, '_' and '-'"


def check_ssh_key(value: str) -> str | None:
    if (re.fullmatch(r"(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+( .*)?", value)
            and printable(value) and len(value) <= 16384):
        return None
    return "is not an SSH public key line (e.g. 'ssh-ed25519 AAAA... me@host', from ~/.ssh/id_ed25519.pub)"


def check_password_hash(value: str) -> str | None:
    if re.fullmatch(r"\$6\$(rounds=\d+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{86}", value):
        return None
    return "is not a sha512-crypt hash: make one with 'mkpasswd -m sha-512' (package whois)"


def check_package(value: str) -> str | None:
    if _PACKAGE.fullmatch(value) and len(value) <= 255:
        return None
    return f"{shown(value)} is not a Debian package name (lower case, e.g. htop or htop=3.2.2-2)"


def check_size(value: str) -> str | tuple[str, int]:
    """A size such as 3500M or 4G, in bytes."""
    if not _SIZE.fullmatch(value):
        return f"{shown(value)} is not a size: write e.g. 3500M or 4G"
    return ("ok", int(value[:-1]) * (2**20 if value[-1] == "M" else 2**30))


def check_timezone(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*", value) or len(value) > 255:
        return f"{shown(value)} is not a time zone name, e.g. Europe/Berlin or Etc/UTC"
    zoneinfo = Path("/usr/share/zoneinfo")
    if zoneinfo.is_dir() and not (zoneinfo / value).is_file():
        return f"{shown(value)} is not a known time zone (see /usr/share/zoneinfo), e.g. Europe/Berlin"
    return None


def check_k3s_version(value: str) -> str | None:
    if _K3S_VERSION.fullmatch(value):
        return None
    return f"{shown(value)} is not a k3s release: write it as on the releases page, e.g. v1.31.4+k3s1"


def check_k3s_assets(value: str) -> str | None:
    if value in ("release", "none") or check_url(value) is None:
        return None
    if value.startswith(("/", ".", "~")) and check_path(value) is None:
        return None
    return f"{shown(value)} is not release, none, a URL or a folder path (start a relative path with ./)"


def check_psk(value: str) -> str | None:
    # WPA: 8 to 63 printable ASCII characters, or the 64 hex digits of the key itself.
    if (8 <= len(value) <= 63 and all(" " <= c <= "~" for c in value)) or re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return None
    return "a WPA passphrase has 8 to 63 printable ASCII characters (or is 64 hex digits)"


def check_unknown_pattern(value: str) -> str | None:
    try:
        sample = value.format(mac6="0a1b2c", mac="b827eb0a1b2c")
    except (KeyError, IndexError, ValueError):
        return f"{shown(value)} may only use the placeholders {{mac6}} and {{mac}}"
    if "{mac" not in value:
        return f"{shown(value)} must contain {{mac6}} or {{mac}}, or every unknown worker gets the same name"
    if not _HOSTNAME.fullmatch(sample):
        return f"{shown(value)} does not make a valid hostname (e.g. it gives {shown(sample)})"
    return None



def check_multicast_group(value: str) -> str | None:
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        address = None
    if address is None or not address.is_multicast:
        return f"{shown(value)} is not an IPv4 multicast group: use one in 239.0.0.0/8, e.g. 239.255.77.1"
    if address in ipaddress.IPv4Network("224.0.0.0/24"):
        return f"{shown(value)} is reserved for routing protocols: use one in 239.0.0.0/8, e.g. 239.255.77.1"
    return None


def check_port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"{value} is not a port: use 1 to 65535"


def check_interval(value: int) -> str | None:
    return None if 1 <= value <= 300 else f"{value} is not an interval: use 1 to 300 seconds"


_SERVED_DIR = re.compile(r"/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


def check_served_dir(value: str) -> str | None:
    """A folder the master serves (dnsmasq's tftp-root, /etc/exports): absolute, plain characters only."""
    if _SERVED_DIR.fullmatch(value) and ".." not in value.split("/") and value.rstrip("/") not in ("", "/"):
        return None
    return (f"{shown(value)} is not a folder the master can serve: an absolute path of a-z, A-Z, 0-9, "
            "'_', '.' and '-', not / itself, without '..'")
