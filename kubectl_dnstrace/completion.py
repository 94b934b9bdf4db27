"""``kubectl_complete-dnstrace``: what ``kubectl dnstrace <TAB>`` offers.

kubectl (1.26+) completes a plugin's arguments by running ``kubectl_complete-<plugin>`` with
the words typed after the plugin name, the last one being the word under the cursor (empty
after a space). It prints one candidate per line and may end with ``:<directive>``, Cobra's
ShellCompDirective bit set: 2 = no space after the candidate (``pod/`` is a prefix, the
name comes next), 4 = no file names. Without a directive kubectl's shell script falls back
to file names, which is what ``analyze FILE`` and ``--pcap FILE`` want.

Completion runs on every TAB: it must answer in well under a second and must never print
an error into the user's command line. Cluster look-ups (pod and namespace names) get a
short budget and any failure simply yields fewer candidates.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Sequence

COMMANDS = ("coredns", "dns", "analyze", "rbac", "trace")
# What a trace target may start with; the kube kind each one lists.
TARGET_KINDS = {
    "pod/": "pods",
    "deploy/": "deployments",
    "ds/": "daemonsets",
    "sts/": "statefulsets",
    "job/": "jobs",
    "cronjob/": "cronjobs",
    "rs/": "replicasets",
    "node/": "nodes",
}
CLUSTER_SCOPED = ("namespaces", "nodes")
OUTPUT_FORMATS = ("table", "wide", "json", "ndjson")
QTYPES = ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "HTTPS", "SVCB", "ANY")
RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

NO_SPACE = 2
NO_FILE = 4
# File names are the shell's default: print no directive at all.
FILE_DEFAULT = None

# A TAB that waits longer than a few seconds feels broken. Importing the kubernetes client
# alone takes ~0.7 s on an idle machine; the request itself gets REQUEST_TIMEOUT_S.
CLUSTER_BUDGET_S = 3.0
REQUEST_TIMEOUT_S = 1.5


def _option_table(subcommand: str) -> dict[str, bool]:
    """Option spelling -> takes a value, read from the real CLI so the two never drift."""
    import typer

    from kubectl_dnstrace.cli import app

    group = typer.main.get_command(app)
    command = group.commands.get(subcommand) if hasattr(group, "commands") else None
    table: dict[str, bool] = {}
    for cmd in (command, group):
        for param in getattr(cmd, "params", []):
            if getattr(param, "param_type_name", "") != "option":
                continue
            takes_value = not (param.is_flag or param.count)
            for spelling in (*param.opts, *param.secondary_opts):
                table.setdefault(spelling, takes_value)
    table.update({"--help": False, "-h": False})
    table.pop("--install-completion", None)
    table.pop("--show-completion", None)
    return table


class Words:
    """The words typed so far, read the way the CLI will read them."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self.subcommand = "trace"
        self.explicit = False
        for word in self.words:
            if not word.startswith("-"):
                if word in ("trace", "analyze", "rbac"):
                    self.subcommand = word
                    self.explicit = True
                break
        self.options = _option_table(self.subcommand)
        self.values: dict[str, str] = {}
        self.positionals: list[str] = []
        skip = False
        for i, word in enumerate(self.words):
            if skip:
                skip = False
                continue
            if word.startswith("-"):
                name, eq, value = word.partition("=")
                if self.options.get(name):
                    if eq:
                        self.values[name] = value
                    elif i + 1 < len(self.words):
                        self.values[name] = self.words[i + 1]
                        skip = True
                continue
            self.positionals.append(word)
        if self.explicit and self.positionals:
            self.positionals.pop(0)

    def value(self, *names: str) -> str | None:
        for name in names:
            if name in self.values:
                return self.values[name]
        return None

    def wants_value_for(self) -> str | None:
        """The option whose value is under the cursor, if the previous word takes one."""
        if self.words and self.options.get(self.words[-1]):
            return self.words[-1]
        return None


def _with_budget(fn: Callable[[], list[str]], budget: float = CLUSTER_BUDGET_S) -> list[str]:
    """Run a cluster look-up in a daemon thread; whatever is not back in time is dropped."""
    result: list[list[str]] = []

    def target() -> None:
        # Completion must stay silent, whatever happens: a failure is just no candidates.
        with contextlib.suppress(BaseException):
            result.append(fn())

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(budget)
    return result[0] if result else []


