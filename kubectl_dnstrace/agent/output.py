"""NDJSON out on stdout: sequence numbers, encoding, and writes that reach the log promptly.

Stdlib only, python3 >= 3.8. Records go straight to file descriptor 1 with ``os.write``
(no Python buffering to forget to flush): the kubectl side reads them through the pod-log
API while the capture runs. Records produced while handling one batch of packets (one
ring block) are written with one write, so a flood costs one system call per block rather
than one per record, and nothing waits for a later packet to be flushed.
"""

import errno
import os

from kubectl_dnstrace import protocol


class Output(object):
    __slots__ = ("_lines", "closed", "emitted", "fd", "seq")

    def __init__(self, fd=1):
        self.fd = fd
        self.seq = 0
        self.emitted = 0
        self._lines = []
        self.closed = False

    def add(self, record):
        """Number ``record`` (in place) and queue it; ``flush`` writes the queue."""
        self.seq += 1
        record["seq"] = self.seq
        self._lines.append(protocol.encode(record))
        if record["type"] == "dns":
            self.emitted += 1

    def emit(self, record):
        self.add(record)
        self.flush()

    def flush(self):
        if not self._lines:
            return
        data = ("\n".join(self._lines) + "\n").encode("ascii")
        self._lines = []
        if self.closed:
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except InterruptedError:
                continue
            except BlockingIOError:
                # stdout set non-blocking by someone else: wait until it drains.
                import select

                select.select([], [self.fd], [], 1.0)
                continue
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.EBADF):
                    self.closed = True  # nobody is reading: keep running to the end quietly
                    return
                raise
            view = view[n:]
