"""SIGTERM and SIGHUP end a trace like Ctrl-C; a closed terminal does not stop the cleanup;
an interrupt before the first change says that nothing was changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kubectl_dnstrace.errors import ExitCode
from kubectl_dnstrace.lifecycle import QuietStream, Terminated, stop_signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_raise_like_ctrl_c_and_are_restored(sig):
    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt) as info, stop_signals():
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises long before
    assert isinstance(info.value, Terminated) and info.value.signum == sig
    assert signal.getsignal(sig) is before


def test_nohup_is_respected():
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_signals():
            os.kill(os.getpid(), signal.SIGHUP)  # ignored, as the user asked
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGHUP, old)


def test_a_closed_terminal_drops_writes_instead_of_failing():
    r, w = os.pipe()
    os.close(r)  # nobody reads any more: writes fail (EPIPE), as on a hung-up terminal (EIO)
    stream = QuietStream(os.fdopen(w, "w", buffering=1))
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        stream.write("stopping the capture agents\n")
        stream.flush()
        assert stream.broken
        assert stream.write("more\n") == 5  # dropped, no exception
    finally:
        signal.signal(signal.SIGPIPE, old)


class _Hang(BaseHTTPRequestHandler):
    """An API server that answers /version and then never answers anything else."""

    def do_GET(self):
        if self.path == "/version":
            data = json.dumps({"gitVersion": "v1.35.0", "major": "1", "minor": "35"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.server.hung.set()
        time.sleep(30)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_before_any_change_says_nothing_was_changed(tmp_path, sig):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hang)
    server.daemon_threads = True
    server.hung = threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kc = tmp_path / "kc"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    proc = subprocess.Popen([sys.executable, "-m", "kubectl_dnstrace.cli", "pod/web-1", "-n",
                             "shop", "--kubeconfig", str(kc), "--request-timeout", "60s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.hung.wait(20)  # the plugin waits for the pod's lookup
        time.sleep(0.3)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.shutdown()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    said = "Interrupted" if sig == signal.SIGINT else "SIGTERM received"
    assert f"{said} before any change: nothing was changed in the cluster" in err
    assert "Traceback" not in err


def test_what_an_agent_shed_to_stay_bounded_is_said_never_lost_silently() -> None:
    from kubectl_dnstrace.trace import shed_notices

    assert shed_notices("kube-system/coredns-1", {"seen": 10, "drops": 0}) == []
    said = shed_notices("kube-system/coredns-1",
                        {"shed_packets": 55122, "shed_records": 9000, "ungrouped": 12})
    assert said == [
        "kube-system/coredns-1: the agent could not keep up and gave 55122 packet(s) back to "
        "the kernel unread (to stay within its memory bound)",
        "kube-system/coredns-1: the agent fell behind and counted 9000 message(s) in per-second "
        "aggregates instead of single lines",
        "kube-system/coredns-1: 12 message(s) are in the aggregate totals only (too many distinct "
        "names in one second to keep each); narrow with --domain",
    ]


def test_a_stop_signal_delivered_twice_at_once_is_one_request() -> None:
    """GNU timeout signals the command and then its process group: the plugin gets SIGTERM
    twice within microseconds. That is one request to stop, not "stop waiting"."""
    import os
    import signal
    import time

    from kubectl_dnstrace.lifecycle import REPEAT_WINDOW, Terminated, stop_signals

    raised = 0
    with stop_signals():
        for _ in range(2):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
            except Terminated:
                raised += 1
        assert raised == 1
        time.sleep(REPEAT_WINDOW + 0.1)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        except Terminated:
            raised += 1
    assert raised == 2  # a later one is a new request (a second Ctrl-C-like interrupt)
