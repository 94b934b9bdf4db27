"""The command line: parse kubectl-style flags, build a request, run it, set the exit code.

This file reads like a table of contents. It makes no API call and prints nothing of its
own but errors: the work lives in ``trace`` (live capture), ``analyze`` (capture files) and
``rbac`` (permissions). Errors are raised deep down as ``DnstraceError`` and translated to
a message and an exit code once, in ``main``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from kubectl_dnstrace import __version__
from kubectl_dnstrace.errors import DnstraceError, ExitCode, UsageError
from kubectl_dnstrace.model import (
    AnalyzeRequest,
    ClusterOptions,
    Filters,
    OutputOptions,
    TraceRequest,
)
from kubectl_dnstrace.options import (
    check_codes,
    check_names,
    load_domain_file,
    load_resolver_file,
    parse_duration,
)

OUTPUT_FORMATS = ("table", "wide", "json", "ndjson")

# Click re-wraps help paragraphs; a paragraph that starts with "\b" is printed as written.
EPILOG = """\
\b
Examples:
  # Who asks the cluster DNS for evil.example.com? (CoreDNS, plus node-local-dns)
  kubectl dnstrace coredns --domain evil.example.com

\b
  # What does this pod resolve?
  kubectl dnstrace pod/web-123

\b
  # All pods of a Deployment, five minutes, one JSON document
  kubectl dnstrace deploy/web -n shop --duration 5m -o json

\b
  # Attribute a capture someone already took with tcpdump on a node
  kubectl dnstrace analyze node7-port53.pcap --domain evil.example.com

\b
  # The RBAC objects a responder needs, ready for kubectl apply
  kubectl dnstrace rbac --cluster | kubectl apply -f -

\b
Exit codes: 0 something matched, 1 nothing matched, 2 usage, 3 cluster unreachable,
  4 not found, 5 RBAC forbidden, 6 Pod Security, 7 no ephemeral containers,
  8 capture container failed, 9 agent failed, 10 bad capture file, 11 events lost,
  12 pod object too large, 13 API server busy (429), 14 pod already traced,
  15 a traced pod went away unreplaced, 16 Corefile not editable (--via log),
  70 internal error, 130 interrupted (README.md, "Exit codes").
"""

TRACE_EPILOG = """\
\b
Targets ("trace" may be left out: kubectl dnstrace pod/web-123):
  coredns, dns        the cluster DNS pods behind Service kube-system/kube-dns,
                      plus node-local-dns pods when that DaemonSet exists
  pod/NAME, NAME      one pod
  deploy/NAME, ds/NAME, sts/NAME, job/NAME, rs/NAME
                      every running pod of that workload
  cronjob/NAME        the pods of its jobs running now
  node/NAME, no/NAME  everything on that node, from the node's network namespace
                      (through a hostNetwork pod there, or --create-pod); also DoT/DoH
                      connection attempts and queries that bypass cluster DNS
  nodes [-l SELECTOR] every node (or those matching -l), one capture per node
  -l SELECTOR         every running pod matching the label selector

\b
Examples:
  # Who asks the cluster DNS for evil.example.com?
  kubectl dnstrace coredns --domain evil.example.com

\b
  # What does this pod resolve, for two minutes?
  kubectl dnstrace pod/web-123 -n shop --duration 2m

\b
  # Every pod of a Deployment, NXDOMAIN answers only, one JSON document
  kubectl dnstrace deploy/web -n shop --rcode NXDOMAIN -o json

\b
  # Keep the packets as evidence (written with mode 0600)
  kubectl dnstrace coredns -d evil.example.com --pcap evidence.pcap

\b
  # The alert names a node: everything on it, whichever resolver each pod asks
  kubectl dnstrace node/node-7 --domain evil.example.com

\b
  # Air-gapped cluster: any image with python3 from your mirror
  kubectl dnstrace coredns --image registry.local/python:3.13-alpine

\b
  # No capture container at all: CoreDNS's log plugin, Corefile put back at exit
  kubectl dnstrace coredns --via log -d evil.example.com --duration 10m
  kubectl dnstrace coredns --via log --since 1h     # log already on: read it
  kubectl dnstrace coredns --restore                # after a killed --via log run

\b
Each capture is an ephemeral container named dnstrace-<id>; it stops at --duration
(or earlier, when kubectl dnstrace exits) but stays listed in the pod spec until the
pod is recreated. Permissions: kubectl dnstrace rbac.
"""

ANALYZE_EPILOG = """\
\b
Examples:
  # A capture taken on a node: tcpdump -i any -w node7-port53.pcap port 53
  kubectl dnstrace analyze node7-port53.pcap --domain evil.example.com

\b
  # No cluster access: IPs only, or pods from a saved listing
  kubectl get pods -A -o json > pods.json
  kubectl dnstrace analyze capture.pcapng --offline --pods pods.json -o json

