"""JSON text laid out exactly as ``json.dumps(obj, indent=2, ensure_ascii=False)`` lays it
out, at a fraction of its cost.

``-o json`` is one indented document, its events included: millions of them on a long
capture. The stdlib's indenting encoder is pure Python and builds its closures anew per
call; here the layout is made by hand and every scalar's text comes from json's own C
functions, chosen by the value's exact type. A hypothesis test holds ``indented`` to
``json.dumps`` byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import encode_basestring as _enc
from typing import Any

_SCALAR = json.JSONEncoder(ensure_ascii=False).encode  # compact: any value, slowly


def _float_text(x: float) -> str:
    """A finite float as json writes it (its repr); NaN and the infinities by json itself."""
    return float.__repr__(x) if x - x == 0.0 else _SCALAR(x)


# The text json gives each scalar of exactly these types, by C functions where there are
# some: ``_SCALAR`` per value goes through ``JSONEncoder.encode`` and, for a number, builds
# a C encoder per call — it was three quarters of -o json's time on a long capture.
_SCALARS: dict[type, Callable[[Any], str]] = {
    str: _enc, int: int.__repr__, float: _float_text,
    bool: lambda b: "true" if b else "false", type(None): lambda _: "null",
}


def _key(k: Any) -> str:
    """A member name as json writes it: a string as is; a number, bool or None as its
    text, quoted."""
    return _enc(k if type(k) is str else _SCALAR(k))


MEMBER_PAD = "      "  # the indentation of the members of an element (``element``'s dict)


def element(obj: Any) -> str:
    """``obj`` as ``json.dumps(doc, indent=2)`` writes an element of a list at depth 1."""
    return "    " + indented(obj, "    ")


def element_ending(obj: dict, name: str, laid: str) -> str:
    """``element`` of the non-empty dict ``obj`` with one more member last, ``name``, whose
    value's text is ``laid``, already laid out at its depth (``indented(value,
    MEMBER_PAD)``): a value that recurs in many elements (an event's client) is laid out
    once."""
    return f"    {{\n{members(obj, MEMBER_PAD)},\n{MEMBER_PAD}{_enc(name)}: {laid}\n    }}"


# Indentation -> member name -> the member's start ('      "qname": '): an event has the
# same twenty names at the same depth, each written millions of times on a long capture.
_HEADS: dict[str, dict[str, str]] = {}
_HEADS_MAX = 1_000  # names kept per indentation (a cache: cleared when full)


def members(obj: dict, inner: str) -> str:
    """The members of a non-empty dict at indentation ``inner``, as ``indented`` lays
    them out between its braces."""
    scalars = _SCALARS
    heads = _HEADS.get(inner)
    if heads is None:
        heads = _HEADS[inner] = {}
    return ",\n".join([
        f"{heads.get(k) or _head(heads, inner, k)}{scalar(v)}"
        if (scalar := scalars.get(type(v))) is not None
        else f"{heads.get(k) or _head(heads, inner, k)}{indented(v, inner)}"
        for k, v in obj.items()])


def _head(heads: dict[str, str], inner: str, k: Any) -> str:
    text = f"{inner}{_key(k)}: "
    if type(k) is str:  # (1, 1.0 and True are one dict key but three texts)
        if len(heads) >= _HEADS_MAX:
            heads.clear()
        heads[k] = text
    return text


def indented(obj: Any, pad: str) -> str:
    """``json.dumps(obj, indent=2)``'s text at indentation ``pad``, byte for byte: its
    layout by hand, every scalar's text as json's C functions give it. The stdlib's
    indenting encoder is pure Python and builds its closures anew per call: three times
    slower per event."""
    scalar = _SCALARS.get(type(obj))
    if scalar is not None:
        return scalar(obj)
    if isinstance(obj, dict):
        return f"{{\n{members(obj, pad + '  ')}\n{pad}}}" if obj else "{}"
    if isinstance(obj, (list, tuple)):
        if not obj:
            return "[]"
        inner = pad + "  "
        return "[\n" + ",\n".join([inner + indented(v, inner) for v in obj]) + "\n" + pad + "]"
    return _SCALAR(obj)
