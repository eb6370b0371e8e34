"""The status and scan commands: the cluster table from the dashboard or the beacons, whether the cluster
is up, and the workers heard that the recipe's table does not name."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from imagebuilder.cli.command import Command, add_recipe_argument
from imagebuilder.cli.recipes import add_json_argument
from imagebuilder.core.context import Context
from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.log import log
from imagebuilder.recipe.load import load_recipe
from imagebuilder.recipe.model import Monitoring, Recipe
from imagebuilder.status.nodelist import NodeList
from imagebuilder.status.readiness import Expected, expected_from_recipe, format_entries, new_workers, waiting_for
from imagebuilder.status.table import Listener, StatusError, fetch_nodes, format_table

WAIT_DEFAULT = 900.0


def _add_source_arguments(parser: argparse.ArgumentParser, *, url_help: str) -> None:
    defaults = Monitoring()
    parser.add_argument("url", nargs="?", metavar="URL", help=url_help)
    parser.add_argument("--listen", metavar="IFACE",
                        help="read the beacons on this interface instead (this machine on the cluster LAN)")
    parser.add_argument("--group", default=None, help=f"with --listen: monitoring.group ({defaults.group})")
    parser.add_argument("--port", type=int, default=None, help=f"with --listen: monitoring.port ({defaults.port})")
    parser.add_argument("--seconds", type=float, default=float(2 * defaults.interval + 1),
                        help="with --listen: how long to listen for beacons (default: %(default)s)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_source_arguments(parser, url_help="the master's dashboard, e.g. http://10.0.0.1:8080 "
                                           "(default with --recipe: the recipe's master)")
    parser.add_argument("--recipe", type=Path, metavar="RECIPE",
                        help="the cluster's recipe: its table is what --wait waits for")
    parser.add_argument("--watch", nargs="?", type=float, const=float(Monitoring().interval), default=None,
                        metavar="SECONDS", help="refresh every SECONDS (default %(const)s) until Ctrl-C")
    parser.add_argument("--wait", nargs="?", type=float, const=WAIT_DEFAULT, default=None, metavar="SECONDS",
                        help="wait until every node of the table is up with cloud-init done, /srv/jobs mounted "
                             "and k3s running where the images carry it; exit 0 then, 3 with what is missing "
                             "after SECONDS (default %(const)s); a master that does not answer yet is asked again")
    add_json_argument(parser)


class Source:
    """Where the node list comes from: a master's dashboard, or the beacons heard on an interface."""

    def __init__(self, ctx: Context, args: argparse.Namespace, recipe: Recipe | None) -> None:
        url = args.url
        if url is None and args.listen is None and recipe is not None:
            url = f"http://{recipe.network.master_ip}:{recipe.monitoring.dashboard_port}"
        if (url is None) == (args.listen is None):
            raise StatusError("give the dashboard URL, --listen IFACE or --recipe RECIPE (one of them)",
                              "imagebuilder status http://10.0.0.1:8080, or imagebuilder status --listen eth0")
        monitoring = recipe.monitoring if recipe is not None else Monitoring()
        self.url = url
        self.listener = Listener(ctx, args.listen, args.group or monitoring.group, args.port or monitoring.port) \
            if args.listen else None
        self.seconds = args.seconds

    def read(self, seconds: float | None = None) -> NodeList:
        if self.listener is not None:
            return self.listener.collect(seconds or self.seconds)
        return fetch_nodes(self.url)


def show_status(ctx: Context, args: argparse.Namespace) -> int:
    try:
        return _show_status(ctx, args)
    except ImageBuilderError as e:
        if not args.json:
            raise
        # A program that reads --json gets its error as JSON too; the exit status still says it failed.
        print(json.dumps({"error": e.message, "hint": e.hint}), flush=True)
        return e.exit_status


def _show_status(ctx: Context, args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe) if args.recipe else None
    source = Source(ctx, args, recipe)
    if args.wait is not None:
        return _wait(source, expected_from_recipe(recipe) if recipe else None, args)
    first = True
    while True:
        nodes = source.read(None if first else args.watch)
        if args.json:
            # One JSON document per line, so --watch gives a stream a program reads line by line.
            print(json.dumps(nodes.document), flush=True)
        else:
            table = format_table(nodes)
            if args.watch is not None and sys.stdout.isatty():
                table = "\x1b[H\x1b[2J" + table  # redraw in place
            elif not first:
                table = "\n" + table
            print(table, flush=True)
        if args.watch is None:
            return 0
        first = False
        if source.listener is None:
            time.sleep(args.watch)


POLL = 2.0  # seconds between two looks while waiting (the beacons come every 5 s by default)


def _wait(source: Source, expected: Expected | None, args: argparse.Namespace) -> int:
    """Ask until the cluster is up or the deadline passes; say what changed while waiting."""
    deadline = time.monotonic() + args.wait
    nodes: NodeList | None = None
    said: list[str] = []
    while True:
        try:
            nodes = source.read(POLL)
            missing = waiting_for(nodes, expected)
        except StatusError as e:
            missing = [f"the master: {e.message}"]  # still booting, or not on this LAN
        if nodes is not None and not missing:
            _print_nodes(nodes, args.json)
            log.info("the cluster is up: every node of its table")
            return 0
        if missing != said:
            log.info("waiting for %d: %s", len(missing), "; ".join(missing))
            said = missing
        if time.monotonic() >= deadline:
            break
        if source.listener is None:
            time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
    if nodes is not None:
        _print_nodes(nodes, args.json)
    print(f"imagebuilder: the cluster is not up after {args.wait:.0f} s:", file=sys.stderr)
    for line in missing:
        print(f"  {line}", file=sys.stderr)
    return 3


def _print_nodes(nodes: NodeList, as_json: bool) -> None:
    print(json.dumps(nodes.document) if as_json else format_table(nodes), flush=True)


def _scan_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    _add_source_arguments(parser, url_help="the master's dashboard (default: the recipe's master)")


def scan(ctx: Context, args: argparse.Namespace) -> int:
    """Print the workers[] entries of the workers heard that the recipe's table does not name."""
    recipe = load_recipe(args.recipe)
    found = new_workers(Source(ctx, args, recipe).read(), recipe)
    if not found:
        print(f"# every worker heard is in {args.recipe}'s table", file=sys.stderr)
        return 0
    print(f"# {len(found)} worker(s) heard that {args.recipe} does not name; add under workers: and rebuild "
          "(or keep them as unknown nodes)", file=sys.stderr)
    print(format_entries(found))
    return 0


COMMANDS = [
    Command("status", "show the cluster's nodes from the master's dashboard or the beacons on the LAN; "
                      "--wait until they are all up", add_arguments, show_status),
    Command("scan", "print the workers[] entries (hostname, MAC) of workers heard that the recipe does not name",
            _scan_arguments, scan),
]
