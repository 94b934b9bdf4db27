"""Server side of the pods/exec websocket: RFC 6455 handshake and frames, stdlib only.

Kubernetes' channel protocols (``v4.channel.k8s.io``, ``v5.channel.k8s.io``) put one byte in
front of every binary message naming the stream: 0 stdin, 1 stdout, 2 stderr, 3 error/status
(a JSON ``Status`` when the command ends), 4 resize; v5 adds 255 "close this stream" from the
client. The python client's ``kubernetes.stream.stream`` offers v5 then v4; v5 is chosen.
Client frames are masked, server frames are not.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import struct
import threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def upgrade_request(ex) -> tuple[str, str]:
    """(key, protocol) of a valid channel-protocol upgrade; the API's 400 otherwise."""
    from . import status as st

    protocol = choose_protocol(ex.headers.get("Sec-WebSocket-Protocol", ""))
    key = ex.headers.get("Sec-WebSocket-Key")
    if not key or ex.headers.get("Upgrade", "").lower() != "websocket" or not protocol:
        raise st.bad_request("Upgrade request required")
    return key, protocol


def switch_protocols(ex, key: str, protocol: str) -> WebSocket:
    """Answer 101 on the request's connection and return the websocket over it."""
    h = ex.h
    ex.answered = True
    ex.code = 101
    h.server.record(ex)
    h.close_connection = True
    h.send_response(101, "Switching Protocols")
    h.send_header("Upgrade", "websocket")
    h.send_header("Connection", "Upgrade")
    h.send_header("Sec-WebSocket-Accept", accept_key(key))
    h.send_header("Sec-WebSocket-Protocol", protocol)
    h.end_headers()
    h.wfile.flush()
    return WebSocket(h.rfile, h.wfile, h.connection)


def choose_protocol(offered: str) -> str | None:
    wanted = [p.strip() for p in (offered or "").split(",")]
    return next((p for p in PROTOCOLS if p in wanted), None)


class WebSocket:
    """A server-side websocket over an accepted HTTP connection."""

    def __init__(self, rfile, wfile, conn: socket.socket):
        self.rfile, self.wfile, self.conn = rfile, wfile, conn
        self._wlock = threading.Lock()
        self.closed = False

    def send(self, payload: bytes, opcode: int = OP_BINARY) -> bool:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        with self._wlock:
            if self.closed:
                return False
            try:
                self.wfile.write(head + payload)
                self.wfile.flush()
                return True
            except OSError:
                self.closed = True
                return False

    def send_channel(self, channel: int, data: bytes) -> bool:
        return self.send(bytes([channel]) + data)

    def recv(self) -> tuple[int, bytes] | None:
        """Next (opcode, payload) from the client; None on EOF."""
        try:
            head = self.rfile.read(2)
            if len(head) < 2:
                return None
            b1, b2 = head
            n = b2 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if b2 & 0x80 else b"\0\0\0\0"
            data = bytearray(self.rfile.read(n))
            for i in range(len(data)):
                data[i] ^= mask[i % 4]
            return b1 & 0x0F, bytes(data)
        except OSError:
            return None

    def close(self, code: int = 1000) -> None:
        self.send(struct.pack("!H", code), OP_CLOSE)
        with self._wlock:
            self.closed = True
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)
