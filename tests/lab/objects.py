"""Kubernetes objects for a planned scenario, as the plain dicts the API server stores.

Shapes follow what a real cluster returns (see the recorded fixtures): pods carry
``ownerReferences`` with ``controller: true``, ``spec.nodeName``, ``status.podIP(s)`` and
``hostIP(s)``, running ``containerStatuses``; owners chain Deployment → ReplicaSet → Pod and
CronJob → Job → Pod. The API server fills ``resourceVersion`` (and anything it owns).
"""

from __future__ import annotations

import time

from tests.lab.plan import DNS_NAMESPACE, NodePlan, OwnerPlan, Plan, PodPlan, stable_uid

API_VERSIONS = {"Deployment": "apps/v1", "ReplicaSet": "apps/v1", "DaemonSet": "apps/v1",
                "StatefulSet": "apps/v1", "Job": "batch/v1", "CronJob": "batch/v1"}
KUBE_DNS_UPSTREAM_IP = "10.96.0.11"


def timestamp(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def _meta(name: str, namespace: str | None, uid: str, labels: dict[str, str] | None = None,
          owner: OwnerPlan | None = None, created: float | None = None) -> dict:
    meta: dict = {"name": name, "uid": uid, "creationTimestamp": timestamp(created)}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    if owner is not None:
        meta["ownerReferences"] = [owner_reference(owner)]
    return meta


def owner_reference(owner: OwnerPlan) -> dict:
    return {"apiVersion": API_VERSIONS[owner.kind], "kind": owner.kind, "name": owner.name,
            "uid": owner.uid, "controller": True, "blockOwnerDeletion": True}


def node(plan: NodePlan) -> dict:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": _meta(plan.name, None, plan.uid, {
            "kubernetes.io/hostname": plan.name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64"}),
        "spec": {"podCIDR": plan.pod_cidr, "podCIDRs": [plan.pod_cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": plan.ip}, {"type": "Hostname", "address": plan.name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"kubeletVersion": "v1.32.0", "kubeProxyVersion": "v1.32.0",
                         "containerRuntimeVersion": "containerd://1.7.24", "operatingSystem": "linux",
                         "architecture": "amd64", "osImage": "Debian GNU/Linux 12 (bookworm)",
                         "kernelVersion": "6.1.0-28-amd64", "bootID": plan.uid, "machineID": plan.uid.replace("-", ""),
                         "systemUUID": plan.uid},
        },
    }


def namespace(name: str, labels: dict[str, str] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": _meta(name, None, stable_uid("Namespace", name),
                              {"kubernetes.io/metadata.name": name, **(labels or {})}),
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def _template(owner: OwnerPlan, pod_spec: dict) -> dict:
    return {"metadata": {"labels": dict(owner.template_labels)}, "spec": pod_spec}


