"""What the overlay templates of a role may use: the recipe, and the structured files built for the role."""

from __future__ import annotations

from typing import Any

from imagebuilder.layers.render import systemd_escape
from imagebuilder.recipe.model import Recipe
from imagebuilder.roles.cloudinit import meta_data, network_config, user_data
from imagebuilder.roles.k3s import k3s_config
from imagebuilder.roles.secrets import K3sSecrets
from imagebuilder.roles.table import ROLES


def cluster_table(recipe: Recipe, boot_mount: str) -> dict[str, Any]:
    """What a worker's first boot needs to name itself (read by set_hostname.py)."""
    return {
        "lan_interface": recipe.network.lan_interface,
        "boot_mount": boot_mount,
        "domain": recipe.cluster.domain,
        "unknown_pattern": recipe.unknown_workers.hostname,
        "workers": [{"mac": w.mac, "hostname": w.hostname, "ip": w.ip} for w in recipe.workers],
    }


def template_variables(recipe: Recipe, role: str, *, secrets: K3sSecrets, boot_mount: str,
                       first_boot_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything the overlay templates of `role` may use."""
    variables: dict[str, Any] = {"recipe": recipe, "role": role, "boot_mount": boot_mount,
                                 "boot_mount_unit": systemd_escape(boot_mount, path=True) + ".mount"}
    if role in ROLES:
        ud = user_data(recipe, role, first_boot_packages)
        nc = network_config(recipe, role)
        variables.update(
            user_data=ud, network_config=nc, meta_data=meta_data(recipe, role, {"u": ud, "n": nc}),
            k3s_config=k3s_config(recipe, role, secrets), cluster_table=cluster_table(recipe, boot_mount),
        )
    if role == "master":
        # The server and client CAs k3s takes as its own at first start (their keys only ever in the master
        # image): the kubeconfig the build writes is signed by that client CA.
        variables.update(k3s_ca_cert=secrets.ca_cert, k3s_ca_key=secrets.ca_key,
                         k3s_client_ca_cert=secrets.client_ca_cert, k3s_client_ca_key=secrets.client_ca_key)
    return variables