def _cluster_names(words: Words, kind: str, all_namespaces: bool = False) -> list[str]:
    """Names of ``kind`` objects in the namespace the command line points at."""
    if os.environ.get("DNSTRACE_COMPLETE_OFFLINE") or not _has_cluster_config(words):
        return []

    def look_up() -> list[str]:
        from kubectl_dnstrace.kube.client import Kube
        from kubectl_dnstrace.model import ClusterOptions

        opts = ClusterOptions(
            kubeconfig=words.value("--kubeconfig"),
            context=words.value("--context"),
            namespace=words.value("--namespace", "-n"),
            request_timeout=REQUEST_TIMEOUT_S,
        )
        kube = Kube.connect(opts, probe=False)
        try:
            namespace = None if kind in CLUSTER_SCOPED or all_namespaces else kube.namespace
            items, _ = kube.list(kind, namespace)
        finally:
            kube.close()
        return sorted({item.get("metadata", {}).get("name", "") for item in items} - {""})

    return _with_budget(look_up)


def _has_cluster_config(words: Words) -> bool:
    """Cheap test before importing the kubernetes client (most of a TAB's cost)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    paths = words.value("--kubeconfig") or os.environ.get("KUBECONFIG") or "~/.kube/config"
    return any(os.path.exists(os.path.expanduser(p)) for p in paths.split(os.pathsep) if p)


def _contexts(words: Words) -> list[str]:
    def look_up() -> list[str]:
        from kubernetes.config import kube_config

        path = words.value("--kubeconfig") or os.environ.get("KUBECONFIG") or "~/.kube/config"
        contexts, _ = kube_config.list_kube_config_contexts(os.path.expanduser(path))
        return sorted(c["name"] for c in contexts or [])

    return _with_budget(look_up)


def complete(args: Sequence[str]) -> tuple[list[str], int | None]:
    """Candidates for the last word of ``args`` and the Cobra directive to print."""
    args = list(args) or [""]
    typed, current = args[:-1], args[-1]
    words = Words(typed)
    option = words.wants_value_for()

    if option is not None:
        if option in ("-o", "--output"):
            return _prefixed(OUTPUT_FORMATS, current), NO_FILE
        if option == "--qtype":
            return _prefixed(QTYPES, current.upper()), NO_FILE
        if option == "--rcode":
            return _prefixed(RCODES, current.upper()), NO_FILE
        if option == "--image-pull-policy":
            return _prefixed(PULL_POLICIES, current), NO_FILE
        if option in ("-n", "--namespace", "--dns-namespace"):
            return _prefixed(_cluster_names(words, "namespaces"), current), NO_FILE
        if option == "--context":
            return _prefixed(_contexts(words), current), NO_FILE
        if option in ("--kubeconfig", "--domain-file", "--pcap", "--pods", "--doh-resolvers"):
            return [], FILE_DEFAULT
        return [], NO_FILE  # --domain, --duration, -l ...: nothing sensible to offer

    if current.startswith("-"):
        return _prefixed(sorted(words.options), current), NO_FILE

    if words.subcommand == "analyze":
        return [], FILE_DEFAULT
    if words.subcommand == "rbac":
        return [], NO_FILE

    prefix, slash, _ = current.partition("/")
    if slash:
        kind_prefix = f"{prefix}/"
        kind = TARGET_KINDS.get(kind_prefix)
        if kind is None:
            return [], NO_FILE
        all_ns = "-A" in typed or "--all-namespaces" in typed
        names = [kind_prefix + name for name in _cluster_names(words, kind, all_ns)]
        return _prefixed(names, current), NO_FILE

    keywords = (*COMMANDS, "nodes") if not words.positionals and not words.explicit \
        else ("coredns", "dns", "nodes")
    matches = _prefixed([*keywords, *TARGET_KINDS], current)
    all_ns = "-A" in typed or "--all-namespaces" in typed
    matches.extend(_prefixed(_cluster_names(words, "pods", all_ns), current))
    only_prefixes = bool(matches) and all(m.endswith("/") for m in matches)
    return _dedupe(matches), NO_FILE | (NO_SPACE if only_prefixes else 0)


def _prefixed(candidates: Sequence[str], current: str) -> list[str]:
    return [c for c in candidates if c.startswith(current)]


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``kubectl_complete-dnstrace``: print candidates, then the directive."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        candidates, directive = complete(args)
    except Exception:  # a broken completion must not break the user's shell
        candidates, directive = [], None
    out = "".join(f"{c}\n" for c in candidates)
    if directive is not None:
        out += f":{directive}\n"
    sys.stdout.write(out)
    sys.stdout.flush()
    return 0
