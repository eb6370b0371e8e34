"""The boot test's report: per node, seconds from power-on to each event; then every check. Table and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imagebuilder.boottest.plan import EVENTS, BootReport
from imagebuilder.core.resources import atomic_output


def report_data(report: BootReport) -> dict[str, Any]:
    return {
        "cluster": report.cluster,
        "ok": report.ok,
        "seconds": round(report.seconds, 1),
        "nodes": [{
            "name": r.node.name, "role": r.node.role, "mac": r.node.mac, "known": r.node.known,
            "address": r.address, "machine": r.node.board or "virt",
            "seconds": {event: None if t is None else round(t, 1) for event, t in r.times.items()},
        } for r in report.nodes],
        "checks": [{"name": c.name, "node": c.node, "ok": c.ok, "skipped": c.skipped, "detail": c.detail}
                   for c in report.checks],
    }


def format_report(report: BootReport) -> str:
    """The timings table, then one line per check."""
    header = ["node", "role", "machine", "address", *EVENTS]
    rows = [[r.node.name, r.node.role if r.node.known else "worker?", r.node.board or "virt", r.address or "-",
             *(_seconds(r.times, event) for event in EVENTS)] for r in report.nodes]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    # Names left-aligned, seconds right-aligned.
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for c in report.checks:
        verdict = "SKIP" if c.skipped else "PASS" if c.ok else "FAIL"
        lines.append(f"{verdict}  {c.name}{f' [{c.node}]' if c.node else ''}: {c.detail}")
    failed = sum(not c.ok for c in report.checks)
    lines.append(f"\n{report.cluster}: {len(report.checks) - failed} of {len(report.checks)} checks passed "
                 f"in {report.seconds:.0f}s (times: seconds from each node's power-on)")
    return "\n".join(lines)


def _seconds(times: dict[str, float | None], event: str) -> str:
    if event not in times:
        return "n/a"
    t = times[event]
    return "-" if t is None else f"{t:.1f}"


def write_json(report: BootReport, path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(report_data(report), indent=1) + "\n")
