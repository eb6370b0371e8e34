"""The k3s configuration of each role (/etc/rancher/k3s/config.yaml), as data."""

from __future__ import annotations

from typing import Any

from imagebuilder.recipe.model import Recipe
from imagebuilder.roles.secrets import K3sSecrets


def api_names(recipe: Recipe) -> list[str]:
    """The names and addresses kubectl may reach the API server by: its certificate's SANs (k3s's tls-san)."""
    name = recipe.master.hostname
    names = [name, f"{name}.{recipe.cluster.domain}", str(recipe.network.master_ip)]  # filled in at load
    return names + [n for n in recipe.k3s.tls_san if n not in names]


def k3s_config(recipe: Recipe, role: str, secrets: K3sSecrets) -> dict[str, Any]:
    """The master gets the server token and the agents' one; a worker only its CA-pinned agent token."""
    net = recipe.network
    if role == "master":
        config: dict[str, Any] = {
            "token": secrets.server_token, "agent-token": secrets.agent_token,
            "node-ip": net.master_ip, "flannel-iface": net.lan_interface, "tls-san": api_names(recipe),
            "write-kubeconfig-mode": "0600",
        }
        config.update(recipe.k3s.extra_config)
        return config
    # node-ip comes from the lease at boot (a drop-in written before the agent starts).
    return {"server": f"https://{net.master_ip}:6443", "token": secrets.worker_token,
            "flannel-iface": net.lan_interface}
