"""pods/exec through the websocket channel protocol, run like the kubelet's CRI exec.

The command runs in the container's network namespace, with its environment and identity
(uid, capabilities); stdout and stderr go to channels 1 and 2, and channel 3 carries the
final Status (``NonZeroExitCode`` with the code in ``details.causes``, as the python
client's ``returncode`` reads it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from typing import TYPE_CHECKING

from . import status as st
from . import wsexec

if TYPE_CHECKING:
    from .kubelet import Kubelet

PYTHON_NAMES = {"python", "python3", "/usr/local/bin/python3", "/usr/local/bin/python", "/usr/bin/python3"}

def serve_exec(kubelet: Kubelet, ex, pod: dict) -> None:
    container, ephemeral = kubelet.pick_container(pod, ex.query.get("container"))
    ns, name = pod["metadata"].get("namespace", ""), pod["metadata"]["name"]
    kubelet.check_reachable(pod, f"/exec/{ns}/{name}/{container}")
    command = ex.query_multi.get("command") or []
    if not command:
        raise st.bad_request("you must specify at least 1 command")
    run = kubelet.run(ns, name, container) if ephemeral else None
    if ephemeral and (run is None or run.state != "running"):
        raise st.bad_request(f"container {container} is not running" if run and run.state == "terminated"
                             else f'container "{container}" in pod "{name}" is waiting to start: '
                                  f"{run.reason if run else 'ContainerCreating'}")
    key, protocol = wsexec.upgrade_request(ex)
    env = dict(run.env) if run else {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                     "HOME": "/root", "HOSTNAME": name}
    netns = run.netns if run else kubelet.netns_for(ns, name)
    argv = list(command)
    if argv[0] in PYTHON_NAMES:
        argv[0] = kubelet.python3
    ws = wsexec.switch_protocols(ex, key, protocol)
    identity = run.identity if run else []
    _exec(kubelet, ws, argv, env, netns, run.cwd if run else "/", ex.flag("stdin"), identity)

def _exec(kubelet: Kubelet, ws: wsexec.WebSocket, argv: list[str], env: dict, netns: str, cwd: str,
          with_stdin: bool, identity: list[str]) -> None:
    cmd = ["ip", "netns", "exec", netns, *identity, *argv]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                                start_new_session=True)
    except OSError as exc:
        msg = (f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{argv[0]}": '
               f"{exc.strerror}: unknown")
        ws.send_channel(3, json.dumps({"metadata": {}, "status": "Failure", "message": msg,
                                       "reason": "InternalError", "details": {"causes": [
                                           {"message": msg}]}}).encode())
        ws.close()
        return

    kubelet.execs.add(proc)

    def pump(stream, channel: int) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            ws.send_channel(channel, chunk)

    def feed() -> None:
        while True:
            frame = ws.recv()
            if frame is None or frame[0] == wsexec.OP_CLOSE:
                break
            _, data = frame
            if data[:1] == b"\x00" and proc.stdin:
                try:
                    proc.stdin.write(data[1:])
                    proc.stdin.flush()
                except OSError:
                    pass
            elif data[:2] == b"\xff\x00" and proc.stdin:
                proc.stdin.close()
        if proc.poll() is None and proc.stdin:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    outs = [threading.Thread(target=pump, args=(proc.stdout, 1), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, 2), daemon=True)]
    for t in outs:
        t.start()
    threading.Thread(target=feed, daemon=True).start()
    try:
        code = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    kubelet.execs.discard(proc)
    for t in outs:
        t.join(timeout=5)
    if code == 0:
        status = {"metadata": {}, "status": "Success"}
    else:
        status = {"metadata": {}, "status": "Failure",
                  "message": f"command terminated with non-zero exit code: error executing command "
                             f"[{' '.join(argv)}], exit code {code}",
                  "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
    ws.send_channel(3, json.dumps(status).encode())
    ws.close()
