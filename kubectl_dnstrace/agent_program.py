"""The capture agent as one self-contained program, and the container command that runs it.

Why inline: the default debug image is a small official python image, so the plugin works
on any cluster that can pull it and nobody has to build or push an image of ours. The
agent's modules (stdlib only, python3 >= 3.8) travel as one program: docstrings and
comments stripped, the sources compressed together (zlib), served by a tiny meta-path
importer — nothing is written to the container's filesystem.

Why not in the command: the container's command stays in the pod object for the pod's
lifetime (ephemeral containers cannot be removed), and etcd refuses objects over ~1.5 MiB,
the kubelet's own status updates included. So the command is a one-line bootstrap
(:func:`bootstrap_command`) that reads the compressed program from the container's stdin,
which the plugin writes through ``pods/attach`` once the container runs
(``stdin: true, stdinOnce: true``). The bootstrap checks the program's length and SHA-256
(both in the command, so the pod spec records exactly what ran) and arms an alarm first:
a container whose program never arrives — the plugin died, or the image was pulled long
after the plugin gave up — ends by itself after :data:`PROGRAM_WAIT` seconds (exit
:data:`ALARM_EXIT`); the agent then replaces that alarm with its own deadline.
"""

from __future__ import annotations

import ast
import base64
import builtins
import functools
import hashlib
import itertools
import json
import keyword
import re
import zlib
from dataclasses import dataclass
from importlib import resources

from kubectl_dnstrace import __version__

DEFAULT_IMAGE = "docker.io/library/python:3.13-alpine"
PROJECT_IMAGE = "ghcr.io/kubectl-dnstrace/agent"
PROJECT_IMAGE_LABEL = "io.kubectl-dnstrace.agent"

# Every module the agent imports, with whether it is a package.
AGENT_MODULES = (
    ("kubectl_dnstrace", True),
    ("kubectl_dnstrace.protocol", False),
    ("kubectl_dnstrace.dnswire", False),
    ("kubectl_dnstrace.agent", True),
    ("kubectl_dnstrace.agent.capture", False),
    ("kubectl_dnstrace.agent.dedupe", False),
    ("kubectl_dnstrace.agent.encrypted", False),
    ("kubectl_dnstrace.agent.events", False),
    ("kubectl_dnstrace.agent.filters", False),
    ("kubectl_dnstrace.agent.frames", False),
    ("kubectl_dnstrace.agent.main", False),
    ("kubectl_dnstrace.agent.output", False),
    ("kubectl_dnstrace.agent.volume", False),
)

# How long a started capture container waits for its program before it ends itself.
PROGRAM_WAIT = 20
# Its exit code then (and when the agent's own backstop alarm fires). The alarm has a
# handler: a process that is PID 1 of its PID namespace (an ephemeral container that does
# not share the target's) ignores a signal whose action is the default, SIGALRM included.
ALARM_EXIT = 124

# The loader: b85 blob -> {module: [is_package, source]}; runs on python3 >= 3.8.
_BOOT = """import sys,zlib,json,base64,importlib.machinery as M
S=json.loads(zlib.decompress(base64.b85decode(%r)))
class L:
 def find_spec(s,n,p=None,t=None):
  if n in S:return M.ModuleSpec(n,s,is_package=S[n][0])
 def create_module(s,p):return None
 def exec_module(s,m):exec(compile(S[m.__name__][1],'<'+m.__name__+'>','exec'),m.__dict__)
sys.meta_path.insert(0,L())
from kubectl_dnstrace.agent.main import main
sys.exit(main(sys.argv[1:]))
"""


def project_image(version: str = __version__) -> str:
    """The project's debug image for this version (python3 and the agent preinstalled)."""
    return f"{PROJECT_IMAGE}:{version}"


def _module_source(module: str, is_package: bool) -> str:
    parts = module.split(".")
    if is_package:
        path = resources.files(".".join(parts)).joinpath("__init__.py")
    else:
        path = resources.files(".".join(parts[:-1])).joinpath(parts[-1] + ".py")
    return path.read_text(encoding="utf-8")


_DROP_KEYWORDS = frozenset(("help", "description"))  # argparse texts nobody reads here
_DROP_METHODS = frozenset(("__repr__", "__eq__", "__ne__"))  # debugging aids only
_BUILTINS = frozenset(dir(builtins))


