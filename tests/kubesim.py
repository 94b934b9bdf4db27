"""Small builders for tests that drive the simulated cluster directly (no network lab).

Objects are plain dicts shaped like a real API server's (see tests/fixtures/k8s-api); the
simulated server fills in uid, resourceVersion and defaults on create.
"""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

from kubectl_dnstrace.kube.client import Kube
from kubectl_dnstrace.model import ClusterOptions
from tests.lab.cluster import SimCluster

PYTHON_IMAGE = "docker.io/library/python:3.13-alpine"


def running_pod(cluster: SimCluster, namespace: str, name: str, labels: dict | None = None, *,
                phase: str = "Running", owner: dict | None = None, host_network: bool = False,
                node: str = "node-a", ip: str = "10.244.0.10") -> dict:
    cluster.store.ensure_namespace(namespace)
    meta: dict = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if owner:
        meta["ownerReferences"] = [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True,
        }]
    return cluster.store.create({
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node, "hostNetwork": host_network,
                 "containers": [{"name": "app", "image": "registry.example/app:1"}]},
        "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]},
    })


def workload(cluster: SimCluster, kind: str, namespace: str, name: str, labels: dict,
             owner: dict | None = None) -> dict:
    """A Deployment/ReplicaSet/DaemonSet/StatefulSet/Job selecting ``labels``."""
    cluster.store.ensure_namespace(namespace)
    meta: dict = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                    "name": owner["metadata"]["name"],
                                    "uid": owner["metadata"]["uid"], "controller": True}]
    return cluster.store.create({
        "kind": kind,
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)},
                         "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}},
        },
    })


def service(cluster: SimCluster, namespace: str, name: str, selector: dict,
            labels: dict | None = None) -> dict:
    cluster.store.ensure_namespace(namespace)
    return cluster.store.create({
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {"selector": dict(selector), "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]},
    })


def connect(cluster: SimCluster, tmp_path: Path, user: str = "admin",
            namespace: str | None = None) -> Kube:
    kc = cluster.write_kubeconfig(tmp_path / f"kubeconfig-{user}", user=user, namespace=namespace)
    return Kube.connect(ClusterOptions(kubeconfig=str(kc)))


def emitter_command(records: list[dict], delay: float = 0.05, exit_code: int = 0) -> list[str]:
    """A container command that writes these protocol records, one per line, then exits.

    It stands in for the agent where a test is about the kubectl side's handling of the
    stream (resume, loss, error records), not about capture.
    """
    import json

    lines = [json.dumps(r, separators=(",", ":")) for r in records]
    program = textwrap.dedent(f"""
        import sys, time
        for line in {lines!r}:
            print(line, flush=True)
            time.sleep({delay})
        sys.exit({exit_code})
    """)
    return ["python3", "-c", program]


@contextlib.contextmanager
def sim_cluster():
    cluster = SimCluster().start()
    try:
        cluster.add_node("node-a")
        yield cluster
    finally:
        cluster.stop()
