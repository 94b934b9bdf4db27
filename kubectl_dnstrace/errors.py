"""Exit codes and the exception tree: raised deep down, translated once in ``cli.main``.

Every exception carries a human message that names the cause and a hint that names the
fix; ``cli.main`` prints both and exits with the exception's code, never a traceback.
The codes are documented in README.md ("Exit codes"); keep the two in step.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    MATCHED = 0  # like grep: something matched the filters
    NO_MATCH = 1  # the run was clean, nothing matched
    USAGE = 2  # bad flags, wrong target syntax, unreadable --domain-file
    CLUSTER_UNREACHABLE = 3  # no kubeconfig, API unreachable, not a Kubernetes API server
    NOT_FOUND = 4  # unknown pod, workload or namespace; no running pods behind a target
    FORBIDDEN = 5  # RBAC denied a permission the run needs
    POD_SECURITY = 6  # Pod Security Admission forbids the capture container
    UNSUPPORTED = 7  # the cluster has no ephemeral containers
    CONTAINER_FAILED = 8  # image pull failure, container could not start, timeout waiting
    AGENT_FAILED = 9  # the agent reported an error (e.g. no CAP_NET_RAW)
    BAD_INPUT = 10  # a capture file that cannot be read
    STREAM_LOST = 11  # events were lost (log stream gap that could not be recovered)
    POD_TOO_LARGE = 12  # the pod object is too close to etcd's size limit for another container
    API_BUSY = 13  # the API server kept answering 429 Too Many Requests
    ALREADY_TRACED = 14  # another trace's agent runs in the pod (--force runs both)
    COVERAGE_GAP = 15  # a traced pod went away and no replacement of its workload was traced
    COREFILE = 16  # --via log: the Corefile cannot be changed safely (no reload, unreadable, refused)
    INTERNAL = 70  # a bug: please report it
    INTERRUPTED = 130  # Ctrl-C before the trace started


class DnstraceError(Exception):
    """Base of every error the user sees as a message rather than a traceback."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class UsageError(DnstraceError):
    exit_code = ExitCode.USAGE


class ClusterUnreachable(DnstraceError):
    exit_code = ExitCode.CLUSTER_UNREACHABLE


class NotFound(DnstraceError):
    exit_code = ExitCode.NOT_FOUND


class Forbidden(DnstraceError):
    exit_code = ExitCode.FORBIDDEN


class PodSecurityDenied(DnstraceError):
    exit_code = ExitCode.POD_SECURITY


class Unsupported(DnstraceError):
    exit_code = ExitCode.UNSUPPORTED


class ContainerFailed(DnstraceError):
    exit_code = ExitCode.CONTAINER_FAILED


class AgentFailed(DnstraceError):
    exit_code = ExitCode.AGENT_FAILED


class BadInput(DnstraceError):
    exit_code = ExitCode.BAD_INPUT


class StreamLost(DnstraceError):
    exit_code = ExitCode.STREAM_LOST


class PodTooLarge(DnstraceError):
    exit_code = ExitCode.POD_TOO_LARGE


class ApiBusy(DnstraceError):
    exit_code = ExitCode.API_BUSY


class AlreadyTraced(DnstraceError):
    exit_code = ExitCode.ALREADY_TRACED


class CorefileRefused(DnstraceError):
    """``--via log``: the Corefile cannot be edited safely, or CoreDNS refused the edit."""

    exit_code = ExitCode.COREFILE


class Conflict(DnstraceError):
    """A write lost a race (409: the object changed since it was read); callers re-read."""

    exit_code = ExitCode.INTERNAL
