"""Batches under a key's policy: what a batch input file asks for, and what its results used.

keygate keeps no file bodies. When a file with ``purpose=batch`` is uploaded through keygate
(``POST /v1/files``, at most :data:`MAX_SUMMARISED` bytes), it reads the JSONL once, in the upload
request, and keeps a summary with the file's ownership record: how many lines, which routes they
call (``url``, matched against keygate's own allowlist), and per model the worst case in tokens
(each line's body estimated exactly as a direct request is, ``_estimate.estimate``). At batch
creation that summary is checked against the key's and team's policy (models, routes) and its
worst case held on their budgets (``budget.BudgetGuardBase.hold_batch``). A batch input file
keygate has no summary of (uploaded in parts, assigned by an operator, or larger than the bound)
is refused at batch creation whenever a policy rule or a budget applies to the key.

When a batch's output file is read through keygate, the usage of its lines is summed per model
and the batch's hold settled to it (``results_usage``).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from .. import routes
from ..context import Context
from ..errors import InvalidRequest, KeygateError, PermissionDenied
from ..limitconf import LimitSettings
from ._estimate import estimate
from .policy import model_allowed

MAX_SUMMARISED: Final = 64 * 1024 * 1024  # (the body limit bounds it first: 10 MiB by default)

Summary = dict[str, Any]
"""``{"lines": n, "routes": [names], "models": {model: [prompt, output]}, "unknown": n}``."""


def summarise(jsonl: bytes, limits: LimitSettings) -> Summary:
    """The summary of a batch input file (lines that cannot be read count as ``unknown``: the
    upstream refuses them, and a policy check refuses a file with any)."""
    models: dict[str, list[int]] = {}
    names: set[str] = set()
    lines = unknown = 0
    for raw in jsonl.splitlines():
        if not raw.strip():
            continue
        lines += 1
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            unknown += 1
            continue
        body = line.get("body") if type(line) is dict else None
        url = line.get("url") if type(line) is dict else None
        route = routes.match("POST", url) if type(url) is str else None
        model = body.get("model") if type(body) is dict else None
        if route is None or type(url) is not str or type(body) is not dict or type(model) is not str:
            unknown += 1
            continue
        names.add(route.name)
        probe = Context("batch-line", "POST", url, "", {}, "")
        probe.route, probe.json, probe.model = route, body, model
        probe.body = orjson.dumps(body)
        found = estimate(probe, limits)
        if isinstance(found, KeygateError):  # (a file input: no bound)
            unknown += 1
            continue
        worst = models.setdefault(model, [0, 0])
        worst[0] += found[0]
        worst[1] += found[1]
    return {"lines": lines, "routes": sorted(names), "models": models, "unknown": unknown}


def check_lines(summary: Summary, policies: tuple[dict[str, Any], ...], endpoint: Any) -> KeygateError | None:
    """The refusal of a batch whose lines (or ``endpoint``) the policies do not allow, or None."""
    if summary.get("unknown"):
        return InvalidRequest(
            "The batch input file has lines keygate cannot check (not JSON, no model, a route it does "
            "not forward, or a file input).",
            code="batch_input_not_checked",
            param="input_file_id",
        )
    target = routes.match("POST", endpoint) if type(endpoint) is str else None
    for policy in policies:
        allowed_routes = policy.get("routes")
        if allowed_routes:
            for name in [*summary["routes"], *([target.name] if target else [])]:
                if name not in allowed_routes:
                    return PermissionDenied(
                        f"This key may not use the {name} endpoint (named in the batch).",
                        code="route_not_allowed",
                        param="input_file_id",
                    )
        allowed_models = policy.get("models")
        if allowed_models:
            for model in summary["models"]:
                if not model_allowed(model, allowed_models):
                    return PermissionDenied(
                        f"This key may not use the model '{model[:200]}' (named in the batch).",
                        code="model_not_allowed",
                        param="input_file_id",
                    )
    return None


def results_usage(jsonl: bytes) -> dict[str, list[int]]:
    """Per model ``[prompt, completion, cached]`` tokens of a batch output file's lines."""
    used: dict[str, list[int]] = {}
    for raw in jsonl.splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        response = line.get("response") if type(line) is dict else None
        body = response.get("body") if type(response) is dict else None
        usage = body.get("usage") if type(body) is dict else None
        if type(usage) is not dict:
            continue
        model = body.get("model") if type(body.get("model")) is str else ""  # type: ignore[union-attr]
        prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
        completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached = details.get("cached_tokens", 0) if type(details) is dict else 0
        row = used.setdefault(model, [0, 0, 0])
        for i, value in enumerate((prompt, completion, cached)):
            if type(value) is int and value > 0:
                row[i] += value
    return used
