"""With the k3s binary in the images (IMAGEBUILDER_K3S_ASSETS): a pod on every node, reached from the master
through the pod network (flannel's VXLAN between the nodes) and through a NodePort on each worker.

The pod is busybox's httpd from k3s's own air-gap images (the local-path provisioner's helper image), pulled
from nowhere: `imagePullPolicy: Never`. It answers with the name of the node it runs on, so an answer proves
which node's pod was reached. No k3s binary can be fetched where imagebuilder is tested: this tier runs only
where the assets are given (docs/development.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

from imagebuilder.boottest.plan import CheckResult, NodeResult
from imagebuilder.boottest.poll import poll
from imagebuilder.boottest.ssh import Ssh

PROBE = "imagebuilder-probe"
POD_PORT = 8080
NODE_PORT = 30080  # in k3s's default NodePort range, 30000-32767
KUBECTL = ["sudo", "k3s", "kubectl"]
# The image among the air-gap images that has a shell and an HTTP server.
BUSYBOX = "mirrored-library-busybox"
# The pod's command: its node's name as the page it serves.
SERVE_NODE_NAME = f'mkdir -p /www && echo "$NODE_NAME" >/www/index.html && exec httpd -f -p {POD_PORT} -h /www'


@dataclass(frozen=True)
class ProbePod:
    node: str
    address: str | None  # the pod's address on the pod network, once it has one
    ready: bool


def probe_manifest(image: str) -> str:
    """A DaemonSet of the probe on every node (the server's too: tolerating every taint), and a NodePort
    service that each node answers with its own pod (externalTrafficPolicy Local)."""
    labels = {"app": PROBE}
    daemonset = {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": PROBE, "namespace": "default"},
        "spec": {"selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"tolerations": [{"operator": "Exists"}], "containers": [{
                "name": "httpd", "image": image, "imagePullPolicy": "Never",
                "command": ["sh", "-c", SERVE_NODE_NAME],
                "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                "ports": [{"containerPort": POD_PORT}],
                "readinessProbe": {"tcpSocket": {"port": POD_PORT}, "periodSeconds": 2},
            }]},
        }},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": PROBE, "namespace": "default"},
        "spec": {"type": "NodePort", "externalTrafficPolicy": "Local", "selector": labels,
                 "ports": [{"port": POD_PORT, "targetPort": POD_PORT, "nodePort": NODE_PORT}]},
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [daemonset, service]})


def read_busybox_image(listing: str) -> str | None:
    """The busybox image's reference in `k3s crictl images -o json`, or None."""
    try:
        images = json.loads(listing).get("images", [])
    except json.JSONDecodeError:
        return None
    tags = [tag for image in images for tag in image.get("repoTags") or [] if BUSYBOX in tag]
    return sorted(tags)[0] if tags else None


def read_probe_pods(listing: str) -> dict[str, ProbePod]:
    """The probe's pods by node, from `kubectl get pods -o json`."""
    try:
        items = json.loads(listing).get("items", [])
    except json.JSONDecodeError:
        return {}
    pods = {}
    for item in items:
        node = item.get("spec", {}).get("nodeName")
        status = item.get("status", {})
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
        if node:
            pods[node] = ProbePod(node, status.get("podIP"), ready)
    return pods


def fetch_from_master(ssh: Ssh, master: NodeResult, url: str) -> str | None:
    fetch = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    return ssh.text(master.host, ["python3", "-c", fetch])


def check_pods(master: NodeResult, workers: list[NodeResult], ssh: Ssh, deadline: float) -> Iterator[CheckResult]:
    """Run the probe on every node; from the master, reach each worker's pod at its pod address and at the
    worker's NodePort. The probe is deleted afterwards, whatever the outcome."""
    image = read_busybox_image(ssh.text(master.host, ["sudo", "k3s", "crictl", "images", "-o", "json"]) or "")
    if image is None:
        yield CheckResult("k3s pods", master.node.name, False,
                          f"no {BUSYBOX} image among the node's images: were the air-gap images imported?")
        return
    applied = ssh.run(master.host, ["sh", "-c", 'printf %s "$1" | sudo k3s kubectl apply -f -', "sh",
                                    probe_manifest(image)])
    try:
        if applied.returncode:
            yield CheckResult("k3s pods", master.node.name, False, "kubectl apply: "
                              + applied.stderr.decode(errors="replace").strip()[-200:])
            return
        wanted = {master.node.name, *(w.node.name for w in workers)}

        def read_pods() -> dict[str, ProbePod]:
            return read_probe_pods(ssh.text(master.host, [*KUBECTL, "get", "pods", "-l", f"app={PROBE}",
                                                          "-o", "json"]) or "")

        pods = poll(read_pods, lambda found: all(found.get(n, ProbePod(n, None, False)).ready for n in wanted),
                    min(deadline, time.monotonic() + 300), 5.0)
        for name in sorted(wanted):
            pod = pods.get(name)
            yield CheckResult("k3s pods", name, bool(pod and pod.ready),
                              f"{PROBE} pod {'ready' if pod and pod.ready else 'not ready'}"
                              f"{f' at {pod.address}' if pod and pod.address else ''}")
        yield from reach_pods(master, workers, pods, ssh)
    finally:
        ssh.run(master.host, [*KUBECTL, "delete", "--ignore-not-found", "--wait=false", "daemonset,service",
                              PROBE])


def reach_pods(master: NodeResult, workers: list[NodeResult], pods: dict[str, ProbePod],
               ssh: Ssh) -> Iterator[CheckResult]:
    """Each worker's pod answers the master with the worker's name, across the pod network and at the
    worker's NodePort."""
    for w in workers:
        pod = pods.get(w.node.name)
        if pod is None or pod.address is None:
            yield CheckResult("k3s pod network", w.node.name, False, "no pod address to reach")
        else:
            said = fetch_from_master(ssh, master, f"http://{pod.address}:{POD_PORT}/")
            yield CheckResult("k3s pod network", w.node.name, said == w.node.name,
                              f"the master fetched {pod.address}:{POD_PORT} and got {said!r}")
        said = fetch_from_master(ssh, master, f"http://{w.address}:{NODE_PORT}/")
        yield CheckResult("k3s NodePort", w.node.name, said == w.node.name,
                          f"the master fetched {w.address}:{NODE_PORT} and got {said!r}")
