"""The cache command: list what is cached (sizes, last use, which clusters use it), prune, clear."""

from __future__ import annotations

import argparse
import json
import time

from imagebuilder.cli.command import Command
from imagebuilder.core.cache import KEEP_DAYS, Entry, in_use, list_entries, prune
from imagebuilder.core.confirm import confirm
from imagebuilder.core.context import Context


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("list", "prune", "clear"), default="list",
                        help="list (default); prune: remove what no build of the last --older-than days uses; "
                             "clear: remove everything no running build holds")
    parser.add_argument("--older-than", type=float, default=KEEP_DAYS, metavar="DAYS",
                        help=f"with prune: forget recipes not built for DAYS (default {KEEP_DAYS})")
    parser.add_argument("--json", action="store_true", help="with list: print the entries as JSON")
    parser.add_argument("--yes", action="store_true",
                        help="with clear: remove without asking (needed where stdin is not a terminal)")


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit} ago"
    return "now"


def _gib(entries: list[Entry]) -> str:
    return f"{sum(e.size for e in entries) / 2**30:.2f}"


def cache(ctx: Context, args: argparse.Namespace) -> int:
    if args.action == "clear":
        # Rebuilding bases and stages takes hours: the whole cache goes only when the user says so.
        entries = list_entries(ctx.cache_dir)
        confirm(f"remove {len(entries)} entries, {_gib(entries)} GiB from {ctx.cache_dir}?", yes=args.yes,
                undone="nothing was removed")
    if args.action in ("prune", "clear"):
        removed = prune(ctx.cache_dir, keep_days=args.older_than, everything=args.action == "clear")
        for entry in removed:
            print(f"removed {entry.name} ({entry.size / 2**20:.0f} MiB)")
        print(f"{ctx.cache_dir}: removed {len(removed)} entries, {_gib(removed)} GiB")
        return 0
    now = time.time()
    users = in_use(ctx.cache_dir, now)
    entries = list_entries(ctx.cache_dir)
    for entry in entries:
        entry.users = sorted(set(users.get(entry.name, [])))
    if args.json:
        print(json.dumps([{"name": e.name, "bytes": e.size, "last_used": e.last_used, "used_by": e.users}
                          for e in entries], indent=1))
        return 0
    width = max((len(e.name) for e in entries), default=10)
    for e in entries:
        print(f"{e.name.ljust(width)}  {e.size / 2**20:9.0f} MiB  {_age(now - e.last_used):>8}  "
              f"{', '.join(e.users) or '-'}")
    print(f"{ctx.cache_dir}: {len(entries)} entries, {_gib(entries)} GiB "
          f"(prune keeps what builds of the last {KEEP_DAYS} days use)")
    return 0


COMMANDS = [
    Command("cache", "list the cache (size, last use, which clusters use each entry), prune or clear it",
            _arguments, cache),
]
