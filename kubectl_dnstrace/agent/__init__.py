"""The capture agent: runs inside an ephemeral debug container, captures port-53 traffic in
the pod's network namespace and writes NDJSON records (see docs/protocol.md) on stdout.

Stdlib only, python3 >= 3.8; importing this package must stay side-effect free and instant.
Entry point: ``python -m kubectl_dnstrace.agent``.
"""
