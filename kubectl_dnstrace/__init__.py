"""kubectl-dnstrace: find the pod behind a DNS query, with the Kubernetes API alone.

This module must stay import-free: the capture agent imports the package on its way to
``kubectl_dnstrace.agent`` inside images that have nothing but a bare python3.
"""

__version__ = "0.1.0"
