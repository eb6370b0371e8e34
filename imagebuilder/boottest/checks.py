"""What the boot test asserts about a running cluster: from the consoles, and by logging in over ssh.

Each check yields CheckResult(name, node, ok, detail); a failed check never raises, so one broken service
does not hide the state of the others. No check changes what it is given, so their order does not matter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Iterator

import yaml

from imagebuilder.boottest.clocks import check_clocks
from imagebuilder.boottest.edge import check_edge
from imagebuilder.boottest.k3s_needs import check_k3s_needs
from imagebuilder.boottest.k3s_pods import check_pods
from imagebuilder.boottest.lan import UPLINK_SERVER
from imagebuilder.boottest.plan import BootOptions, CheckResult, Node, NodeResult
from imagebuilder.boottest.poll import poll
from imagebuilder.boottest.qemu import sentinel, sentinel_detail
from imagebuilder.boottest.ssh import MASTER_ALIAS, Ssh
from imagebuilder.recipe.model import Recipe

LEASES = "/var/lib/misc/dnsmasq.leases"  # dnsmasq's default lease file
JOBS = "/srv/jobs"
LEASE_WAIT = 30.0  # seconds after the master's login
_CLOUD_INIT_RUN = re.compile(r"Cloud-init v\. \S+ running 'init' ")
# A failed module is only a WARNING on the console ("Running module locale (...) failed"), but an error in
# result.json: count both.
_CLOUD_INIT_ERROR = re.compile(r"cloud-init\[\d+\]:.*(\[ERROR\]|\[CRITICAL\]|Traceback|Running module \S+ .* failed)")


def run_checks(recipe: Recipe, results: list[NodeResult], ssh: Ssh, nonce: str,
               options: BootOptions, deadline: float) -> tuple[list[NodeResult], list[CheckResult]]:
    """Every check of the booted cluster; and `results` with each worker not in the table at the address the
    master leased it (new records: no check changes what it is given, so their order does not matter)."""
    checks = [*check_consoles(results), *check_boot_reports(results)]
    master = results[0]
    if not ssh.wait_until_up(master.host, deadline):
        checks.append(CheckResult("ssh login", master.node.name, False,
                                  f"no ssh login to the master at {recipe.network.master_ip} on the LAN "
                                  f"(user {recipe.users[0].name})"))
        return results, checks
    leases = wait_for_leases(ssh, [r.node for r in results if r.node.role == "worker"])
    results = [with_leased_address(r, leases) for r in results]
    master, workers = results[0], results[1:]
    checks += check_leases([r.node for r in workers], leases)
    for result in results:
        up = result.address is not None and ssh.wait_until_up(result.host, min(deadline, time.monotonic() + 60))
        checks.append(CheckResult("ssh login", result.node.name, up,
                            f"logged in at {result.host}" if up else f"no ssh login at {result.address}"))
    reachable = [r for r in results if any(c.ok for c in checks if c.name == "ssh login" and c.node == r.node.name)]
    checks += [c for r in reachable for c in check_node(r, ssh)]
    checks += check_dns(recipe, workers, ssh)
    checks += check_jobs_share(master, workers, ssh, nonce)
    checks += check_nat(recipe, workers, ssh, nonce)
    checks += check_dashboard(recipe, results, ssh, deadline)
    checks += check_clocks(recipe, master, workers, ssh, deadline)
    checks += check_k3s(recipe, master, workers, ssh, options, deadline)
    checks += check_k3s_needs(reachable, ssh)
    checks += check_identity(reachable, ssh)
    checks += check_edge(recipe, master, ssh)
    return results, checks


def check_identity(results: list[NodeResult], ssh: Ssh) -> Iterator[CheckResult]:
    """Every node made its own machine-id and SSH host key at first boot: none shares one with another."""
    seen: dict[str, list[str]] = {}
    for r in results:
        machine_id = ssh.text(r.host, ["cat", "/etc/machine-id"]) or ""
        host_key = (ssh.text(r.host, ["cut", "-d", " ", "-f2", "/etc/ssh/ssh_host_ed25519_key.pub"]) or "").strip()
        for kind, value in (("machine-id", machine_id), ("host key", host_key)):
            seen.setdefault(f"{kind}:{value}", []).append(r.node.name)
        ok = len(machine_id) == 32 and bool(host_key)
        yield CheckResult("own identity", r.node.name, ok,
                          f"machine-id {machine_id[:8] or 'missing'}..., ed25519 host key "
                          f"{host_key[:12] or 'missing'}...")
    shared = {k.split(":", 1)[0]: names for k, names in seen.items() if len(names) > 1}
    yield CheckResult("own identity", "", not shared,
                      "every machine-id and host key differs" if not shared else f"shared: {shared}")


_BOOT_REPORT = re.compile(r"IMAGEBUILDER: boot-report (.*)$")


def boot_report(result: NodeResult) -> dict[str, str]:
    """The facts the node printed when its boot finished (imagebuilder-boot-report.service)."""
    seen = result.guest.serial.first(lambda line: _BOOT_REPORT.search(line) is not None)
    if seen is None:
        return {}
    found = _BOOT_REPORT.search(seen[1])
    assert found is not None
    return dict(item.split("=", 1) for item in found.group(1).split() if "=" in item)


def check_boot_reports(results: list[NodeResult]) -> Iterator[CheckResult]:
    """From each node's console: the boot finished with no failed unit, the root and the boot partition are
    on its card (/dev/vda on virt, /dev/mmcblk0 on a Pi), and the memory cgroup k3s needs is on."""
    for r in results:
        disk = r.node.disk
        facts = boot_report(r)
        name = r.node.name
        if not facts:
            yield CheckResult("boot finished", name, False, "no boot-report line on the console")
            continue
        failed = facts.get("failed", "?")
        yield CheckResult("boot finished", name, facts.get("state") == "running" and failed == "-",
                          f"state {facts.get('state')}; failed units: {failed}")
        root, boot = facts.get("root", ""), facts.get("boot", "")
        if r.node.netboot:
            yield CheckResult("no card: root in RAM over the network", name, root == "overlay" and boot in ("", "-"),
                              f"root {root}, boot partition {boot or 'none'}")
        else:
            yield CheckResult("root and boot on the card", name, root == f"{disk}2" and boot == f"{disk}1",
                              f"root {root}, boot partition {boot or 'not mounted'}")
        memory = facts.get("memory-cgroup") == "yes"
        yield CheckResult("memory cgroup", name, memory,
                          f"/sys/fs/cgroup/cgroup.controllers {'lists' if memory else 'lacks'} memory")


def check_consoles(results: list[NodeResult]) -> Iterator[CheckResult]:
    """Booted, cloud-init ran once and finished without errors, hostname as planned: from the serial logs."""
    for r in results:
        name, serial = r.node.name, r.guest.serial
        up = r.times.get("kernel up")
        running = r.guest.exited() is None
        yield CheckResult("boots", name, up is not None and running,
                    f"kernel up at {up:.1f}s" + ("" if running else f"; qemu exited ({r.guest.exited()})")
                    if up is not None else "no kernel banner on the console")
        done = r.times.get("cloud-init done")
        runs = serial.count(lambda line: _CLOUD_INIT_RUN.search(line) is not None)
        errors = [line for _, line in serial.lines if _CLOUD_INIT_ERROR.search(line)]
        yield CheckResult("cloud-init once, no errors (console)", name, done is not None and runs == 1 and not errors,
                    (f"done at {done:.1f}s" if done is not None else "not done")
                    + f"; 'init' stage ran {runs} times; {len(errors)} error lines"
                    + (f": {errors[0]}" if errors else ""))
        seen = serial.first(sentinel("hostname"))
        got = sentinel_detail(seen[1], "hostname") if seen else None
        yield CheckResult("hostname (console)", name, got == r.node.name,
                    f"console says {got!r}, want {r.node.name!r}")


def check_node(r: NodeResult, ssh: Ssh) -> Iterator[CheckResult]:
    name, host = r.node.name, r.host
    got = ssh.text(host, ["hostname"])
    yield CheckResult("hostname", name, got == r.node.name, f"hostname is {got!r}, want {r.node.name!r}")
    # `status` exits non-zero when cloud-init failed; its output says why, so keep it either way.
    status = ssh.run(host, ["cloud-init", "status", "--long"]).stdout.decode(errors="replace").strip()
    result_json = ssh.text(host, ["cat", "/run/cloud-init/result.json"]) or "{}"
    try:
        errors = json.loads(result_json).get("v1", {}).get("errors", ["no result.json"])
    except json.JSONDecodeError:
        errors = ["result.json is not JSON"]
    runs = ssh.text(host, ["sudo", "grep", "-c", "running 'init' ", "/var/log/cloud-init.log"])
    ok = "status: done" in status and not errors and runs == "1"
    yield CheckResult("cloud-init once, no errors", name, ok,
                f"{status.splitlines()[0] if status else 'no status'}; errors {errors}; 'init' ran {runs} times")


def read_leases(ssh: Ssh) -> dict[str, str]:
    """MAC -> address from the master's dnsmasq lease file."""
    text = ssh.text(MASTER_ALIAS, ["sudo", "cat", LEASES]) or ""
    return {f[1].lower(): f[2] for f in (line.split() for line in text.splitlines()) if len(f) >= 3}


