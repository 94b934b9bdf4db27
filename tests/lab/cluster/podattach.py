"""pods/attach through the websocket channel protocol, for a container's stdin.

What it mirrors (the real 1.35 kubelet + containerd, checked with the plugin's own attach):
- only a running container can be attached to (400 "container ... is not running" after
  it ended; "... is waiting to start" before);
- the upgrade is authorized as ``get pods/attach`` (the real server refused ``create``
  alone with "cannot get resource pods/attach");
- stdin frames (channel 0) go to the container's stdin; with ``stdinOnce`` the runtime
  closes that stdin when the first attach session ends (or the client closes channel 0 on
  v5), so nobody can write to it afterwards; a container without ``stdin: true`` has none;
- the session ends with a Success status on channel 3 when the client hangs up.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING

from . import status as st
from . import wsexec

if TYPE_CHECKING:
    from .kubelet import Kubelet


def serve_attach(kubelet: Kubelet, ex, pod: dict) -> None:
    container, ephemeral = kubelet.pick_container(pod, ex.query.get("container"))
    ns, name = pod["metadata"].get("namespace", ""), pod["metadata"]["name"]
    kubelet.check_reachable(pod, f"/attach/{ns}/{name}/{container}")
    run = kubelet.run(ns, name, container) if ephemeral else None
    if run is None or run.state != "running":
        raise st.bad_request(f"container {container} is not running" if run and run.state == "terminated"
                             else f'container "{container}" in pod "{name}" is waiting to start: '
                                  f"{run.reason if run else 'ContainerCreating'}")
    if not (ex.flag("stdin") or ex.flag("stdout") or ex.flag("stderr")):
        raise st.bad_request("you must specify at least one of stdin, stdout, stderr")
    key, protocol = wsexec.upgrade_request(ex)
    ws = wsexec.switch_protocols(ex, key, protocol)
    stdin = run.proc.stdin if run.proc is not None and ex.flag("stdin") else None
    if kubelet.faults.attach_input_lost:
        stdin = None
    while True:
        frame = ws.recv()
        if frame is None or frame[0] == wsexec.OP_CLOSE:
            break
        _, data = frame
        if data[:1] == b"\x00" and stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError, ValueError):
                stdin.write(data[1:])
                stdin.flush()
        elif data[:2] == b"\xff\x00" and run.stdin_once and stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()
    closes = not kubelet.faults.attach_input_lost or kubelet.faults.attach_input_closes
    if closes and run.stdin_once and run.proc is not None and run.proc.stdin is not None:
        with contextlib.suppress(OSError):
            run.proc.stdin.close()
    ws.send_channel(3, json.dumps({"metadata": {}, "status": "Success"}).encode())
    ws.close()
