"""A simulated Kubernetes cluster for tests: API server over real HTTPS plus a process "kubelet".

    cluster = SimCluster().start()            # https://127.0.0.1:<ephemeral port>, own CA
    cluster.write_kubeconfig(path, user="admin", namespace=None)   # bearer token per user
    cluster.store.create(obj) / .get / .list / .update / .mutate / .delete / .ensure_namespace
    cluster.add_node(name, internal_ip=..., kubelet=True); cluster.set_psa(ns, enforce=, warn=)
    cluster.kubelet.register_pod_netns(namespace, pod, netns); .provide_image(image, kind)
    cluster.faults.deny(...), .fail_image(...), .slow_start(...), .break_log_after(...),
                   .disable_ephemeral()
    cluster.stop()                            # closes streams, kills every container process

Modules: ``server`` (HTTP), ``api`` (request handling in the real order), ``store`` (objects,
resourceVersions, watches), ``resources`` (discovery), ``selectors``, ``patch``,
``validation``, ``psa`` (Pod Security), ``rbac``, ``status`` (Status bodies), ``kubelet``
(container lifecycle) with ``podlog``/``podexec``/``wsexec``/``security``, ``faults``,
``kubeconfig``/``tls``, ``protobuf`` (kubectl's SelfSubjectAccessReview).
"""

from .cluster import SimCluster

__all__ = ["SimCluster"]
