"""``python -m tests.lab``: bring a scenario up and run a command against it, or keep it up.

    python -m tests.lab run --scenario FILE [--duration S] [--settle S] -- COMMAND...
    python -m tests.lab up  --scenario FILE [--duration S]
    python -m tests.lab check --scenario FILE      (validate and print the layout; no root needed)

``run`` starts the scenario clock as COMMAND starts, streams COMMAND's output unchanged,
tears everything down afterwards (also on Ctrl-C, SIGTERM or a failure) and exits with
COMMAND's exit code. ``--duration`` interrupts COMMAND like Ctrl-C after S seconds;
``--settle`` lets the scenario run S seconds before COMMAND starts. Lab messages go to
stderr, prefixed ``lab:``, so COMMAND's stdout stays clean for ``-o json`` and friends.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from tests.lab.netns import lab_missing
from tests.lab.plan import build_plan
from tests.lab.spec import ScenarioError, load_scenario


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_on(signum: int, _frame) -> None:
    raise _Interrupted(signum)


def _say(text: str) -> None:
    print(f"lab: {text}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description="Scenario lab for kubectl-dnstrace.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="bring a scenario up, run COMMAND against it, tear it down")
    run.add_argument("--scenario", required=True, help="scenario YAML file (format: tests/lab/README.md)")
    run.add_argument("--duration", type=float, help="interrupt COMMAND (like Ctrl-C) after this many seconds")
    run.add_argument("--settle", type=float, default=0.0, help="seconds of scenario time before COMMAND starts")
    run.add_argument("--quiet", action="store_true", help="no layout table on stderr")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    up = sub.add_parser("up", help="bring a scenario up and keep it until Ctrl-C")
    up.add_argument("--scenario", required=True)
    up.add_argument("--duration", type=float, help="tear down after this many seconds")
    check = sub.add_parser("check", help="validate a scenario and print its layout")
    check.add_argument("--scenario", required=True)
    return parser


def _wait_child(proc: subprocess.Popen, deadline: float | None) -> int:
    """Wait for COMMAND; past ``deadline`` send it SIGINT (Ctrl-C), then SIGKILL after 20 s."""
    interrupted_at = None
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if deadline is not None and interrupted_at is None and now >= deadline:
            _say("duration reached: interrupting the command")
            proc.send_signal(signal.SIGINT)
            interrupted_at = now
        if interrupted_at is not None and now - interrupted_at > 20:
            _say("the command ignored the interrupt for 20 s: killing it")
            proc.kill()


def _stop_child(proc: subprocess.Popen | None, signum: int) -> int | None:
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        scenario = load_scenario(args.scenario)
        plan = build_plan(scenario)
    except ScenarioError as exc:
        _say(f"invalid scenario: {exc}")
        return 2
    if args.command == "check":
        from tests.lab.scenario import ScenarioLab

        print(ScenarioLab.layout(plan))
        return 0
    command = list(getattr(args, "argv", []) or [])
    if command and command[0] == "--":
        command = command[1:]
    if args.command == "run" and not command:
        _say("nothing to run: give a command after --")
        return 2
    why = lab_missing()
    if why:
        _say(f"cannot run the lab here: {why}")
        return 2

    from tests.lab.scenario import ScenarioLab

    old = {s: signal.signal(s, _raise_on) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    sl = ScenarioLab(scenario)
    proc: subprocess.Popen | None = None
    code = 1
    try:
        started = time.monotonic()
        sl.up()
        _say(f"scenario {args.scenario} up in {time.monotonic() - started:.1f}s "
             f"({len(plan.nodes)} nodes, {len(plan.pods)} pods; network namespaces dtlab-{sl.lab.tag}-*)")
        if args.command == "up" or not args.quiet:
            print(sl.summary(), file=sys.stderr, flush=True)
        sl.begin()
        if args.command == "up":
            print(f"export KUBECONFIG={sl.kubeconfig}", flush=True)
            print(f'export PATH="{os.path.dirname(sys.executable)}:$PATH"', flush=True)
            _say("up; Ctrl-C tears it down")
            end = None if args.duration is None else time.monotonic() + args.duration
            while end is None or time.monotonic() < end:
                time.sleep(0.5)
            code = 0
        else:
            if args.settle:
                sl.wait_until(args.settle)
            deadline = None if args.duration is None else time.monotonic() + args.duration
            # COMMAND stays in our process group: a terminal Ctrl-C reaches it directly.
            proc = subprocess.Popen(command, env=sl.env())
            code = _wait_child(proc, deadline)
        for error in sl.errors:
            _say(error)
    except _Interrupted as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the teardown
        _say(f"{exc}: stopping")
        got = _stop_child(proc, exc.signum)
        code = got if got is not None else 128 + exc.signum
    except FileNotFoundError as exc:
        _say(f"cannot run {command[0]!r}: {exc.strerror}")
        code = 127
    except Exception as exc:
        _say(f"scenario failed: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sl.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    # A command killed by a signal reports -N; a shell reports that as 128+N.
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    raise SystemExit(main())
