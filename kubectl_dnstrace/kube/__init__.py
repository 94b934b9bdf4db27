"""Everything that talks to the Kubernetes API (see ``client.Kube``, the one door to it)."""
