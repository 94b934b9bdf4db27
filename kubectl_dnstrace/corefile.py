"""Read a CoreDNS Corefile and add (or take out) one ``log`` line: pure text in, text out.

``kubectl dnstrace coredns --via log`` turns on CoreDNS's ``log`` plugin for the names asked
about, and must put the Corefile back byte for byte. So the file is never re-serialised:
the parser only finds the server blocks (their keys, first and last line) and their
directives, and the edit inserts one whole line, marked with a comment naming the run, that
``remove_log_line`` can find again even after a colleague edited the rest of the file.

The grammar is Caddy's (CoreDNS's ``caddyfile`` lexer): whitespace-separated tokens, ``#``
comments to the end of the line (only at a token's start), quoted strings, ``{`` / ``}`` for
blocks. A server block is ``KEY... {`` at depth 0; each line inside it starts a directive;
nested blocks belong to the directive before them. Snippets ``(name) { }`` are not servers.

What CoreDNS does with the result, verified on a real CoreDNS 1.13: ``log ZONE...`` logs
only queries for names under those zones (the first matching rule wins, so one query is
never logged twice); a comment after a directive is ignored; the plugin's position in the
block does not matter (plugin order is compiled in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MARKER = "# kubectl-dnstrace run "
RUN_ZONE_PREFIX = "kubectl-dnstrace-run-"
DNS_PORT = 53


class CorefileError(ValueError):
    """The Corefile cannot be read: what is wrong and on which line (1-based)."""


@dataclass(slots=True)
class Directive:
    name: str
    args: list[str]
    line: int  # 0-based line index in the text


@dataclass(slots=True)
class ServerBlock:
    """One server block: ``keys`` as written (``.:53``, ``dns://example.org``), its lines."""

    keys: list[str]
    open_line: int  # the line with the block's ``{``
    close_line: int  # the line with its ``}``
    directives: list[Directive] = field(default_factory=list)
    one_line: bool = False  # ``. { whoami }``: no line of its own to add a directive after

    @property
    def zones(self) -> list[tuple[str, int]]:
        """(zone with a final dot, port) per key: ``dns://example.org:1053`` -> (example.org., 1053)."""
        out = []
        for key in self.keys:
            scheme, _, rest = key.rpartition("://")
            host, port = rest, DNS_PORT if scheme in ("", "dns") else 0
            m = re.match(r"^(.*?):(\d+)$", rest)
            if m:
                host, port = m.group(1), int(m.group(2))
            zone = host.strip().lower() or "."
            out.append((zone if zone.endswith(".") else zone + ".", port))
        return out

    def has(self, name: str) -> bool:
        return any(d.name == name for d in self.directives)


@dataclass(slots=True)
class Corefile:
    text: str
    blocks: list[ServerBlock]

    @property
    def reloads(self) -> bool:
        """Whether a change is picked up without a restart (``reload`` in any server block:
        the plugin watches the whole file)."""
        return any(b.has("reload") for b in self.blocks)


@dataclass(slots=True)
class Edit:
    """The outcome of ``add_log_line``: the new text, which blocks got the line, and which
    already logged what was asked (nothing to add there)."""

    text: str
    changed: list[str]  # the blocks' keys, as written
    already: list[str]

    @property
    def needed(self) -> bool:
        return bool(self.changed)


def _tokens(text: str) -> list[tuple[str, int, bool]]:
    """(token, 0-based line, quoted) for every token, comments dropped."""
    out: list[tuple[str, int, bool]] = []
    i, line, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c == '"':
            j, start_line, buf = i + 1, line, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n and text[j + 1] in '"\\':
                    j += 1
                if text[j] == "\n":
                    line += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise CorefileError(f"line {start_line + 1}: a quoted string is not closed")
            out.append(("".join(buf), start_line, True))
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in " \t\r\n":
                j += 1
            out.append((text[i:j], line, False))
            i = j
    return out


def parse(text: str) -> Corefile:
    """The server blocks of a Corefile; ``CorefileError`` names the line of the first problem."""
    toks = _tokens(text)
    blocks: list[ServerBlock] = []
    i, n = 0, len(toks)
    while i < n:
        tok, line, quoted = toks[i]
        if tok == "import" and not quoted:  # a top-level "import FILE" line: no server
            while i < n and toks[i][1] == line:
                i += 1
            continue
        keys: list[str] = []
        key_line = prev = line
        while i < n and (toks[i][0] != "{" or toks[i][2]):
            tok, line, quoted = toks[i]
            if tok == "}" and not quoted:
                raise CorefileError(f"line {line + 1}: '}}' without a block to close")
            if keys and line != prev and not keys[-1].endswith(","):
                raise CorefileError(f"line {key_line + 1}: {' '.join(keys)!r} is not followed "
                                    "by a '{' block")
            keys.append(tok.rstrip(","))
            prev = line
            i += 1
        if i >= n:
            raise CorefileError(f"line {key_line + 1}: {' '.join(keys)!r} is not followed "
                                "by a '{' block")
        if not keys:
            raise CorefileError(f"line {toks[i][1] + 1}: a block without a server address")
        open_line = toks[i][1]
        i += 1
        block = ServerBlock(keys=keys, open_line=open_line, close_line=-1)
        depth, last_line = 1, None
        while i < n:
            tok, line, quoted = toks[i]
            if not quoted and tok == "{":
                depth += 1
            elif not quoted and tok == "}":
                depth -= 1
                if depth == 0:
                    block.close_line = line
                    i += 1
                    break
            elif depth == 1 and line != last_line:
                block.directives.append(Directive(tok, [], line))
                last_line = line
            elif depth == 1 and block.directives:
                block.directives[-1].args.append(tok)
            i += 1
        if block.close_line < 0:
            raise CorefileError(f"line {open_line + 1}: the block of {' '.join(keys)!r} is "
                                "never closed with '}'")
        block.one_line = block.close_line == block.open_line or any(
            d.line == open_line for d in block.directives)
        if not (keys[0].startswith("(") and keys[0].endswith(")")):  # a snippet
            blocks.append(block)
    if not blocks:
        raise CorefileError("no server block found (expected something like '.:53 { ... }')")
    return Corefile(text, blocks)


def _under(name: str, zone: str) -> bool:
    name = name.lower().rstrip(".") + "."
    return zone == "." or name == zone or name.endswith("." + zone)


def client_blocks(cf: Corefile, port: int = DNS_PORT) -> list[ServerBlock]:
    """The blocks clients reach: those listening on ``port`` (the Service's target port).
    A block on another port (kubeadm-style helper blocks, ``bind 127.0.0.1``) only sees what
    CoreDNS forwards to itself."""
    return [b for b in cf.blocks if any(p == port for _, p in b.zones)]


def serving_block(cf: Corefile, name: str, port: int = DNS_PORT) -> ServerBlock | None:
    """The block that answers ``name``: CoreDNS picks the longest matching zone."""
    best, best_len = None, -1
    for block in client_blocks(cf, port):
        for zone, p in block.zones:
            if p == port and _under(name, zone) and len(zone) > best_len:
                best, best_len = block, len(zone)
    return best


def _log_covers(directive: Directive, zones: list[str]) -> bool:
    """Does an existing ``log`` line already log every one of ``zones`` (``[]``: all)?"""
    names = [a for a in directive.args if "{" not in a and not a.startswith(RUN_ZONE_PREFIX)]
    if not names:
        return True
    if any(n.rstrip(".") == "" for n in names):
        return True
    scopes = [n.lower().rstrip(".") + "." for n in names]
    if not zones:
        return False
    return all(any(_under(z, s) for s in scopes) for z in zones)


def marker(run_id: str) -> str:
    return f"{MARKER}{run_id}"


def run_zone(run_id: str) -> str:
    return f"{RUN_ZONE_PREFIX}{run_id}.invalid"


def add_log_line(text: str, run_id: str, domains: list[str], port: int = DNS_PORT) -> Edit:
    """``text`` with ``log [DOMAIN...]  # kubectl-dnstrace run ID`` in each block that serves
    the domains (every client block when none is given). Raises CorefileError when the file
    cannot be read or a block cannot take a line of its own."""
    cf = parse(text)
    wanted: dict[int, tuple[ServerBlock, list[str]]] = {}
    if domains:
        for d in domains:
            block = serving_block(cf, d, port)
            if block is None:
                continue
            wanted.setdefault(id(block), (block, []))[1].append(d.lower().rstrip("."))
    else:
        for block in client_blocks(cf, port):
            wanted[id(block)] = (block, [])
    lines = text.splitlines(keepends=True)
    changed, already = [], []
    # Bottom-up, so earlier line numbers stay valid.
    for block, zones in sorted(wanted.values(), key=lambda bz: -bz[0].open_line):
        label = " ".join(block.keys)
        if any(d.name == "log" and _log_covers(d, zones) for d in block.directives):
            already.append(label)
            continue
        if block.one_line:
            raise CorefileError(f"line {block.open_line + 1}: the block {label!r} is written "
                                "on one line; there is no line to add 'log' after")
        indent = _indent_of(lines, block)
        newline = "\r\n" if lines[block.open_line].endswith("\r\n") else "\n"
        # The run's own name among the zones: CoreDNS's "Running configuration SHA512" is
        # a hash of the parsed tokens (comments do not count), and a run must recognise the
        # configuration it made — not another run's edit with the same names (found on a
        # real cluster). ".invalid" names never resolve (RFC 2606): nothing matches it.
        args = "".join(f" {z}" for z in (zones or ["."])) + f" {run_zone(run_id)}"
        lines.insert(block.open_line + 1, f"{indent}log{args} {marker(run_id)}{newline}")
        changed.append(label)
    return Edit("".join(lines), list(reversed(changed)), list(reversed(already)))


def _indent_of(lines: list[str], block: ServerBlock) -> str:
    for d in block.directives:
        m = re.match(r"^[ \t]*", lines[d.line])
        if m and m.group(0):
            return m.group(0)
    return "    "


_OUR_LINE = re.compile(r"^[ \t]*log\b[^\n#]*" + re.escape(MARKER) + r"(?P<id>[0-9a-z]+)[ \t]*\r?\n?",
                       re.M)


def runs_in(text: str) -> list[str]:
    """The run ids whose ``log`` lines are in ``text``."""
    return [m.group("id") for m in _OUR_LINE.finditer(text)]


def remove_log_line(text: str, run_id: str | None = None) -> str:
    """``text`` without our ``log`` lines (of ``run_id``, or of any run): the lines only, so
    whatever else someone changed meanwhile stays as they left it."""
    def drop(m: re.Match) -> str:
        return "" if run_id is None or m.group("id") == run_id else m.group(0)
    return _OUR_LINE.sub(drop, text)