\b
  # A capture as it is written: - reads standard input
  tcpdump -U -w - port 53 | kubectl dnstrace analyze - -o ndjson
"""

RBAC_EPILOG = """\
\b
Examples:
  # Everything, every namespace (coredns mode), for the group kubectl-dnstrace
  kubectl dnstrace rbac --cluster | kubectl apply -f -

\b
  # Pods in namespace shop only, for one user
  kubectl dnstrace rbac -n shop --user alice@example.com | kubectl apply -f -

\b
  # Node traces (node/NAME, nodes), with --create-pod --pod-namespace dnstrace
  kubectl dnstrace rbac --nodes -n dnstrace | kubectl apply -f -

\b
Self-subject access reviews (the pre-flight checks) are allowed to every
authenticated user by the default ClusterRole system:basic-user.
"""

USAGE_LINES = (
    "kubectl dnstrace TARGET... [OPTIONS]        capture live DNS in pods",
    "kubectl dnstrace analyze FILE... [OPTIONS]  attribute a capture file",
    "kubectl dnstrace rbac [--cluster | -n NS]   print the RBAC objects it needs",
)


class DefaultToTrace(TyperGroup):
    """A group whose unknown first word is a trace target: ``kubectl dnstrace pod/x``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``kubectl dnstrace -l app=web``: a first option the group does not know is trace's."""
        known = {o for p in self.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}
        if args and args[0].startswith("-") and args[0].split("=", 1)[0] not in known:
            args = ["trace", *args]
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if (args and args[0] not in self.commands and not args[0].startswith("-")) or (args and args[0].startswith("-") and args[0] not in ("--help", "-h", "--version")):
            args.insert(0, "trace")
        return super().resolve_command(ctx, args)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list:
        """Typer's shell completion: offer targets (coredns, pod/...) beside the commands."""
        from click.shell_completion import CompletionItem

        from kubectl_dnstrace.completion import complete

        items = super().shell_complete(ctx, incomplete)
        seen = {item.value for item in items}
        names, _ = complete([incomplete])
        return items + [CompletionItem(name) for name in names if name not in seen]

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Show how people type it (targets come first), not click's COMMAND [ARGS]."""
        first, *rest = USAGE_LINES
        formatter.write(f"Usage: {first}\n")
        for line in rest:
            formatter.write(f"       {line}\n")


