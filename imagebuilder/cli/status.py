"""The status command: the cluster table from the dashboard or the beacons."""

from __future__ import annotations

import argparse
import json
import sys
import time

from imagebuilder.cli.command import Command
from imagebuilder.cli.recipes import add_json_argument
from imagebuilder.core.context import Context
from imagebuilder.recipe.model import Monitoring
from imagebuilder.status.table import Listener, StatusError, fetch_nodes, format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Monitoring()
    parser.add_argument("url", nargs="?", metavar="URL",
                        help="the master's dashboard, e.g. http://10.0.0.1:8080")
    parser.add_argument("--listen", metavar="IFACE",
                        help="read the beacons on this interface instead (this machine on the cluster LAN)")
    parser.add_argument("--group", default=defaults.group, help="with --listen: the recipe's monitoring.group")
    parser.add_argument("--port", type=int, default=defaults.port, help="with --listen: monitoring.port")
    parser.add_argument("--seconds", type=float, default=float(2 * defaults.interval + 1),
                        help="with --listen: how long to listen for beacons (default: %(default)s)")
    parser.add_argument("--watch", nargs="?", type=float, const=float(defaults.interval), default=None,
                        metavar="SECONDS", help="refresh every SECONDS (default %(const)s) until Ctrl-C")
    add_json_argument(parser)


def show_status(ctx: Context, args: argparse.Namespace) -> int:
    if (args.url is None) == (args.listen is None):
        raise StatusError("give the dashboard URL or --listen IFACE (one of them)",
                          "imagebuilder status http://10.0.0.1:8080, or imagebuilder status --listen eth0")
    listener = Listener(ctx, args.listen, args.group, args.port) if args.listen else None
    first = True
    while True:
        if listener is not None:
            document = listener.collect(args.seconds if first else (args.watch or args.seconds))
        else:
            document = fetch_nodes(args.url)
        if args.json:
            # One JSON document per line, so --watch gives a stream a program reads line by line.
            print(json.dumps(document), flush=True)
        else:
            table = format_table(document)
            if args.watch is not None and sys.stdout.isatty():
                table = "\x1b[H\x1b[2J" + table  # redraw in place
            elif not first:
                table = "\n" + table
            print(table, flush=True)
        if args.watch is None:
            return 0
        first = False
        if listener is None:
            time.sleep(args.watch)


COMMANDS = [
    Command("status", "show the cluster's nodes from the master's dashboard or the beacons on the LAN",
            add_arguments, show_status),
]
