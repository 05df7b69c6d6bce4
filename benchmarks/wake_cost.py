#!/usr/bin/env python3
"""What a blocking wait costs the code that runs after it, on this machine: a check of the figures
that a network round trip per request (counters in Redis) adds.

    python benchmarks/wake_cost.py

The same small piece of Python work (a dict of 300 entries, built and summed) is timed in CPU
time three ways: back to back; each time after a round trip to a thread of the same process over
a socket pair (the thread sleeps in recv, as an event loop sleeps in epoll waiting for Redis);
and the round trip alone. ``work after a wait`` is the second minus the third: the same
instructions, run by a thread that has just been woken. On a virtual machine whose vCPUs go idle
while the thread sleeps, caches and branch predictors come back cold and that figure is a
multiple of the first; on a busy or bare-metal machine the two are close.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time


def work() -> int:
    d = {}
    for i in range(300):
        d[str(i)] = i * 2
    return sum(d.values())


def measure(n: int) -> tuple[float, float, float]:
    """(work back to back, work + a round trip, the round trip alone), in CPU µs each."""
    t0 = time.process_time()
    for _ in range(n):
        work()
    back_to_back = (time.process_time() - t0) / n * 1e6
    a, b = socket.socketpair()

    def peer() -> None:
        while b.recv(1):
            b.send(b"y")

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    t0 = time.process_time()
    for _ in range(n):
        work()
        a.send(b"x")
        a.recv(1)
    with_wait = (time.process_time() - t0) / n * 1e6
    t0 = time.process_time()
    for _ in range(n):
        a.send(b"x")
        a.recv(1)
    wait = (time.process_time() - t0) / n * 1e6
    a.close()
    thread.join(timeout=1.0)
    b.close()
    return back_to_back, with_wait, wait


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000, help="units of work per way (20,000)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.rounds):
        back_to_back, with_wait, wait = measure(args.n)
        print(
            f"work back to back {back_to_back:.1f} µs; after a wait {with_wait - wait:.1f} µs "
            f"({(with_wait - wait) / back_to_back:.1f}x); the round trip alone {wait:.1f} µs (both threads)"
        )


if __name__ == "__main__":
    main()
