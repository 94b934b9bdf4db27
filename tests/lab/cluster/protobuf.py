"""Just enough of Kubernetes' protobuf encoding to read what kubectl sends as protobuf.

client-go's typed clients (``kubectl auth can-i``) POST built-in objects as
``application/vnd.kubernetes.protobuf``: the magic ``k8s\\0`` then a ``runtime.Unknown``
(1 typeMeta{1 apiVersion, 2 kind}, 2 raw, 3 contentEncoding, 4 contentType) whose ``raw`` is
the object's own message. Only SelfSubjectAccessReview is decoded into its JSON form; the
simulator answers in JSON, which kubectl accepts (its Accept header ends with ``*/*``).
"""

from __future__ import annotations

MAGIC = b"k8s\x00"


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(buf: bytes) -> dict[int, list]:
    """Field number -> values (ints for varints, bytes for length-delimited)."""
    out: dict[int, list] = {}
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.setdefault(num, []).append(value)
    return out


def _str(f: dict, num: int) -> str:
    return f[num][0].decode() if num in f else ""


def decode_ssar(body: bytes) -> dict:
    """A protobuf SelfSubjectAccessReview as its JSON form."""
    if not body.startswith(MAGIC):
        raise ValueError("not a Kubernetes protobuf message")
    unknown = fields(body[len(MAGIC):])
    obj = fields(unknown[2][0]) if 2 in unknown else {}
    spec = fields(obj[2][0]) if 2 in obj else {}
    out: dict = {}
    if 1 in spec:
        ra = fields(spec[1][0])
        names = ("namespace", "verb", "group", "version", "resource", "subresource", "name")
        out["resourceAttributes"] = {n: _str(ra, i) for i, n in enumerate(names, 1) if _str(ra, i)}
    if 2 in spec:
        nra = fields(spec[2][0])
        out["nonResourceAttributes"] = {n: _str(nra, i) for i, n in enumerate(("path", "verb"), 1) if _str(nra, i)}
    return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "spec": out}
