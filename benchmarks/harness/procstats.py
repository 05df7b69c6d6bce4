"""CPU time and RSS of a process tree, read from /proc (Linux only).

A process's /proc/<pid>/stat already covers all its threads. Descendants are found by walking
parent pids. cutime/cstime are added too: they hold the CPU of children that already exited and
were reaped, which therefore no longer show up in the tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """The root pid and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """User + system CPU of the tree rooted at `root`, in seconds (clock-tick resolution)."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # Fields 14-17 of stat (utime, stime, cutime, cstime); index 0 here is field 3.
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / _CLOCK_TICKS


def rss_kib(root: int) -> int:
    """VmRSS summed over the tree, in KiB (shared pages are counted once per process)."""
    total = 0
    for pid in process_tree(root):
        try:
            status = (_PROC / str(pid) / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                break
    return total


@dataclass
class CpuMeter:
    """CPU used by a process tree between `start()` and `stop()`."""

    root: int
    _before: float = 0.0

    def start(self) -> None:
        self._before = cpu_seconds(self.root)

    def stop(self) -> float:
        return cpu_seconds(self.root) - self._before
