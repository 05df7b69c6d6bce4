"""Behavioural analytics: learn each key's normal, notice a leaked or abused key, act on it.

- :mod:`.features`: what the request path records (a tuple per request) and shared helpers;
- :mod:`.baselines`: per-key and per-team baselines and windows;
- :mod:`.detectors`, :mod:`.engine`: the detectors and the analyser (clock given, no I/O);
- :mod:`.actions`: the alert sink interface and the board of temporary actions;
- :mod:`.watch`: the analyser in a running gateway (off the request path, stored events).

The request-path side is :mod:`keygate.guards.anomaly`; operators use :mod:`keygate.ops.anomalies`.
See docs/anomalies.md.
"""
