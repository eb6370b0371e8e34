"""The cluster agrees on the time, whatever clocks its boards started with (plan.CLOCK_BEHIND, CLOCK_AHEAD).

The master has nothing better than its image's build time (/usr/lib/clock-epoch) when no time server is
reachable, as in the test; each worker must have set its clock from the master's NTP and agree with it. The
agreement is measured twice: by the worker's own last NTP exchange (timesyncd's offset, milliseconds), and
from here, reading both clocks over ssh and bracketing each reading between two readings of the host's clock
(coarse, but independent of what the worker says about itself).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator

from imagebuilder.boottest.plan import CheckResult, NodeResult
from imagebuilder.boottest.poll import poll
from imagebuilder.boottest.ssh import Ssh
from imagebuilder.recipe.model import Recipe

NTP_OFFSET_LIMIT = 0.1  # seconds: timesyncd's measured offset to the master on the LAN
AGREEMENT_LIMIT = 1.0  # seconds, plus the uncertainty of the readings over ssh
SYNC_WAIT = 150.0  # timesyncd polls at once, then after 32 s, 64 s...: a lost poll is retried
_OFFSET = re.compile(r"^\s*Offset:\s*([+-]?[\d.]+)(us|ms|s|min)\s*$", re.M)
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}
CLOCK_EPOCH = "/usr/lib/clock-epoch"


def read_clock(ssh: Ssh, host: str) -> tuple[float, float] | None:
    """(the host's clock minus ours, the reading's uncertainty) in seconds, or None when it cannot be read."""
    before = time.time()
    text = ssh.text(host, ["date", "+%s.%N"])
    after = time.time()
    try:
        theirs = float(text or "")
    except ValueError:
        return None
    return theirs - (before + after) / 2, (after - before) / 2


def ntp_offset(status: str) -> float | None:
    """The offset of `timedatectl timesync-status`, in seconds."""
    m = _OFFSET.search(status)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def timesync_status(ssh: Ssh, host: str) -> str:
    return ssh.text(host, ["timedatectl", "timesync-status"]) or ""


def measured_as_set(status: str) -> bool:
    """timesyncd's last exchange found the clock within NTP_OFFSET_LIMIT of the master's."""
    offset = ntp_offset(status)
    return offset is not None and abs(offset) <= NTP_OFFSET_LIMIT


def started_at(r: NodeResult) -> str:
    if r.node.board:
        return "no clock of its own (a Pi model)"
    return f"started at {r.node.clock}" if r.node.clock else "started at this host's time"


def check_clocks(recipe: Recipe, master: NodeResult, workers: list[NodeResult], ssh: Ssh,
                 deadline: float) -> Iterator[CheckResult]:
    epoch = ssh.text(master.host, ["stat", "-c", "%Y", CLOCK_EPOCH])
    master_clock = read_clock(ssh, master.host)
    if epoch is None or master_clock is None:
        yield CheckResult("clock", master.node.name, False, f"cannot read the clock or {CLOCK_EPOCH}")
        return
    master_offset, master_spread = master_clock
    # A reading after time.time() says the master's clock is now, in its own terms, at least the epoch.
    not_earlier = time.time() + master_offset + master_spread >= int(epoch)
    # imagebuilder-time-wait.service reached time-sync.target, which k3s.service waits for.
    synced = ssh.text(master.host, ["systemctl", "is-active", "time-sync.target"]) == "active"
    yield CheckResult("clock", master.node.name, not_earlier and synced,
                      f"{master_offset:+.0f} s from this host's clock ({started_at(master)}); "
                      f"{'not earlier' if not_earlier else 'earlier'} than the image's build time; "
                      f"time-sync.target {'reached' if synced else 'not reached'}")
    wait_until = min(deadline, time.monotonic() + SYNC_WAIT)
    for w in workers:
        # The first exchange steps the clock (years, here) and is the offset shown until the next poll,
        # 32 s later: wait for one that measures the clock as set.
        status = poll(functools.partial(timesync_status, ssh, w.host), measured_as_set, wait_until, 1.0)
        offset = ntp_offset(status)
        server = str(recipe.network.master_ip)
        from_master = f"({server})" in status or f" {server}" in status
        reading = read_clock(ssh, w.host)
        agree = (reading is not None
                 and abs(reading[0] - master_offset) <= AGREEMENT_LIMIT + reading[1] + master_spread)
        # The k3s agent's start waits for this (imagebuilder-k3s-agent.service).
        started = w.times.get("time synced") is not None
        ok = from_master and measured_as_set(status) and agree and started
        said = "unknown" if offset is None else f"{offset * 1000:+.1f} ms"
        seen = ("unreadable" if reading is None else
                f"{reading[0] - master_offset:+.2f} s (±{reading[1] + master_spread:.2f})")
        yield CheckResult("clock from the master", w.node.name, ok,
                          f"{started_at(w)}; "
                          f"NTP from {'the master' if from_master else 'elsewhere'}, "
                          f"last offset {said}; read from here: {seen} from the master's; k3s agent "
                          + ("started once synchronised" if started else "not started: no time-synchronized line"))
