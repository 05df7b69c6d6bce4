"""A request's worst case before forwarding: estimated prompt tokens (body bytes / 4) plus the max
output tokens it asks for (or the configured default), computed once and shared via ctx.estimate."""

from __future__ import annotations

from typing import Any

import pytest

from keygate.guards._estimate import estimate
from keygate.testing import context


@pytest.mark.parametrize(
    ("body", "output", "given", "field"),
    [
        ({}, 4096, False, "max_completion_tokens"),
        ({"max_tokens": 100}, 100, True, "max_tokens"),
        ({"max_completion_tokens": 50, "max_tokens": 100}, 50, True, "max_completion_tokens"),
        ({"max_completion_tokens": None, "max_tokens": 100}, 100, True, "max_completion_tokens"),
        ({"max_completion_tokens": "x", "max_tokens": True}, 4096, False, "max_completion_tokens"),
        ({"max_tokens": 0}, 4096, False, "max_tokens"),
        ({"max_tokens": -5}, 4096, False, "max_tokens"),
        ({"max_tokens": 12.0}, 4096, False, "max_tokens"),  # not a whole token count
    ],
)
def test_estimate_reads_the_output_cap_and_names_the_field_that_sets_it(
    body: dict[str, Any], output: int, given: bool, field: str
) -> None:
    ctx = context(json={"model": "m", **body})
    est = estimate(ctx, 4096)
    assert est == ((len(ctx.body) + 3) // 4, output, given, field)
    assert ctx.estimate == est  # shared with the other limit guards


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 7}, "max_tokens"),
        ("/v1/responses", {"model": "m", "input": "hi", "max_output_tokens": 7}, "max_output_tokens"),
    ],
)
def test_each_route_has_its_own_output_field(path: str, body: dict[str, Any], field: str) -> None:
    ctx = context("POST", path, json=body)
    assert estimate(ctx, 4096) == ((len(ctx.body) + 3) // 4, 7, True, field)
    # A field of another route is not this route's cap.
    other = context("POST", path, json={"model": "m", "max_completion_tokens": 7})
    assert estimate(other, 99)[1:] == (99, False, field)


def test_estimate_of_embeddings_and_unmetered_routes() -> None:
    emb = context("POST", "/v1/embeddings", json={"model": "m", "input": "x" * 40})
    assert estimate(emb, 4096) == ((len(emb.body) + 3) // 4, 0, False, "")
    mod = context("POST", "/v1/moderations", json={"input": "x"})
    assert estimate(mod, 4096) == (0, 0, False, "")
    assert mod.estimate == (0, 0, False, "")


def test_a_request_without_a_route_or_a_body_costs_its_default_at_most() -> None:
    nowhere = context("POST", "/v1/unknown", json={"model": "m"})
    assert nowhere.route is None and estimate(nowhere, 4096) == (0, 0, False, "")
    empty = context("POST", "/v1/chat/completions")  # no body read (yet): the default output
    assert estimate(empty, 10) == (0, 10, False, "max_completion_tokens")


def test_the_prompt_estimate_rounds_up_to_whole_tokens() -> None:
    for size in range(1, 9):
        ctx = context(body=b"x" * size, parsed=False)
        ctx.body = b"x" * size
        assert estimate(ctx, 1)[0] == -(-size // 4)
