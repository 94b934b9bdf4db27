"""SimCluster: the simulated API server, its store, users, kubelet and fault switches together.

    with SimCluster() as cluster:                       # listens on 127.0.0.1:<ephemeral>
        cluster.write_kubeconfig(tmp / "kubeconfig")    # admin; user="dev-user" for RBAC tests
        cluster.store.create({"kind": "Pod", ...}, namespace="shop")

Namespaces default, kube-system, kube-public and kube-node-lease exist from the start, like
on a fresh cluster. ``stop()`` closes watches and streams and kills every container process.
"""

from __future__ import annotations

import threading
from pathlib import Path

from . import kubeconfig
from . import tls as tlsmod
from .api import Api
from .faults import Faults
from .kubelet import Kubelet
from .rbac import Users
from .server import ApiHTTPServer
from .store import Store

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class SimCluster:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: bool = True):
        self.host, self.port = host, port
        self.tls = tls and tlsmod.available()
        self._cert: tlsmod.ServingCert | None = None
        self.store = Store()
        self.faults = Faults()
        self.users = Users()
        self.kubelet = Kubelet(self.store, self.faults)
        self.api = Api(self.store, self.users, self.faults, self.kubelet)
        self._server: ApiHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for ns in SYSTEM_NAMESPACES:
            self.store.ensure_namespace(ns)
        # Like every cluster: cluster-admin, bound to system:masters.
        self.store.create({"kind": "ClusterRole", "metadata": {"name": "cluster-admin"}, "rules": [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]})
        self.store.create({"kind": "ClusterRoleBinding", "metadata": {"name": "cluster-admin"},
                           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                       "name": "cluster-admin"},
                           "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                                         "name": "system:masters"}]})

    def __enter__(self) -> SimCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("SimCluster is not started")
        host, port = self._server.server_address[:2]
        return f"{'https' if self._cert else 'http'}://{host}:{port}"

    @property
    def ca_pem(self) -> bytes | None:
        """The CA that signed the serving certificate (None over plain http)."""
        return self._cert.ca_pem if self._cert else None

    def start(self) -> SimCluster:
        if self.tls and self._cert is None:
            self._cert = tlsmod.make_serving_cert(self.host)
        self._server = ApiHTTPServer(self.api, self.host, self.port, self._cert.context() if self._cert else None)
        self.api.server_address = f"{self._server.server_address[0]}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name="sim-apiserver")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.api.stopping = True
        self.kubelet.stop()
        self.store.close_watches()
        if self._server is not None:
            self._server.shutdown()
            self._server.close_all()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._cert is not None:
            self._cert.cleanup()
            self._cert = None

    @property
    def requests(self) -> list[dict]:
        """Every request answered so far: {method, path, query, user, code}, oldest first."""
        return list(self._server.audit) if self._server else []

    # -- users and kubeconfig ------------------------------------------------------------------

    def token(self, user: str = "admin") -> str:
        return self.users.get(user).token

    def write_kubeconfig(self, path: str | Path, user: str = "admin", namespace: str | None = None,
                         context: str = "sim") -> Path:
        """A kubeconfig with a bearer token for ``user`` ("admin" may do everything)."""
        return kubeconfig.write(path, self.url, user, self.token(user), namespace, context, self.ca_pem)

    # -- conveniences for tests ----------------------------------------------------------------

    def set_psa(self, namespace: str, enforce: str | None = None, warn: str | None = None,
                audit: str | None = None) -> dict:
        """Label a namespace with Pod Security levels (created if missing)."""
        self.store.ensure_namespace(namespace)

        def label(obj: dict) -> dict:
            labels = obj["metadata"].setdefault("labels", {})
            for mode, level in (("enforce", enforce), ("warn", warn), ("audit", audit)):
                key = f"pod-security.kubernetes.io/{mode}"
                if level:
                    labels[key] = level
                else:
                    labels.pop(key, None)
            return obj

        return self.store.mutate("namespaces", namespace, None, label)

    def add_node(self, name: str, internal_ip: str = "10.123.0.1", kubelet: bool = True) -> dict:
        """A Ready node; ``kubelet=False`` makes pods/log and exec fail like a node whose kubelet is down."""
        if not kubelet:
            self.kubelet.nodes_without_kubelet.add(name)
        return self.store.create({
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "kubelet is posting ready status"}],
            },
        })