app = typer.Typer(
    cls=DefaultToTrace,
    name="kubectl dnstrace",
    help="Find the pod behind a DNS query, using only the Kubernetes API.",
    epilog=EPILOG,
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"kubectl-dnstrace {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Find the pod behind a DNS query, using only the Kubernetes API."""


# Options shared by trace and analyze -------------------------------------------------------

DomainOpt = Annotated[
    list[str] | None,
    typer.Option("--domain", "-d", metavar="NAME", help="Report only this name and its subdomains (repeatable)."),
]
DomainFileOpt = Annotated[
    str | None, typer.Option("--domain-file", metavar="FILE", help="File of names, one per line, # comments.")
]
QtypeOpt = Annotated[list[str] | None, typer.Option("--qtype", metavar="TYPE", help="Only these query types (A, AAAA, TXT, ...).")]
RcodeOpt = Annotated[list[str] | None, typer.Option("--rcode", metavar="RCODE", help="Only responses with these rcodes (NXDOMAIN, ...).")]
OutputOpt = Annotated[str, typer.Option("--output", "-o", metavar="FORMAT", help="table | wide | json | ndjson")]
PcapOpt = Annotated[
    str | None, typer.Option("--pcap", metavar="FILE", help="Also write the packets to this pcap/pcapng file (mode 0600).")
]
KubeconfigOpt = Annotated[str | None, typer.Option("--kubeconfig", metavar="FILE", help="Path to the kubeconfig file.")]
ContextOpt = Annotated[str | None, typer.Option("--context", metavar="CONTEXT", help="The kubeconfig context to use.")]
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", metavar="NAMESPACE", help="Namespace of the targets.")]
RequestTimeoutOpt = Annotated[
    str, typer.Option("--request-timeout", metavar="DURATION", help="Timeout of one API request (e.g. 10s).")
]


def _filters(domain: list[str] | None, domain_file: str | None, qtype: list[str] | None,
             rcode: list[str] | None) -> Filters:
    domains = list(domain or [])
    check_names(domains, "--domain")
    if domain_file:
        domains.extend(load_domain_file(domain_file))
    qtypes = [q.upper() for q in qtype or []]
    rcodes = [r.upper() for r in rcode or []]
    check_codes(qtypes, rcodes)
    return Filters(domains=domains, qtypes=qtypes, rcodes=rcodes)


def _output(output: str, pcap: str | None) -> OutputOptions:
    if output not in OUTPUT_FORMATS:
        raise UsageError(
            f"unknown output format {output!r}",
            f"use one of: -o {', -o '.join(OUTPUT_FORMATS)}",
        )
    return OutputOptions(format=output, pcap_path=pcap)


def _trace_output(output: str, pcap: str | None, no_lines: bool) -> OutputOptions:
    opts = _output(output, pcap)
    opts.live = not no_lines
    return opts


@app.command(epilog=TRACE_EPILOG, short_help="Capture live DNS in pods (the default command).")
def trace(
    targets: Annotated[list[str] | None, typer.Argument(help="coredns | dns | pod/NAME | NAME | deploy/NAME | ds/ | sts/ | job/ | cronjob/ | rs/")] = None,
    selector: Annotated[str | None, typer.Option("--selector", "-l", help="Trace the pods matching this label selector.")] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Look for targets in every namespace.")] = False,
    namespace: NamespaceOpt = None,
    domain: DomainOpt = None,
    domain_file: DomainFileOpt = None,
    qtype: QtypeOpt = None,
    rcode: RcodeOpt = None,
    duration: Annotated[str, typer.Option("--duration", help="How long to capture (30s, 5m, 1h). The agent's hard deadline.")] = "5m",
    output: OutputOpt = "table",
    pcap: PcapOpt = None,
    no_lines: Annotated[bool, typer.Option("--no-lines", help="Table/wide: only the summary, no line per query.")] = False,
    image: Annotated[str | None, typer.Option("--image", help="Capture image: any image with python3, or the project's debug image.")] = None,
    image_pull_policy: Annotated[str | None, typer.Option("--image-pull-policy", help="Always | IfNotPresent | Never")] = None,
    timeout: Annotated[str, typer.Option("--timeout", help="How long to wait for the capture containers to run.")] = "60s",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the exact patch for each pod and change nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Trace a pod even when another trace's agent runs in it.")] = False,
    dns_namespace: Annotated[str, typer.Option("--dns-namespace", help="Namespace of the cluster DNS.")] = "kube-system",
    dns_selector: Annotated[str | None, typer.Option("--dns-selector", help="Label selector of the cluster DNS pods.")] = None,
    via_pod: Annotated[str | None, typer.Option("--via-pod", metavar="NS/NAME", help="node/NAME: capture through this hostNetwork pod on the node.")] = None,
    create_pod: Annotated[bool, typer.Option("--create-pod", help="node/NAME, nodes: capture in a short-lived hostNetwork pod created on each node (instead of attaching to its pods).")] = False,
    pod_namespace: Annotated[str | None, typer.Option("--pod-namespace", metavar="NAMESPACE", help="Where --create-pod creates its pods (default: the current namespace).")] = None,
    doh_resolvers: Annotated[str | None, typer.Option("--doh-resolvers", metavar="FILE", help="Node traces: DoH/DoT resolver addresses, one per line (replaces the built-in list).")] = None,
    via: Annotated[str, typer.Option("--via", metavar="ROUTE", help="coredns: capture (ephemeral containers) | log (CoreDNS's log plugin: edits the Corefile, restored at exit).")] = "capture",
    since: Annotated[str | None, typer.Option("--since", metavar="DURATION", help="--via log: read what CoreDNS already logged (e.g. 1h); changes nothing.")] = None,
    restore: Annotated[bool, typer.Option("--restore", help="coredns: put back a Corefile change a killed --via log run left.")] = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    request_timeout: RequestTimeoutOpt = "10s",
) -> None:
    """Capture DNS in pods through ephemeral containers and name the pods that asked."""
    from kubectl_dnstrace.trace import run_trace

    if not targets and not selector:
        raise UsageError(
            "no target given",
            "name one: kubectl dnstrace coredns, kubectl dnstrace pod/NAME, or -l SELECTOR",
        )
    request = TraceRequest(
        targets=list(targets or []),
        cluster=ClusterOptions(
            kubeconfig=kubeconfig,
            context=context,
            namespace=namespace,
            all_namespaces=all_namespaces,
            request_timeout=parse_duration(request_timeout, "--request-timeout"),
        ),
        filters=_filters(domain, domain_file, qtype, rcode),
        output=_trace_output(output, pcap, no_lines),
        selector=selector,
        duration=parse_duration(duration, "--duration"),
        image=image,
        image_pull_policy=image_pull_policy,
        wait_timeout=parse_duration(timeout, "--timeout"),
        dry_run=dry_run,
        dns_namespace=dns_namespace,
        dns_selector=dns_selector,
        via_pod=via_pod,
        create_pod=create_pod,
        pod_namespace=pod_namespace,
        doh_resolvers=load_resolver_file(doh_resolvers) if doh_resolvers else None,
        force=force,
        **_via_options(via, since, restore),
    )
    raise typer.Exit(int(run_trace(request)))


def _via_options(via: str, since: str | None, restore: bool) -> dict:
    if via not in ("capture", "log"):
        raise UsageError(f"unknown --via {via!r}", "use --via capture (the default) or --via log")
    if since is not None and via != "log":
        raise UsageError("--since reads what CoreDNS already logged: it needs --via log",
                         "kubectl dnstrace coredns --via log --since 1h")
    return {"via": via, "restore": restore,
            "since": parse_duration(since, "--since") if since is not None else None}


@app.command(epilog=ANALYZE_EPILOG, short_help="Attribute the DNS queries in pcap/pcapng files to pods.")
def analyze(
    files: Annotated[list[str], typer.Argument(help="pcap or pcapng files (Ethernet, Linux cooked SLL/SLL2, raw IP); - for standard input.")],
    offline: Annotated[bool, typer.Option("--offline", help="Do not contact a cluster: IPs only, or --pods.")] = False,
    pods: Annotated[str | None, typer.Option("--pods", help="Attribute from a saved 'kubectl get pods -A -o json'.")] = None,
    domain: DomainOpt = None,
    domain_file: DomainFileOpt = None,
    qtype: QtypeOpt = None,
    rcode: RcodeOpt = None,
    output: OutputOpt = "table",
    pcap: PcapOpt = None,
    no_lines: Annotated[bool, typer.Option("--no-lines", help="Table/wide: only the summary, no line per query.")] = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    request_timeout: RequestTimeoutOpt = "10s",
) -> None:
    """Attribute the DNS queries in capture files to pods, like a live trace."""
    from kubectl_dnstrace.analyze import run_analyze

    out_opts = _output(output, pcap)
    out_opts.live = not no_lines
    request = AnalyzeRequest(
        files=list(files),
        filters=_filters(domain, domain_file, qtype, rcode),
        output=out_opts,
        cluster=ClusterOptions(
            kubeconfig=kubeconfig,
            context=context,
            request_timeout=parse_duration(request_timeout, "--request-timeout"),
        ),
        offline=offline,
        pods_file=pods,
    )
    raise typer.Exit(int(run_analyze(request)))


@app.command(epilog=RBAC_EPILOG, short_help="Print the RBAC objects kubectl dnstrace needs.")
def rbac(
    cluster: Annotated[bool, typer.Option("--cluster", help="A ClusterRole for every namespace (coredns mode, client attribution).")] = False,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", metavar="NAMESPACE", help="A Role for pods in this namespace only (default: default).")] = None,
    subject: Annotated[str | None, typer.Option("--user", metavar="NAME", help="The user to bind (default: the group kubectl-dnstrace).")] = None,
    nodes: Annotated[bool, typer.Option("--nodes", help="Node traces (node/NAME, nodes): the ClusterRole, plus creating pods in -n NS for --create-pod.")] = False,
) -> None:
    """Print the least-privilege RBAC objects a trace needs, ready for kubectl apply."""
    from kubectl_dnstrace.rbac import render_rbac

    sys.stdout.write(render_rbac(cluster=cluster, namespace=namespace, user=subject,
                                 nodes=nodes))


# Typer's shell completion names the command after prog_name; "kubectl dnstrace" (with its
# space) would yield a broken script. Completion of `kubectl dnstrace <TAB>` goes through
# kubectl and the kubectl_complete-dnstrace helper (completion.py) instead.
COMPLETE_VAR = "_KUBECTL_DNSTRACE_COMPLETE"


def _prog_name(argv: list[str] | None) -> str:
    """How help shows the command: as users type it, except for typer's completion scripts."""
    args = sys.argv[1:] if argv is None else argv
    if os.environ.get(COMPLETE_VAR) or {"--install-completion", "--show-completion"} & set(args):
        return "kubectl-dnstrace"
    return "kubectl dnstrace"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, map every known error to its message and exit code."""
    debug = bool(os.environ.get("DNSTRACE_DEBUG"))
    try:
        # Without standalone mode click *returns* the code of a typer.Exit raised inside a
        # command (the trace's 0/1 = matched/no match) instead of raising it.
        result = app(args=argv, prog_name=_prog_name(argv), complete_var=COMPLETE_VAR,
                     standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        sys.stderr.write("Interrupted.\n")
        return ExitCode.INTERRUPTED
    except click.ClickException as exc:
        exc.show(file=sys.stderr)
        return ExitCode.USAGE
    except DnstraceError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"{exc.hint}\n")
        return int(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `kubectl dnstrace ... | head`: the reader left; that is not an error.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except Exception as exc:
        if debug:
            raise
        sys.stderr.write(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in kubectl-dnstrace. Run again with DNSTRACE_DEBUG=1 for the "
            "traceback and report it.\n"
        )
        return ExitCode.INTERNAL


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