def wait_for_leases(ssh: Ssh, workers: list[Node]) -> dict[str, str]:
    """The master's leases, once every worker has one or after LEASE_WAIT: a lease is written when the worker's
    DHCP exchange ends, which may trail its console by a little."""
    return poll(lambda: read_leases(ssh), lambda leases: all(w.mac in leases for w in workers),
                time.monotonic() + LEASE_WAIT, 0.5)


def with_leased_address(result: NodeResult, leases: dict[str, str]) -> NodeResult:
    """A worker not in the table answers where the master's DHCP put it; the others where the plan says."""
    if result.node.role != "worker" or result.node.known:
        return result
    return dataclasses.replace(result, address=leases.get(result.node.mac))


def check_leases(workers: list[Node], leases: dict[str, str]) -> Iterator[CheckResult]:
    """The master's dnsmasq leased each known worker its reserved address, and an unknown one some address."""
    for node in workers:
        got = leases.get(node.mac)
        if node.known:
            yield CheckResult("dnsmasq lease", node.name, got == node.ip, f"{node.mac} leased {got}, want {node.ip}")
        else:
            yield CheckResult("dnsmasq lease", node.name, got is not None, f"{node.mac} leased {got}")


def check_dns(recipe: Recipe, workers: list[NodeResult], ssh: Ssh) -> Iterator[CheckResult]:
    """`<first known worker>.<domain>` resolves to its reserved address on another node (a worker if any)."""
    known = [w for w in workers if w.node.known]
    if not known:
        return
    target = known[0]
    others = [w for w in workers if w is not target] or []
    asker = others[0] if others else None
    fqdn = f"{target.node.name}.{recipe.cluster.domain}"
    host = asker.host if asker else MASTER_ALIAS
    got = (ssh.text(host, ["getent", "hosts", fqdn]) or "").split()
    yield CheckResult("DNS", asker.node.name if asker else recipe.master.hostname, got[:1] == [target.node.ip],
                f"{fqdn} resolves to {got[:1] or 'nothing'}, want {target.node.ip}")


