"""A simulated Kubernetes cluster for tests: API server over real HTTP plus a process "kubelet"."""

from .cluster import SimCluster

__all__ = ["SimCluster"]
