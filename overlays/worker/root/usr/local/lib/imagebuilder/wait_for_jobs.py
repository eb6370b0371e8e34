#!/usr/bin/python3
"""imagebuilder: wait until the master's NFS server answers, then mount /srv/jobs and say so on the console.

The master is asked first with a plain connection to its NFS port, not by touching /srv/jobs: every touch
of the automount while the master is down is a failed mount, and a console full of them. The master's
address comes from /etc/imagebuilder/jobs.json, which the build writes from the recipe. Runs with the
image's python3 and the standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

NFS_PORT = 2049
JOBS = "/srv/jobs"
FIRST_PAUSE = 5.0
LONGEST_PAUSE = 60.0


def read_master(config: Path) -> str:
    """The master's address on the cluster LAN, from the settings file."""
    settings = json.loads(config.read_text())
    return str(settings["master"])


def master_answers(master: str, port: int = NFS_PORT) -> bool:
    try:
        socket.create_connection((master, port), timeout=5).close()
    except OSError:
        return False
    return True


def mounted(jobs: str = JOBS) -> bool:
    try:
        os.listdir(jobs)  # through the automount: mounts it
    except OSError:
        return False
    return os.path.ismount(jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("/etc/imagebuilder/jobs.json"))
    args = parser.parse_args(argv)
    master = read_master(args.config)
    pause = FIRST_PAUSE
    while not (master_answers(master) and mounted()):
        time.sleep(pause)
        pause = min(pause * 1.5, LONGEST_PAUSE)  # a master that stays away is asked less and less often
    with open("/dev/console", "w") as console:
        console.write(f"IMAGEBUILDER: nfs-mounted {JOBS}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
