"""Test helpers for keygate and for the apps behind it, all real components.

- :class:`MockUpstream`: a mock OpenAI upstream, a real HTTP server on loopback
  (``python -m keygate.testing`` runs one on its own).
- :class:`LocalGateway` and :func:`serving`: a real keygate in this process (in a background thread,
  or in the current event loop), with its CLI run in process.
- :func:`context`, :func:`run_request`: one guard on one request, without a server.
"""

from .gateway import CliResult, LocalGateway, Running, free_ports, serving
from .guards import context, key_record, run_complete, run_request
from .mock import DEFAULT_API_KEY, FAILURE_MODES, MockUpstream, RecordedRequest

__all__ = [
    "DEFAULT_API_KEY",
    "FAILURE_MODES",
    "CliResult",
    "LocalGateway",
    "MockUpstream",
    "RecordedRequest",
    "Running",
    "context",
    "free_ports",
    "key_record",
    "run_complete",
    "run_request",
    "serving",
]
