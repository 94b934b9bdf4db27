"""One line naming the machine a benchmark ran on, printed at the top of its output.

Two hosts of the same advertised kind (2 vCPUs, 24 GiB) ran the same code 3.5x apart, and
``analyze``'s two processes gain far more from two real cores than from two hyperthreads of
one: a figure means little without the CPU it came from. Read from /proc and /sys (Linux);
what cannot be read is left out.
"""

from __future__ import annotations

import os
import platform


def describe() -> str:
    """"AMD EPYC, 2 CPUs (1 thread per core), Linux 6.1.0, Python 3.11.7"."""
    parts = []
    model = _cpu_model()
    if model:
        parts.append(model)
    cpus = f"{os.cpu_count()} CPUs"
    threads = _threads_per_core()
    if threads:
        cpus += f" ({threads} thread{'s' if threads != 1 else ''} per core)"
    parts += [cpus, f"{platform.system()} {platform.release()}",
              f"Python {platform.python_version()}"]
    return ", ".join(parts)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def _threads_per_core() -> int:
    """Logical CPUs sharing cpu0's core ("0", "0-1" or "0,2" in thread_siblings_list)."""
    try:
        with open("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list",
                  encoding="utf-8") as fh:
            text = fh.read().strip()
    except OSError:
        return 0
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi) - int(lo) + 1 if hi else 1
    return count
