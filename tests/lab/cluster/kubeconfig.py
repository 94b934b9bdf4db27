"""Kubeconfig files for the simulated cluster: one cluster, one user per bearer token."""

from __future__ import annotations

from pathlib import Path

import yaml


def render(server: str, user: str, token: str, namespace: str | None = None, context: str = "sim") -> dict:
    ctx: dict = {"cluster": "sim", "user": user}
    if namespace:
        ctx["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sim", "cluster": {"server": server}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": ctx}],
        "current-context": context,
        "preferences": {},
    }


def write(path: str | Path, server: str, user: str, token: str, namespace: str | None = None,
          context: str = "sim") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(render(server, user, token, namespace, context), sort_keys=False))
    path.chmod(0o600)
    return path
