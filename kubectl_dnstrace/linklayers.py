"""Capture-file link types that wrap another one: what ``analyze`` unwraps before the
agent's ``FrameDecoder`` (which reads the link types a live capture or a plain tcpdump file
has) sees the frame.

- NFLOG (239): what ``tcpdump -i nflog:N`` writes, packets an iptables ``NFLOG`` rule
  copied to user space. A 4-byte header (address family, version, resource id), then TLVs
  whose length and type are in the byte order of the host that captured them (libpcap
  writes them as the kernel gave them); the IP packet is the value of type NFULA_PAYLOAD.
  The byte order is told from the first TLV's type (types are small numbers), as
  Wireshark's auto-detection does.
- PKTAP (258, and 149 — DLT_USER2, the number Apple's libpcap gives it in files): what
  ``tcpdump -k`` / ``-i pktap`` writes on macOS. A header in the capturing host's byte
  order (little-endian on every Mac) whose first field is its own length and whose third
  is the DLT of the packet that follows it.
- Loopback of OpenBSD (LOOP, 108: the BSD loopback header in network byte order, which
  ``FrameDecoder`` reads either way) and raw IP under the numbers some BSDs write (12, 14).

Everything else a caller does not read is counted by it, by link type, and named with
``name``: a summary says which link types it skipped rather than "unsupported".
"""

from __future__ import annotations

import struct

from kubectl_dnstrace.agent.frames import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)

LINKTYPE_NFLOG = 239
LINKTYPE_PKTAP = 258
LINKTYPE_USER2 = 149  # Apple's libpcap writes PKTAP with this number
LINKTYPE_LOOP = 108

# Link types read here whose frames may still hold no packet (an NFLOG record of a rule
# with --nflog-size 0, a PKTAP record of another kind): counted apart from the ones not read.
WRAPPING = frozenset((LINKTYPE_NFLOG, LINKTYPE_PKTAP))
# What FrameDecoder.decode_link reads as it is.
DIRECT = frozenset((LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL,
                    LINKTYPE_LINUX_SLL2, LINKTYPE_IPV4, LINKTYPE_IPV6))

NFULA_PAYLOAD = 9
PKTAP_MIN_HEADER = 108  # the header of the first PKTAP version (Wireshark's minimum too)
PTH_TYPE_PACKET = 1
# DLT numbers a PKTAP header may name that differ from their LINKTYPE (DLT_RAW is 12 on
# macOS and most BSDs, 14 on OpenBSD).
_DLT_TO_LINKTYPE = {12: LINKTYPE_RAW, 14: LINKTYPE_RAW, LINKTYPE_LOOP: LINKTYPE_NULL}

_LE_HH = struct.Struct("<HH").unpack_from
_BE_HH = struct.Struct(">HH").unpack_from
_LE_III = struct.Struct("<III").unpack_from
_BE_III = struct.Struct(">III").unpack_from

# Names of link types a capture may hold that analyze does not read, for the summary.
_NAMES = {
    9: "PPP", 10: "FDDI", 50: "PPP_HDLC", 51: "PPP_ETHER", 104: "C_HDLC",
    105: "IEEE802_11", 107: "FRELAY", 119: "IEEE802_11_PRISM",
    127: "IEEE802_11_RADIOTAP", 138: "APPLE_IP_OVER_IEEE1394", 143: "DOCSIS",
    163: "IEEE802_11_AVS", 187: "BLUETOOTH_HCI_H4", 189: "USB_LINUX", 192: "PPI",
    195: "IEEE802_15_4_WITHFCS", 201: "BLUETOOTH_HCI_H4_WITH_PHDR", 215: "IEEE802_15_4_NONASK_PHY",
    220: "USB_LINUX_MMAPPED", 227: "CAN_SOCKETCAN", 231: "DBUS", 235: "DVB_CI",
    239: "NFLOG", 249: "USBPCAP", 251: "BLUETOOTH_LE_LL", 252: "WIRESHARK_UPPER_PDU",
    253: "NETLINK", 256: "BLUETOOTH_LE_LL_WITH_PHDR", 258: "PKTAP", 263: "IPMI_HPM_2",
    272: "NORDIC_BLE", 279: "EBHSCR", 281: "VPP_DISPATCH", 283: "DSA_TAG_EDSA",
}  # fmt: skip


def name(linktype: int) -> str:
    """``"IEEE802_11_RADIOTAP (127)"``; USER0..USER15 for 147..162; else the number."""
    text = _NAMES.get(linktype)
    if text is None and 147 <= linktype <= 162:
        text = f"USER{linktype - 147}"
    return f"{text} ({linktype})" if text else str(linktype)


def unwrap(linktype: int, frame: bytes) -> tuple[int, bytes] | None:
    """The frame inside a wrapping link type, as ``(linktype, frame)`` that
    ``FrameDecoder.decode_link`` reads, or None when ``linktype`` is not one read here or
    this frame carries no packet of a link type it reads (then the caller counts it)."""
    if linktype == LINKTYPE_NFLOG:
        payload = nflog_payload(frame)
        return None if payload is None else (LINKTYPE_RAW, payload)
    if linktype in (LINKTYPE_PKTAP, LINKTYPE_USER2):
        inner = pktap_packet(frame)
        if inner is None or inner[0] not in DIRECT:
            return None
        return inner
    if linktype == LINKTYPE_LOOP:
        return LINKTYPE_NULL, frame
    if linktype in (12, 14):
        return LINKTYPE_RAW, frame
    return None


def nflog_payload(frame: bytes) -> bytes | None:
    """The packet in an NFLOG record (its NFULA_PAYLOAD TLV), or None when it has none (a
    rule with ``--nflog-size 0``) or the TLVs are broken before it."""
    size = len(frame)
    if size < 8:
        return None
    # Types are small numbers: the byte that is zero says which end is the high one.
    unpack = _BE_HH if frame[6] == 0 and frame[7] != 0 else _LE_HH
    pos = 4
    while pos + 4 <= size:
        length, kind = unpack(frame, pos)
        if length < 4 or pos + length > size:
            # A record cut by the snap length: the payload goes as far as the capture does.
            if length >= 4 and (kind & 0x7FFF) == NFULA_PAYLOAD:
                return frame[pos + 4:]
            return None
        if (kind & 0x7FFF) == NFULA_PAYLOAD:  # (the top bit is the kernel's "nested" flag)
            return frame[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return None


def pktap_packet(frame: bytes) -> tuple[int, bytes] | None:
    """``(linktype, packet)`` after a PKTAP header, or None when the header is not whole,
    names no packet, or its length is not one a header can have."""
    if len(frame) < PKTAP_MIN_HEADER:
        return None
    for unpack in (_LE_III, _BE_III):
        length, kind, dlt = unpack(frame, 0)
        if PKTAP_MIN_HEADER <= length <= len(frame):
            if kind != PTH_TYPE_PACKET:
                return None
            return _DLT_TO_LINKTYPE.get(dlt, dlt), frame[length:]
    return None
