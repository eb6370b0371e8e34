"""The checks of generated files a stage runs, and the verdicts kept from them.

A check's verdict depends on the image's tools and on files an overlay edit mostly leaves alone: a check
that passed on exactly the same inputs is not run again. The keys of the checks a stage passed are kept in
its record (entry.py); the records of every cached stage of the same name are the memo.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from imagebuilder.core.log import log
from imagebuilder.engine.backends.interface import Backend, ImageTree
from imagebuilder.engine.checks import ConfigCheck
from imagebuilder.engine.entry import StageRecord, parse_record
from imagebuilder.engine.stages import Stage


def check_key(stage: Stage, check: ConfigCheck) -> str:
    """What a check's verdict depends on: the image's tools (the parent), the command, the checked file and
    the rest of its layer (a file it includes), and where every other file is and how it may be run (what
    `systemd-analyze verify` looks for)."""
    boot = stage.layout.boot_mount
    own = next((layer for layer in stage.layers if any(f.system_path(boot) == check.path for f in layer.files)),
               None)
    material = {
        "parent": stage.parent_key, "argv": check.argv, "tool": check.tool, "on_host": check.on_host,
        "layer": sorted((f.system_path(boot), hashlib.sha256(f.data).hexdigest(), f.mode, f.symlink)
                        for f in (own.files if own else ())),
        "files": sorted((f.system_path(boot), f.mode, f.symlink, f.data.decode(errors="replace") if f.symlink
                         else "") for layer in stage.layers for f in layer.files),
        "units": sorted(unit for layer in stage.layers for unit in layer.units),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def passed_before(stage_dir: Path, name: str) -> set[str]:
    """The checks the cached stages of this name passed (their records keep the keys)."""
    passed: set[str] = set()
    for path in stage_dir.glob(f"{name}-*.json"):
        if not re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{24}}\.json", path.name):  # master-packages-...
            continue
        record = parse_record(path)
        if isinstance(record, StageRecord):
            passed.update(record.checks_passed)
    return passed


def run_stage_checks(tree: ImageTree, stage: Stage, backend: Backend, stage_dir: Path) -> tuple[str, ...]:
    """Run the stage's checks but those that passed before on exactly the same inputs; return the key of
    every check it passed. A backend that cannot run them passes none.

    An overlay edit changes one file: the checks of the others (cloud-init schema and systemd-analyze verify
    under emulation, about a second each) would only repeat their verdict.
    """
    if not backend.runs_checks:
        if stage.checks:
            tree.run_checks(list(stage.checks))  # it says which it skips
        return ()
    keys = {check: check_key(stage, check) for check in stage.checks}
    known = passed_before(stage_dir, stage.name)
    todo = [check for check in stage.checks if keys[check] not in known]
    if len(todo) < len(keys):
        log.info("stage %s: %d of %d checks passed before on the same files and tools: not run again",
                 stage.name, len(keys) - len(todo), len(keys))
    if todo:
        tree.run_checks(todo)
    return tuple(sorted(set(keys.values())))