def owner_object(owner: OwnerPlan, pods: list[PodPlan]) -> dict:
    """The workload object; ``pods`` are the scenario's pods it owns (for status counts)."""
    mine = [p for p in pods if p.owner is owner]
    example = mine[0] if mine else None
    pod_spec = {"containers": [{"name": example.container if example else "app",
                                "image": example.image if example else "registry.example.com/app:1.0"}]}
    if example and example.host_network:
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    obj: dict = {"apiVersion": API_VERSIONS[owner.kind], "kind": owner.kind,
                 "metadata": _meta(owner.name, owner.namespace, owner.uid, owner.labels, owner.parent)}
    selector = {"matchLabels": dict(owner.selector)}
    if owner.kind == "Deployment":
        obj["spec"] = {"replicas": max(1, _count(owner, pods)), "selector": selector,
                       "template": _template(owner, pod_spec), "strategy": {"type": "RollingUpdate"}}
        obj["status"] = {"replicas": _count(owner, pods), "readyReplicas": _count(owner, pods)}
        obj["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
    elif owner.kind == "ReplicaSet":
        obj["spec"] = {"replicas": max(1, len(mine)), "selector": selector, "template": _template(owner, pod_spec)}
        obj["status"] = {"replicas": len(mine), "readyReplicas": len(mine)}
        obj["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
    elif owner.kind == "DaemonSet":
        obj["spec"] = {"selector": selector, "template": _template(owner, pod_spec),
                       "updateStrategy": {"type": "RollingUpdate"}}
        obj["status"] = {"currentNumberScheduled": len(mine), "desiredNumberScheduled": len(mine),
                         "numberMisscheduled": 0, "numberReady": len(mine), "numberAvailable": len(mine),
                         "updatedNumberScheduled": len(mine), "observedGeneration": 1}
    elif owner.kind == "StatefulSet":
        obj["spec"] = {"replicas": max(1, len(mine)), "selector": selector, "serviceName": owner.name,
                       "template": _template(owner, pod_spec)}
        obj["status"] = {"replicas": len(mine), "readyReplicas": len(mine)}
    elif owner.kind == "Job":
        obj["spec"] = {"selector": selector, "backoffLimit": 6, "completions": 1, "parallelism": 1,
                       "template": _template(owner, {**pod_spec, "restartPolicy": "Never"})}
        obj["status"] = {"active": len(mine), "startTime": timestamp()}
    elif owner.kind == "CronJob":
        obj["spec"] = {"schedule": "*/5 * * * *", "concurrencyPolicy": "Allow", "suspend": False,
                       "jobTemplate": {"spec": {"template": {"metadata": {"labels": dict(owner.template_labels)},
                                                             "spec": {**pod_spec, "restartPolicy": "Never"}}}}}
        obj["status"] = {}
    return obj


def _count(owner: OwnerPlan, pods: list[PodPlan]) -> int:
    return len([p for p in pods if p.owner is owner or (p.owner is not None and p.owner.parent is owner)])


def pod(plan: PodPlan, node: NodePlan, phase: str = "Running", created: float | None = None) -> dict:
    """A pod as the kubelet reports it. ``Pending`` has no IP yet (the CNI has not run)."""
    container: dict = {"name": plan.container, "image": plan.image, "imagePullPolicy": "IfNotPresent",
                       "resources": {}, "terminationMessagePath": "/dev/termination-log",
                       "terminationMessagePolicy": "File"}
    if plan.role == "coredns":
        container["args"] = ["-conf", "/etc/coredns/Corefile"]
        container["ports"] = [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                              {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}]
    spec: dict = {
        "containers": [container], "nodeName": node.name, "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst", "serviceAccountName": "default", "serviceAccount": "default",
        "schedulerName": "default-scheduler", "securityContext": {}, "terminationGracePeriodSeconds": 30,
        "enableServiceLinks": True, "priority": 0,
    }
    if plan.owner is not None and plan.owner.kind == "Job":
        spec["restartPolicy"] = "Never"
    if plan.role in ("coredns", "node-local-dns"):
        spec["priorityClassName"] = "system-cluster-critical" if plan.role == "coredns" else "system-node-critical"
        spec["dnsPolicy"] = "Default"
        spec["serviceAccountName"] = spec["serviceAccount"] = "coredns" if plan.role == "coredns" else "node-local-dns"
    if plan.host_network:
        spec["hostNetwork"] = True
        if plan.role == "client":
            spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if plan.owner is not None and plan.owner.kind == "StatefulSet":
        spec["hostname"] = plan.name
        spec["subdomain"] = plan.owner.name
    meta = _meta(plan.name, plan.namespace, plan.uid, plan.labels, plan.owner, created)
    if plan.role == "client" and plan.owner is not None and plan.owner.kind in ("ReplicaSet", "DaemonSet", "Job"):
        meta["generateName"] = plan.name[: len(plan.name) - 5]
    status: dict = {"phase": phase, "qosClass": "BestEffort", "hostIP": node.ip,
                    "hostIPs": [{"ip": node.ip}], "startTime": timestamp(created)}
    if phase == "Pending":
        status["conditions"] = [{"type": "PodScheduled", "status": "True"}]
        status["containerStatuses"] = [{
            "name": plan.container, "image": plan.image, "imageID": "", "ready": False, "restartCount": 0,
            "started": False, "state": {"waiting": {"reason": "ContainerCreating"}}}]
    else:
        ready = "True" if phase == "Running" else "False"
        status["conditions"] = [{"type": t, "status": ready if t in ("Ready", "ContainersReady") else "True"}
                                for t in ("PodReadyToStartContainers", "Initialized", "Ready",
                                          "ContainersReady", "PodScheduled")]
        status["podIP"] = plan.ip
        status["podIPs"] = [{"ip": plan.ip}]
        if phase == "Running":
            state = {"running": {"startedAt": timestamp()}}
        else:
            state = {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1,
                                    "reason": "Completed" if phase == "Succeeded" else "Error",
                                    "startedAt": timestamp(created), "finishedAt": timestamp()}}
        status["containerStatuses"] = [{
            "name": plan.container, "image": plan.image,
            "imageID": f"{plan.image.split(':')[0]}@sha256:{plan.uid.replace('-', '')[:32] * 2}",
            "containerID": f"containerd://{plan.uid.replace('-', '')}{plan.uid.replace('-', '')[:32]}",
            "ready": phase == "Running", "restartCount": 0, "started": phase == "Running", "state": state}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def service(name: str, namespace: str, cluster_ip: str, selector: dict[str, str], ports: list[dict],
            labels: dict[str, str] | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(name, namespace, stable_uid("Service", namespace, name), labels),
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                     "selector": dict(selector), "ports": ports, "ipFamilies": ["IPv4"],
                     "sessionAffinity": "None"},
            "status": {"loadBalancer": {}}}


def endpoints(name: str, namespace: str, ready: list[PodPlan], ports: list[dict],
              labels: dict[str, str] | None = None) -> dict:
    subsets = []
    if ready:
        subsets = [{"addresses": [{"ip": p.ip, "nodeName": p.node, "targetRef": {
            "kind": "Pod", "namespace": p.namespace, "name": p.name, "uid": p.uid}} for p in ready],
            "ports": [{k: v for k, v in port.items() if k in ("name", "port", "protocol")} for port in ports]}]
    return {"apiVersion": "v1", "kind": "Endpoints",
            "metadata": _meta(name, namespace, stable_uid("Endpoints", namespace, name), labels),
            "subsets": subsets}


DNS_PORTS = [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]


def dns_services(plan: Plan) -> list[dict]:
    """kube-dns (and with NodeLocal DNSCache its ``kube-dns-upstream`` twin) plus Endpoints.

    node-local-dns's manifest labels kube-dns-upstream ``k8s-app: kube-dns`` too, so a
    ``k8s-app=kube-dns`` Service lookup finds two Services — the trap the plugin must avoid.
    """
    labels = {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"}
    selector = {"k8s-app": "kube-dns"}
    objs = [service("kube-dns", DNS_NAMESPACE, plan.scenario.dns.service_ip, selector, DNS_PORTS, labels),
            endpoints("kube-dns", DNS_NAMESPACE, plan.dns_pods, DNS_PORTS, labels)]
    if plan.scenario.node_local.enabled:
        up_labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "KubeDNSUpstream"}
        objs += [service("kube-dns-upstream", DNS_NAMESPACE, KUBE_DNS_UPSTREAM_IP, selector, DNS_PORTS, up_labels),
                 endpoints("kube-dns-upstream", DNS_NAMESPACE, plan.dns_pods, DNS_PORTS, up_labels)]
    return objs