def check_jobs_share(master: NodeResult, workers: list[NodeResult], ssh: Ssh, nonce: str) -> Iterator[CheckResult]:
    """A file written into /srv/jobs on one worker is read on every other worker and on the master."""
    if not workers:
        return
    writer = workers[0]
    path = f"{JOBS}/boot-test-{nonce}"
    wrote = ssh.run(writer.host, ["sh", "-c", 'echo "$1" >"$2"', "sh", nonce, path]).returncode == 0
    yield CheckResult("NFS write", writer.node.name, wrote, f"wrote {path}" if wrote else f"cannot write {path}")
    if not wrote:
        return
    for reader in [*workers[1:], master]:
        got = ssh.text(reader.host, ["cat", path])
        yield CheckResult("NFS read", reader.node.name, got == nonce, f"{path} reads {got!r}, want the nonce")
    ssh.run(writer.host, ["rm", "-f", path])


def check_nat(recipe: Recipe, workers: list[NodeResult], ssh: Ssh, nonce: str) -> Iterator[CheckResult]:
    """A worker fetches from the test's server behind the master's uplink, routed through the master."""
    if not recipe.network.uplink_interface:
        yield CheckResult("NAT", "", True, "skipped: the recipe has no uplink (an isolated cluster)", skipped=True)
        return
    if not workers:
        return
    worker = workers[0]
    route = " ".join((ssh.text(worker.host, ["ip", "route", "get", UPLINK_SERVER]) or "").split())
    via_master = f"via {recipe.network.master_ip} " in route + " "
    fetch = ("import urllib.request; print(urllib.request.urlopen("
             f"'http://{UPLINK_SERVER}/uplink-check', timeout=20).read().decode().strip())")
    got = ssh.text(worker.host, ["python3", "-c", fetch])
    yield CheckResult("NAT", worker.node.name, via_master and got == nonce,
                f"route: {route or 'none'}; fetched {got!r} from {UPLINK_SERVER}")