def _strip_docs(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                del body[0]
        elif isinstance(node, ast.Call):
            node.keywords = [k for k in node.keywords if k.arg not in _DROP_KEYWORDS]


def _defined_name(stmt: ast.stmt) -> str | None:
    if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
        return stmt.name
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
            and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id
    return None


def _shake(trees: dict[str, ast.Module], roots: set[str]) -> None:
    """Remove module-level definitions and methods nothing in the bundle refers to.

    A module-level name counts as used when its own module loads it, when another module
    imports it by name, or when another module reads it as ``<module alias>.<name>``;
    a method counts as used when any attribute of that name is read anywhere.
    """
    while True:
        loads: dict[str, set[str]] = {m: set() for m in trees}
        attrs: set[str] = set()
        for mod, tree in trees.items():
            aliases = {}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module in trees:
                    for a in node.names:
                        loads[node.module].add(a.name)
                        if f"{node.module}.{a.name}" in trees:
                            aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            for stmt in tree.body:
                own = _defined_name(stmt)
                for node in ast.walk(stmt):
                    if isinstance(node, ast.Name) and node.id != own:
                        loads[mod].add(node.id)
                    elif isinstance(node, ast.Attribute):
                        attrs.add(node.attr)
                        if isinstance(node.value, ast.Name) and node.value.id in aliases:
                            loads[aliases[node.value.id]].add(node.attr)
        removed = False
        for mod, tree in trees.items():
            kept = []
            for stmt in tree.body:
                name = _defined_name(stmt)
                if name is not None and not name.startswith("__") and name not in loads[mod] \
                        and f"{mod}.{name}" not in roots:
                    removed = True
                    continue
                if name == "__all__":
                    continue
                if isinstance(stmt, ast.ClassDef):
                    stmt.body = [s for s in stmt.body if not (
                        isinstance(s, ast.FunctionDef) and (s.name in _DROP_METHODS or (
                            not s.name.startswith("__") and s.name not in attrs)))] or [ast.Pass()]
                kept.append(stmt)
            tree.body = kept
        if not removed:
            return


def _short_names(taken: set[str]):
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for n in range(1, 3):
        for combo in itertools.product(alphabet, repeat=n):
            name = "".join(combo)
            if name not in taken and not keyword.iskeyword(name):
                yield name


def _rename_locals(tree: ast.Module) -> None:
    """Give function-local variables one- or two-letter names (never parameters, which
    callers may pass by keyword, nor anything that shadows a module-level or builtin name)."""
    module_names = set(_BUILTINS)
    for node in ast.walk(tree):
        if isinstance(node, ast.alias):
            module_names.add((node.asname or node.name).split(".")[0])
    for stmt in tree.body:
        name = _defined_name(stmt)
        if name:
            module_names.add(name)
    funcs = []
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef):
            funcs.append(stmt)
        elif isinstance(stmt, ast.ClassDef):
            funcs += [s for s in stmt.body if isinstance(s, ast.FunctionDef)]
    for func in funcs:
        params, stores, loads, fixed = set(), set(), set(), set()
        for node in ast.walk(func):
            if isinstance(node, ast.arg):
                params.add(node.arg)
            elif isinstance(node, ast.Name):
                (loads if isinstance(node.ctx, ast.Load) else stores).add(node.id)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                stores.add(node.name)
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                fixed.update(node.names)
            elif isinstance(node, ast.alias):
                fixed.add((node.asname or node.name).split(".")[0])
        local = stores - params - fixed - module_names
        if not local:
            continue
        taken = params | loads | stores | fixed | module_names
        names = _short_names(taken)
        mapping = {old: next(names) for old in sorted(local)}
        for node in ast.walk(func):
            if isinstance(node, ast.Name) and node.id in mapping:
                node.id = mapping[node.id]
            elif isinstance(node, ast.ExceptHandler) and node.name in mapping:
                node.name = mapping[node.name]


def _is_private(name: str | None) -> bool:
    return bool(name) and name.startswith("_") and not name.startswith("__") and len(name) > 3


def _rename_private(trees: dict[str, ast.Module]) -> None:
    """Give every ``_private`` identifier of the bundle a short name (``_0``, ``_1``...),
    the same everywhere: definitions, attributes, imports, parameters and ``__slots__``
    strings. By convention nothing outside the bundle uses them, and the agent never
    looks them up by a computed string."""
    found: set[str] = set()
    slots: list[ast.Constant] = []
    for tree in trees.values():
        for node in ast.walk(tree):
            for attr in ("id", "attr", "name", "arg", "asname"):
                value = getattr(node, attr, None)
                if isinstance(value, str) and _is_private(value):
                    found.add(value)
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
                slots += [c for c in ast.walk(node.value) if isinstance(c, ast.Constant)]
    mapping = {name: f"_{i:x}" for i, name in enumerate(sorted(found))}
    for tree in trees.values():
        for node in ast.walk(tree):
            for attr in ("id", "attr", "name", "arg", "asname"):
                value = getattr(node, attr, None)
                if isinstance(value, str) and value in mapping:
                    setattr(node, attr, mapping[value])
    for const in slots:
        if const.value in mapping:
            const.value = mapping[const.value]


