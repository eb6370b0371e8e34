"""The mount table as the kernel gives it (/proc/self/mountinfo)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DevNo = tuple[int, int]


@dataclass(frozen=True)
class Mount:
    devno: DevNo
    mountpoint: str
    source: str


def unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10 or "-" not in fields:
            continue
        major, minor = fields[2].split(":")
        dash = fields.index("-")
        mounts.append(Mount((int(major), int(minor)), unescape(fields[4]), unescape(fields[dash + 2])))
    return mounts


def mounts_at(target: Path) -> int:
    """How many mounts are stacked on `target` in this process's mount namespace."""
    where = os.path.realpath(target)
    return sum(m.mountpoint == where for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text()))
