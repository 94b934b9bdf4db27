"""A simulated CoreDNS Deployment: ConfigMap-mounted Corefile, ``reload``, ``log``, pod logs.

What it mirrors, observed on the real CoreDNS 1.13 of ../shared/realk8s (see README there):
- the kubelet refreshes a mounted ConfigMap some time after the edit (13-67 s there;
  ``refresh`` seconds here), and ``reload`` notices the new file on its next check
  (``reload_check``); a Corefile without ``reload`` is never reloaded;
- a reload logs ``[INFO] Reloading``, ``[INFO] plugin/reload: Running configuration SHA512 =
  ...`` (a hash of the parsed tokens: comments do not change it) and ``[INFO] Reloading
  complete``; a Corefile CoreDNS cannot load logs ``[ERROR]
  Restart failed: ...`` and ``[ERROR] plugin/reload: Corefile changed but reload failed:
  ...`` and the old configuration keeps serving;
- ``log [NAMES...]`` writes one line per query under those names, in the default format,
  to the pod's log (no timestamp of its own: the kubelet adds one).

The Corefile check is deliberately not the plugin's parser: it knows the directives this
CoreDNS build has and checks braces, which is what the real CoreDNS refuses on.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading

PLUGINS = {"bind", "bufsize", "cache", "debug", "dns64", "dnstap", "errors", "forward",
           "health", "hosts", "loadbalance", "log", "loop", "metadata", "pprof", "prometheus",
           "reload", "rewrite", "template", "timeouts", "trace", "whoami", "kubernetes", "ready"}

STARTUP = [".:53", "CoreDNS-1.13.2", "linux/amd64, go1.25.12, "]


def _logs_for(corefile: str, name: str) -> bool:
    """Does the ``.:53`` block's ``log`` cover ``name`` (first block only, like kubeadm's)?"""
    depth = 0
    for raw in corefile.splitlines():
        line = raw.split("#", 1)[0].strip()
        if depth == 1:
            words = line.split()
            if words and words[0] == "log":
                zones = [w for w in words[1:] if "{" not in w]
                if not zones:
                    return True
                n = name.lower().rstrip(".") + "."
                for z in zones:
                    z = z.lower().rstrip(".") + "."
                    if z == "." or n == z or n.endswith("." + z):
                        return True
        depth += line.count("{") - line.count("}")
        if depth == 0 and line.endswith("}"):
            return False
    return False


def check(corefile: str) -> str:
    """'' when CoreDNS would load it, else its error text."""
    depth = 0
    for number, raw in enumerate(corefile.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if depth == 1 and line and line != "}":
            word = line.split()[0]
            if word not in PLUGINS:
                return (f"/etc/coredns/Corefile:{number} - Error during parsing: Unknown "
                        f"directive '{word}'")
        depth += line.count("{") - line.count("}")
        if depth < 0:
            return f"/etc/coredns/Corefile:{number} - Error during parsing: Unexpected '}}'"
    return "" if depth == 0 else "/etc/coredns/Corefile - Error during parsing: unclosed block"


class SimCoreDNS:
    """CoreDNS pods in the simulated cluster, fed their Corefile from a ConfigMap."""

    def __init__(self, cluster, corefile: str, *, namespace: str = "kube-system",
                 name: str = "coredns", replicas: int = 2, refresh: tuple[float, float] | None = (0.5, 1.5),
                 reload_check: float = 0.5, ips: list[str] | None = None,
                 labels: dict | None = None) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.refresh = refresh
        self.reload_check = reload_check
        self.labels = labels or {"k8s-app": "kube-dns"}
        self.pods: list[str] = []
        self.loaded: dict[str, str] = {}  # pod -> the Corefile it serves
        self.mounted: dict[str, str] = {}  # pod -> the file the kubelet last wrote
        self.refused: dict[str, str] = {}  # pod -> the Corefile kept after a refused reload
        self._stop = threading.Event()
        self._lock = threading.Lock()
        store = cluster.store
        store.ensure_namespace(namespace)
        store.create({"kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
                      "data": {"Corefile": corefile}})
        for i in range(replicas):
            pod = f"{name}-5d78c9869d-{'abcdefgh'[i]}{i}x7q"
            ip = (ips or [])[i] if ips and i < len(ips) else f"10.244.0.{3 + i}"
            self._create_pod(pod, ip)
            self.pods.append(pod)
            self.loaded[pod] = self.mounted[pod] = corefile
            for line in STARTUP:
                self._log(pod, line)
            self._log(pod, f"[INFO] plugin/reload: Running configuration SHA512 = {_sha(corefile)}")
        store.add_listener(self._on_event)
        self._threads = [threading.Thread(target=self._reload_loop, args=(p,), daemon=True)
                         for p in self.pods]
        for t in self._threads:
            t.start()

    def _create_pod(self, pod: str, ip: str) -> None:
        self.cluster.store.create({
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": self.namespace, "labels": dict(self.labels)},
            "spec": {"nodeName": "node-a", "containers": [{"name": "coredns",
                                                           "image": "registry.k8s.io/coredns/coredns:v1.13.2",
                                                           "volumeMounts": [{"name": "config-volume",
                                                                             "mountPath": "/etc/coredns"}]}],
                     "volumes": [{"name": "config-volume", "configMap": {
                         "name": self.name, "items": [{"key": "Corefile", "path": "Corefile"}]}}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "containerStatuses": [{"name": "coredns", "ready": True, "restartCount": 0,
                                              "state": {"running": {"startedAt": "2026-12-07T02:00:00Z"}}}]},
        })

    def stop(self) -> None:
        self._stop.set()

    def _log(self, pod: str, line: str) -> None:
        self.cluster.kubelet.append_log(self.namespace, pod, "coredns", line)

    def _on_event(self, etype: str, res, old, new) -> None:
        if res.kind != "ConfigMap" or etype == "DELETED":
            return
        meta = new.get("metadata") or {}
        if meta.get("namespace") != self.namespace or meta.get("name") != self.name:
            return
        text = (new.get("data") or {}).get("Corefile", "")
        if self.refresh is None:
            return  # the test plays the kubelet: mount()
        for pod in self.pods:  # the kubelet writes the file later, per pod
            delay = random.uniform(*self.refresh)
            timer = threading.Timer(delay, self.mount, args=(pod, text))
            timer.daemon = True
            timer.start()

    def mount(self, pod: str, text: str) -> None:
        """The kubelet writes ``text`` into the pod's mounted Corefile."""
        with self._lock:
            self.mounted[pod] = text

    def _reload_loop(self, pod: str) -> None:
        while not self._stop.wait(self.reload_check):
            with self._lock:
                mounted, loaded = self.mounted[pod], self.loaded[pod]
            if mounted == loaded or "reload" not in _directives(loaded):
                continue
            self._log(pod, "[INFO] Reloading")
            why = check(mounted)
            if why:
                self._log(pod, f"[ERROR] Restart failed: {why}")
                self._log(pod, f"[ERROR] plugin/reload: Corefile changed but reload failed: {why}")
                with self._lock:  # tried once per change, like the real plugin's hash check
                    self.refused.setdefault(pod, loaded)
                    self.loaded[pod] = mounted
                continue
            self._log(pod, f"[INFO] plugin/reload: Running configuration SHA512 = {_sha(mounted)}")
            self._log(pod, "[INFO] Reloading complete")
            with self._lock:
                self.loaded[pod] = mounted
                self.refused.pop(pod, None)

    def serving(self, pod: str) -> str:
        """The Corefile the pod answers with (the old one after a refused reload)."""
        with self._lock:
            return self.refused.get(pod, self.loaded[pod])

    def query(self, pod: str, client: str, name: str, qtype: str = "A", *, port: int = 40000,
              ident: int = 4242, proto: str = "udp", rcode: str = "NOERROR") -> bool:
        """One query answered by ``pod``: logged when its Corefile logs the name."""
        if not _logs_for(self.serving(pod), name):
            return False
        fq = name.rstrip(".") + "."
        self._log(pod, f'[INFO] {client}:{port} - {ident} "{qtype} IN {fq} {proto} 35 false 512" '
                       f'{rcode} qr,aa,rd,ra 68 0.000567379s')
        return True


def _directives(corefile: str) -> set[str]:
    out = set()
    for raw in corefile.splitlines():
        words = raw.split("#", 1)[0].split()
        if words:
            out.add(words[0])
    return out


def _sha(text: str) -> str:
    """Like the real reload plugin: a hash of the parsed tokens (with their line numbers),
    so comments and spacing do not change it (the real one hashes Caddy's JSON of them)."""
    tokens = [(n, raw.split("#", 1)[0].split()) for n, raw in enumerate(text.splitlines(), 1)]
    return hashlib.sha512(json.dumps([t for t in tokens if t[1]]).encode()).hexdigest()


__all__ = ["SimCoreDNS", "check"]
