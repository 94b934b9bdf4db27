"""Kubeconfig files for the simulated cluster: one cluster (with its CA), one user per bearer token."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml


def render(server: str, user: str, token: str, namespace: str | None = None, context: str = "sim",
           ca_pem: bytes | None = None) -> dict:
    ctx: dict = {"cluster": "sim", "user": user}
    cluster: dict = {"server": server}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    if namespace:
        ctx["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sim", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": ctx}],
        "current-context": context,
        "preferences": {},
    }


def write(path: str | Path, server: str, user: str, token: str, namespace: str | None = None,
          context: str = "sim", ca_pem: bytes | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(render(server, user, token, namespace, context, ca_pem), sort_keys=False))
    path.chmod(0o600)
    return path