def check_dashboard(recipe: Recipe, results: list[NodeResult], ssh: Ssh, deadline: float) -> Iterator[CheckResult]:
    """What the master's collector says of every node (its beacons come every few seconds)."""
    if not recipe.monitoring.enabled:
        return
    url = f"http://127.0.0.1:{recipe.monitoring.dashboard_port}/api/nodes"
    fetch = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"

    def read_states() -> dict[str, str]:
        try:
            document = json.loads(ssh.text(MASTER_ALIAS, ["python3", "-c", fetch]) or "{}")
        except json.JSONDecodeError:
            document = {}
        return {n["hostname"]: n["state"] for n in document.get("nodes", [])}

    # Up to a minute for the last node's first beacon, which is sent once its unit starts.
    states = poll(read_states, lambda found: all(found.get(r.node.name) == "up" for r in results),
                  min(deadline, time.monotonic() + 60), 1.0)
    for r in results:
        state = states.get(r.node.name, "absent")
        yield CheckResult("dashboard", r.node.name, state == "up", f"/api/nodes says {state}")


def read_k3s_config(ssh: Ssh, host: str) -> dict[str, object]:
    text = ssh.text(host, ["sudo", "cat", "/etc/rancher/k3s/config.yaml"]) or ""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def check_k3s(recipe: Recipe, master: NodeResult, workers: list[NodeResult], ssh: Ssh, options: BootOptions,
              deadline: float) -> Iterator[CheckResult]:
    """Server and agent units enabled with the right config; the master holds the server and agent tokens and
    the cluster CA, each worker only the agent token pinned to that CA; with the assets, every node Ready and
    a pod on each, reached from the master through the pod network and at each worker's NodePort."""
    server = read_k3s_config(ssh, master.host)
    token, agent_token = server.get("token"), server.get("agent-token")
    read_ca = ssh.run(master.host, ["sudo", "cat", "/var/lib/rancher/k3s/server/tls/server-ca.crt"])
    ca = read_ca.stdout if read_ca.returncode == 0 else b""  # the file's bytes, as k3s hashes them
    enabled = ssh.text(master.host, ["systemctl", "is-enabled", "k3s.service"])
    yield CheckResult("k3s server", master.node.name, enabled == "enabled" and bool(token) and bool(agent_token)
                      and bool(ca), f"k3s.service {enabled}; token {'set' if token else 'missing'}; agent-token "
                                    f"{'set' if agent_token else 'missing'}; CA {'present' if ca else 'missing'}")
    want_server = f"https://{recipe.network.master_ip}:6443"
    want_token = f"K10{hashlib.sha256(ca).hexdigest()}::node:{agent_token}"
    for w in workers:
        agent = read_k3s_config(ssh, w.host)
        enabled = ssh.text(w.host, ["systemctl", "is-enabled", "imagebuilder-k3s-agent.service"])
        pinned = bool(ca and agent_token) and agent.get("token") == want_token
        ok = enabled == "enabled" and agent.get("server") == want_server and pinned
        yield CheckResult("k3s agent", w.node.name, ok,
                          f"imagebuilder-k3s-agent.service {enabled}; server {agent.get('server')!r} "
                          f"(want {want_server!r}); "
                          f"token {'is the agent token pinned to the master CA' if pinned else 'differs'}")
        # grep's complaints (sockets, vanished files) go to stderr, which is not read.
        secret = ssh.text(w.host, ["sudo", "grep", "-rlF", "-e", str(token), "/etc", "/var/lib/rancher"])
        yield CheckResult("no server secret", w.node.name, bool(token) and not secret,
                          "the server token is nowhere in /etc or /var/lib/rancher" if not secret
                          else f"the server token is in {secret}")
    if options.k3s_assets:
        ready = wait_nodes_ready(ssh, master, [master, *workers], deadline)
        yield ready
        if ready.ok:
            yield from check_pods(master, workers, ssh, deadline)


def read_ready_nodes(ssh: Ssh, master: NodeResult) -> set[str]:
    """The nodes k3s on the master says are Ready."""
    text = ssh.text(master.host, ["sudo", "k3s", "kubectl", "get", "nodes", "-o", "json"]) or "{}"
    try:
        items = json.loads(text).get("items", [])
    except json.JSONDecodeError:
        items = []
    return {i["metadata"]["name"] for i in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in i["status"].get("conditions", []))}


def wait_nodes_ready(ssh: Ssh, master: NodeResult, nodes: list[NodeResult], deadline: float) -> CheckResult:
    wanted = {n.node.name for n in nodes}
    ready = poll(lambda: read_ready_nodes(ssh, master), wanted.issubset, deadline, 5.0)
    return CheckResult("k3s nodes Ready", "", wanted <= ready,
                 f"Ready: {', '.join(sorted(ready)) or 'none'}; want {', '.join(sorted(wanted))}")
