"""The kubelet's ``$(VAR)`` expansion of a container's ``command`` and ``args``.

The kubelet rewrites both before the runtime sees them (``kubecontainer.ExpandContainerCommandAndArgs``,
which calls the forked ``expansion.Expand`` with the container's environment): ``$(NAME)`` becomes
the variable's value when ``NAME`` is defined and stays as written when it is not; ``$$`` becomes
``$``; ``$`` before any other character, or at the very end, stays. The character after a ``$``
is consumed with it, so ``$$(A)`` is the literal ``$(A)``, never a reference.

The first real-cluster run of the plugin failed on exactly this: the inline agent program
contained ``$(`` and ``$$`` and reached python3 changed. The simulated kubelet applies the same
rule so that no simulated test can pass where a real kubelet would change the command.
"""

from __future__ import annotations

from collections.abc import Mapping


def expand(text: str, env: Mapping[str, str]) -> str:
    """``text`` as the kubelet passes it to the runtime, with ``env`` the container's variables."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            read, is_var, advance = _read_name(text[cursor + 1:])
            if is_var:
                out.append(env.get(read, f"$({read})"))
            else:
                out.append(read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def _read_name(rest: str) -> tuple[str, bool, int]:
    """(what to write or the variable's name, whether it is a variable, characters consumed)."""
    first = rest[0]
    if first == "$":
        return "$", False, 1
    if first == "(":
        close = rest.find(")", 1)
        if close != -1:
            return rest[1:close], True, close + 1
        return "$(", False, 1
    return "$" + first, False, 1


def expand_all(values: list[str] | None, env: Mapping[str, str]) -> list[str]:
    return [expand(v, env) for v in values or []]
