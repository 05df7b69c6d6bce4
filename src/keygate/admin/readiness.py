"""``/readyz``: whether this instance can do its work, dependency by dependency.

``/healthz`` answers whether the process serves at all (liveness); ``/readyz`` asks each
dependency: the store (``Store.ping``) and whatever else ``server.py`` registers (shared counters,
say) as a named check. A check is a callable that returns normally (or an awaitable that does)
when its dependency works, and raises otherwise. The answer is JSON, 200 when every check passed
and 503 when one did not, and says no more than the name of the failure: it needs no token, so a
load balancer can ask it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Check = tuple[str, Callable[[], Any]]
TIMEOUT = 2.0  # seconds a check may take before it counts as down


async def _run(check: Callable[[], Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(run_in_threadpool(check), TIMEOUT)
        if inspect.isawaitable(result):
            await asyncio.wait_for(result, TIMEOUT)
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def readyz(checks: Sequence[Check]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        results = await asyncio.gather(*(_run(check) for _, check in checks))
        report = {name: result for (name, _), result in zip(checks, results, strict=True)}
        ready = all(r["ok"] for r in results)
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "checks": report}, 200 if ready else 503
        )

    return endpoint
