"""Parsing of option values the user types: durations and domain files.

Kept apart from ``cli`` so the same rules serve the trace and analyze commands and can be
table-tested without Typer.
"""

from __future__ import annotations

import re

from kubectl_dnstrace.agent.filters import DnsFilter, name_fault
from kubectl_dnstrace.errors import UsageError
from kubectl_dnstrace.model import TraceRequest

PULL_POLICIES = ("Always", "IfNotPresent", "Never")
# An image reference as the runtime parses it (distribution/reference): [host[:port]/]path
# [:tag][@digest], lower-case path components. The API accepts any non-empty string and the
# kubelet reports InvalidImageName only after the container was added for good.
_IMAGE = re.compile(
    r"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?!s))?\s*(?:(\d+(?:\.\d+)?)s)?\s*(?:(\d+(?:\.\d+)?)ms)?\s*$")


def parse_duration(text: str, flag: str = "duration") -> float:
    """Seconds from kubectl-style durations: ``90``, ``30s``, ``5m``, ``1h30m``, ``500ms``."""
    text = str(text).strip()
    try:
        value = float(text)
    except ValueError:
        match = _DURATION.match(text)
        if not text or not match or not any(match.groups()):
            raise UsageError(
                f"{flag}: {text!r} is not a duration",
                "write it like 30s, 5m, 1h30m or a number of seconds",
            ) from None
        h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
        value = h * 3600 + m * 60 + s + ms / 1000
    if value <= 0:
        raise UsageError(f"{flag}: {text!r} must be longer than zero", "for example 30s or 5m")
    return value


def check_names(names: list[str], where: str) -> None:
    """UsageError for the first of ``names`` that can be no DNS name (``name_fault``, beside
    the matcher's own normalisation); ``where`` says where they came from ("--domain",
    "--domain-file FILE line 3"). Such a filter would match nothing, and the run would end
    "No DNS queries matched." as if the name had not been asked — the worst answer an
    incident gives."""
    for name in names:
        fault = name_fault(name)
        if fault:
            shown = name if len(name) <= 60 else name[:57] + "..."
            raise UsageError(f"{where}: {shown!r} is not a DNS name: {fault}",
                             "write names like evil.example.com (a trailing dot is fine)")


def load_domain_file(path: str) -> list[str]:
    """Names from a file: one per line, ``#`` starts a comment, blank lines ignored; a line
    that can be no DNS name is a UsageError naming the file and the line."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise UsageError(
            f"--domain-file: cannot read {path}: {exc.strerror or exc}",
            "give a readable text file with one name per line",
        ) from None
    except UnicodeDecodeError:
        raise UsageError(f"--domain-file: {path} is not UTF-8 text", "one name per line") from None
    names = []
    for number, line in enumerate(lines, 1):
        name = line.split("#", 1)[0].strip().rstrip(".")
        if name:
            check_names([name], f"--domain-file: {path} line {number}")
            names.append(name)
    return names


def check_codes(qtypes: list[str], rcodes: list[str]) -> None:
    """UsageError for a query type or rcode the agent would not know (the agent's own
    parser decides, so the two can never disagree)."""
    try:
        DnsFilter((), qtypes, ())
    except ValueError as exc:
        raise UsageError(f"--qtype: {exc}", "use a type name like A, AAAA, TXT, MX, or "
                         "its number (28 for AAAA)") from None
    try:
        DnsFilter((), (), rcodes)
    except ValueError as exc:
        raise UsageError(f"--rcode: {exc}", "use an rcode name like NOERROR, NXDOMAIN, "
                         "SERVFAIL, REFUSED, or its number") from None


def check_image(image: str | None) -> None:
    if image is None:
        return
    if len(image) > 4096 or not _IMAGE.match(image):
        raise UsageError(f"--image: {image!r} is not an image reference",
                         "write it like registry.example.com/python:3.13-alpine")


def check_trace_request(req: TraceRequest) -> None:
    """Every flag value of a trace, before the first API request: a bad value found after
    the capture container was added would leave it in the pod for good."""
    if req.duration <= 0:
        raise UsageError("--duration must be positive", "for example --duration 30s")
    if req.wait_timeout <= 0:
        raise UsageError("--timeout must be positive", "for example --timeout 60s")
    if req.image_pull_policy and req.image_pull_policy not in PULL_POLICIES:
        raise UsageError(f"unknown --image-pull-policy {req.image_pull_policy!r}",
                         f"use one of: {', '.join(PULL_POLICIES)}")
    check_image(req.image)
    check_names(req.filters.domains, "--domain")
    check_codes(req.filters.qtypes, req.filters.rcodes)


def load_resolver_file(path: str) -> list[str]:
    """``--doh-resolvers FILE``: IP addresses, one per line, ``#`` comments; a line that is
    no address is a UsageError naming the file and the line."""
    import ipaddress

    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--doh-resolvers: cannot read {path}: {exc.strerror or exc}",
                         "give a text file with one IP address per line") from None
    except UnicodeDecodeError:
        raise UsageError(f"--doh-resolvers: {path} is not UTF-8 text",
                         "one IP address per line") from None
    out = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            out.append(str(ipaddress.ip_address(text)))
        except ValueError:
            raise UsageError(f"--doh-resolvers: {path} line {number}: {text!r} is not an IP "
                             "address", "one IPv4 or IPv6 address per line") from None
    if not out:
        raise UsageError(f"--doh-resolvers: {path} lists no address",
                         "one IPv4 or IPv6 address per line")
    return out
