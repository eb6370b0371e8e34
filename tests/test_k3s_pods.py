"""The k3s tier's pod probe: its manifest is valid for the recipe's k3s (the Kubernetes schemas of that
minor version, strictly: a mistyped field fails), and what it reads back from kubectl and crictl. The probe
itself runs only where the k3s binary is given (IMAGEBUILDER_K3S_ASSETS, docs/development.md)."""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest

from imagebuilder.boottest.k3s_pods import (
    NODE_PORT,
    POD_PORT,
    ProbePod,
    probe_manifest,
    read_busybox_image,
    read_probe_pods,
)
from imagebuilder.recipe.model import K3s

IMAGE = "docker.io/rancher/mirrored-library-busybox:1.36.1"


def kubernetes_version() -> str:
    """The Kubernetes minor version of the recipes' default k3s release (v1.31.4+k3s1: 1.31)."""
    found = re.match(r"v(\d+\.\d+)\.", K3s().version)
    assert found, K3s().version
    return found[1]


def test_the_probe_is_a_daemonset_and_a_nodeport_service_kubernetes_accepts() -> None:
    items = json.loads(probe_manifest(IMAGE))["items"]
    for item in items:
        kubernetes_validate.validate(item, kubernetes_version(), strict=True)
    daemonset, service = items
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE and container["imagePullPolicy"] == "Never"  # air-gapped: pulled from nowhere
    assert daemonset["spec"]["template"]["spec"]["tolerations"] == [{"operator": "Exists"}]
    assert service["spec"]["ports"] == [{"port": POD_PORT, "targetPort": POD_PORT, "nodePort": NODE_PORT}]
    # Each node answers its NodePort with its own pod: an answer names the node it came from.
    assert service["spec"]["externalTrafficPolicy"] == "Local"


def test_a_mistyped_field_is_refused_by_the_validation_the_probe_passes() -> None:
    daemonset = json.loads(probe_manifest(IMAGE))["items"][0]
    daemonset["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, kubernetes_version(), strict=True)


def test_the_busybox_image_is_found_among_the_nodes_images() -> None:
    listing = {"images": [{"id": "sha256:1", "repoTags": ["docker.io/rancher/mirrored-pause:3.6"]},
                          {"id": "sha256:2", "repoTags": [IMAGE]}, {"id": "sha256:3", "repoTags": None}]}
    assert read_busybox_image(json.dumps(listing)) == IMAGE
    assert read_busybox_image(json.dumps({"images": listing["images"][:1]})) is None
    assert read_busybox_image("") is None


def test_the_probes_pods_are_read_by_node() -> None:
    def pod(node: str, ip: str | None, ready: str) -> dict[str, object]:
        status: dict[str, object] = {"conditions": [{"type": "Ready", "status": ready}]}
        if ip:
            status["podIP"] = ip
        return {"spec": {"nodeName": node}, "status": status}

    listing = {"items": [pod("master", "10.42.0.5", "True"), pod("node1", "10.42.1.3", "False"),
                         pod("node2", None, "False"), {"spec": {}, "status": {}}]}
    assert read_probe_pods(json.dumps(listing)) == {
        "master": ProbePod("master", "10.42.0.5", True), "node1": ProbePod("node1", "10.42.1.3", False),
        "node2": ProbePod("node2", None, False)}
    assert read_probe_pods("not json") == {}