def _unparse_compact(tree: ast.Module) -> str:
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list) and not block and field == "body":
                block.append(ast.Pass())
    text = ast.unparse(tree)
    # One space per indentation level (unparse writes every statement on one line, and no
    # string literal spans lines, so leading spaces are always indentation).
    return re.sub(r"(?m)^((?:    )+)", lambda m: " " * (len(m.group(1)) // 4), text) + "\n"


def minify_bundle(sources: dict[str, str], roots: set[str]) -> dict[str, str]:
    """Docstrings, comments, help texts and unused code out; local names shortened."""
    trees = {m: ast.parse(src) for m, src in sources.items()}
    for tree in trees.values():
        _strip_docs(tree)
    _shake(trees, roots)
    _rename_private(trees)
    for tree in trees.values():
        _rename_locals(tree)
    return {m: _unparse_compact(tree) for m, tree in trees.items()}


@functools.lru_cache(maxsize=1)
def inline_program() -> str:
    """Source for ``python3 -c``: the whole agent, arguments follow as usual."""
    sources = {m: _module_source(m, pkg) for m, pkg in AGENT_MODULES}
    small = minify_bundle(sources, {"kubectl_dnstrace.agent.main.main"})
    bundle = {m: [pkg, small[m]] for m, pkg in AGENT_MODULES}
    blob = zlib.compress(json.dumps(bundle, separators=(",", ":")).encode("utf-8"), 9)
    return _BOOT % base64.b85encode(blob).decode("ascii")


# What the bootstrap runs: the stdin program's bytes, after its length and hash are checked.
# Exit 125 with a line on stderr (the pod log) when the program came incomplete.
_BOOTSTRAP = ("import os,signal,sys,zlib,hashlib;signal.signal(14,lambda*a:os._exit(%d));"
              "signal.alarm(%d);d=sys.stdin.buffer.read(%d);"
              "hashlib.sha256(d).hexdigest()[:%d]==%r or sys.exit('dnstrace: the agent program "
              "did not arrive complete');exec(zlib.decompress(d))")
HASH_CHARS = 16


@dataclass(frozen=True, slots=True)
class AgentLaunch:
    """The container command, and the bytes to write to the container's stdin (empty for
    the project image, whose agent is preinstalled)."""

    command: list[str]
    program: bytes = b""


def stdin_program(extra_args: list[str]) -> bytes:
    """The compressed program the bootstrap reads: the inline agent with ``extra_args``
    (a long domain list, say) appended to its command-line arguments."""
    entry = "sys.exit(main(sys.argv[1:]))"
    program = inline_program()
    if entry not in program:  # _BOOT changed: the extra arguments would be lost
        raise RuntimeError("the inline program's entry line changed")
    source = program.replace(entry, f"sys.exit(main(sys.argv[1:]+{list(extra_args)!r}))")
    return zlib.compress(source.encode("utf-8"), 9)


def bootstrap_command(program: bytes, agent_args: list[str],
                      wait: int = PROGRAM_WAIT) -> list[str]:
    """``python3 -c BOOTSTRAP ARGS``: a few hundred bytes, whatever the program's size."""
    digest = hashlib.sha256(program).hexdigest()[:HASH_CHARS]
    return ["python3", "-c", _BOOTSTRAP % (ALARM_EXIT, wait, len(program), HASH_CHARS, digest),
            *agent_args]


def agent_launch(agent_args: list[str], preinstalled: bool,
                 stdin_args: list[str] = ()) -> AgentLaunch:
    """The module in the project image (``stdin_args`` join the arguments), else the
    bootstrap and its program (``stdin_args`` travel inside the program)."""
    if preinstalled:
        return AgentLaunch(["python3", "-m", "kubectl_dnstrace.agent", *agent_args,
                            *stdin_args])
    program = stdin_program(list(stdin_args))
    return AgentLaunch(bootstrap_command(program, agent_args), program)


def agent_command(agent_args: list[str], preinstalled: bool) -> list[str]:
    """The whole program in the command (``python3 -c PROGRAM ARGS``): kept for running the
    agent by hand and in tests; traces use :func:`agent_launch`."""
    if preinstalled:
        return ["python3", "-m", "kubectl_dnstrace.agent", *agent_args]
    return ["python3", "-c", inline_program(), *agent_args]
