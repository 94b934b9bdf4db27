"""The HTTP side of the simulated kube-apiserver: routing, auth header, JSON and streams.

Real HTTP/1.1 on loopback through ``ThreadingHTTPServer``: bodies with Content-Length for
plain answers, ``Transfer-Encoding: chunked`` for watches and followed logs (one chunk per
event/line, as the recordings show), a raw socket hand-off for the pods/exec websocket.
A stream can be cut without its final chunk to simulate a broken connection.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .status import ApiError, failure


class Exchange:
    """One request as the API layer sees it, with ways to answer."""

    def __init__(self, handler: BaseHTTPRequestHandler):
        self.h = handler
        url = urllib.parse.urlsplit(handler.path)
        self.method = handler.command
        self.path = url.path.rstrip("/") or "/"
        self.query_multi = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        self.query = {k: v[-1] for k, v in self.query_multi.items()}
        self.headers = handler.headers
        # Read the body now: answering early (401, 403) must not leave it in the socket,
        # where the next keep-alive request would be parsed from it.
        length = int(self.headers.get("Content-Length") or 0)
        self._body = handler.rfile.read(length) if length else b""
        self.answered = False
        self.code = 0
        self.user = ""

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("true", "1")

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()

    def body(self) -> bytes:
        return self._body

    def json_body(self):
        raw = self.body()
        if not raw:
            raise ApiError(failure(400, "the body of the request was empty", "BadRequest"))
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(failure(400, f"the object provided is unrecognized (must be of type JSON): {exc}",
                                   "BadRequest")) from None

    def send_json(self, code: int, body, headers: dict | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self._head(code, "application/json", headers, length=len(data))
        self.h.wfile.write(data)

    def send_text(self, code: int, text: bytes, content_type: str = "text/plain") -> None:
        self._head(code, content_type, None, length=len(text))
        self.h.wfile.write(text)

    def start_stream(self, code: int, content_type: str, headers: dict | None = None) -> None:
        self._head(code, content_type, headers, length=None)
        self.h.wfile.flush()

    def write_chunk(self, data: bytes) -> bool:
        """Send one chunk; False when the client has gone away."""
        if not data:
            return True
        try:
            self.h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.h.wfile.flush()
            return True
        except OSError:
            return False

    def end_stream(self) -> None:
        try:
            self.h.wfile.write(b"0\r\n\r\n")
            self.h.wfile.flush()
        except OSError:
            pass

    def abort(self) -> None:
        """Drop the connection mid-stream (no terminating chunk): the client sees a broken read."""
        self.h.close_connection = True
        try:
            self.h.wfile.flush()
            self.h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _head(self, code: int, ctype: str, headers: dict | None, length: int | None) -> None:
        self.answered = True
        self.code = code
        h = self.h
        h.server.record(self)  # before the client can see the answer
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Cache-Control", "no-cache, private")
        h.send_header("Audit-Id", h.server.next_audit_id())
        for k, v in (headers or {}).items():
            for item in v if isinstance(v, list) else [v]:
                h.send_header(k, item)
        if length is None:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(length))
        h.end_headers()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall
    server_version = "sim-kube-apiserver"

    def log_message(self, fmt, *args):  # keep test output clean
        pass

    def handle(self) -> None:
        # a client that hangs up mid-handshake or mid-request is not an error
        with contextlib.suppress(ssl.SSLError, ConnectionResetError, BrokenPipeError, TimeoutError):
            super().handle()

    def _dispatch(self) -> None:
        ex = Exchange(self)
        self.server.track(self.connection, True)
        try:
            self.server.api.handle(ex)
        except ApiError as err:
            if not ex.answered:
                ex.send_json(err.code, err.body, err.headers)
            else:
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        except Exception as exc:  # a bug in the simulator must be visible, not a hung client
            if not ex.answered:
                ex.send_json(500, failure(500, f"simulator error: {type(exc).__name__}: {exc}", "InternalError"))
            self.close_connection = True
            raise
        finally:
            self.server.track(self.connection, False)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class ApiHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, api, host: str = "127.0.0.1", port: int = 0, ssl_context=None):
        super().__init__((host, port), _Handler)
        if ssl_context is not None:
            # The handshake then happens on the first read, in the request's own thread.
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.api = api
        self._audit = 0
        self._lock = threading.Lock()
        self._conns: set = set()
        self.audit: list[dict] = []

    def record(self, ex: Exchange) -> None:
        """Keep an audit trail (tests assert, e.g., that a dry run sent no write)."""
        with self._lock:
            self.audit.append({"method": ex.method, "path": ex.path, "query": dict(ex.query),
                               "user": ex.user, "code": ex.code})

    def next_audit_id(self) -> str:
        with self._lock:
            self._audit += 1
            return f"00000000-0000-4000-8000-{self._audit:012d}"

    def track(self, conn, active: bool) -> None:
        with self._lock:
            (self._conns.add if active else self._conns.discard)(conn)

    def close_all(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
