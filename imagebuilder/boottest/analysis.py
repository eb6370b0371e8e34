"""Where each node's boot went, in the node's own words, kept beside its serial log (`--logs`).

The boot report gives when each event came; these say why: systemd's own accounts of the boot (the units
that took longest, the chain the boot waited on), cloud-init's log of its stages and modules, and the journal
with each line's time since the kernel started. Read once the checks are done, one login per node; a node
that cannot be read leaves a file saying so, never a failed check.
"""

from __future__ import annotations

import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imagebuilder.boottest.plan import NodeResult
from imagebuilder.boottest.ssh import Ssh

# Title, command: run in order on the node, each under its title.
ACCOUNTS = (
    ("systemd-analyze time", ["systemd-analyze", "time"]),
    ("systemd-analyze critical-chain", ["systemd-analyze", "critical-chain", "--no-pager"]),
    ("systemd-analyze blame", ["systemd-analyze", "blame", "--no-pager"]),
)
# Each file kept, by kind: the accounts, the journal, and cloud-init's own log as it is (`cloud-init analyze
# blame -i FILE` reads it anywhere; run on the node it was one more Python start per node, under TCG about
# ten seconds of a core each, for every node at once).
KEPT = {
    "analyze": ["sh", "-c", "; ".join(f"echo {shlex.quote('### ' + title)}; {shlex.join(command)} 2>&1"
                                      for title, command in ACCOUNTS)],
    "journal": ["sudo", "journalctl", "-b", "--no-pager", "-o", "short-monotonic"],
    "cloud-init": ["sudo", "cat", "/var/log/cloud-init.log"],
}


def log_name(result: NodeResult, kind: str) -> str:
    boot = "" if result.node.boot == 1 else f"-boot{result.node.boot}"
    return f"{kind}-{result.node.name}{boot}.txt"


def keep_boot_accounts(results: list[NodeResult], ssh: Ssh, logs: Path) -> None:
    """analyze-NODE.txt (systemd's accounts), journal-NODE.txt and cloud-init-NODE.txt (cloud-init's log) for
    each node in `logs`, the nodes read side by side."""
    with ThreadPoolExecutor(max(1, len(results)), thread_name_prefix="accounts") as pool:
        for done in [pool.submit(keep_accounts, r, ssh, logs) for r in results]:
            done.result()


def keep_accounts(result: NodeResult, ssh: Ssh, logs: Path) -> None:
    for kind, command in KEPT.items():
        done = ssh.run(result.host, command)
        text = done.stdout.decode(errors="replace")
        if done.returncode != 0 and not text:
            text = f"could not be read over ssh at {result.host} (exit status {done.returncode})\n"
        (logs / log_name(result, kind)).write_text(text)
