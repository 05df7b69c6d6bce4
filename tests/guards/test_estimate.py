"""A request's worst case before forwarding: estimated prompt tokens (body bytes / 4, images and
files at their worst case) plus the max output tokens it asks for (or the configured default) times
the outputs it asks for, computed once and shared via ctx.estimate; the cap that holds the upstream
to it; and the charge of a request whose usage never arrived."""

from __future__ import annotations

from typing import Any

import pytest

from keygate.config import Upstream
from keygate.errors import InvalidRequest, KeygateError
from keygate.guards._estimate import cap_output, charge_unreported, estimate, media_parts
from keygate.limitconf import LimitSettings, parse_limits
from keygate.testing import context


def _limits(output: int = 4096, **more: Any) -> LimitSettings:
    return parse_limits({"default_max_output_tokens": output, **more})


L4096 = _limits()


@pytest.mark.parametrize(
    ("body", "output", "given", "field"),
    [
        ({}, 4096, False, "max_completion_tokens"),
        ({"max_tokens": 100}, 100, True, "max_tokens"),
        # two caps: the larger is the worst case, and the body does not say which one holds
        ({"max_completion_tokens": 50, "max_tokens": 100}, 100, False, "max_completion_tokens"),
        ({"max_completion_tokens": None, "max_tokens": 100}, 100, False, "max_completion_tokens"),
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
    est = estimate(ctx, L4096)
    assert est == ((len(ctx.body) + 3) // 4, output, given, field, 1)
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
    assert estimate(ctx, L4096) == ((len(ctx.body) + 3) // 4, 7, True, field, 1)
    # A field of another route is not this route's cap.
    other = context("POST", path, json={"model": "m", "max_completion_tokens": 7})
    assert estimate(other, _limits(99))[1:] == (99, False, field, 1)


@pytest.mark.parametrize(
    ("path", "body", "choices"),
    [
        ("/v1/chat/completions", {"n": 5}, 5),
        ("/v1/chat/completions", {"n": 1}, 1),
        ("/v1/chat/completions", {"n": 2.5}, 3),  # (the upstream refuses it; never counted low)
        ("/v1/chat/completions", {"n": True}, 1),
        ("/v1/chat/completions", {"best_of": 9}, 1),  # not a chat field
        ("/v1/completions", {"n": 2, "best_of": 6}, 6),  # best_of outputs are generated, n returned
        ("/v1/completions", {"n": 4}, 4),
        ("/v1/responses", {"n": 4}, 1),
    ],
)
def test_outputs_asked_for_multiply_the_output(path: str, body: dict[str, Any], choices: int) -> None:
    ctx = context("POST", path, json={"model": "m", "max_tokens": 10, "max_output_tokens": 10, **body})
    est = estimate(ctx, _limits(10))
    assert isinstance(est, tuple)
    assert (est[1], est[4]) == (10 * choices, choices)


def test_image_parts_count_at_their_worst_case_per_model() -> None:
    url = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}
    chat = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, url, url]}],
    }
    ctx = context(json=chat)
    est = estimate(ctx, L4096)
    assert isinstance(est, tuple) and est[0] == (len(ctx.body) + 3) // 4 + 2 * 3800  # the default
    # gpt-4o-mini bills an image at up to 48,169 tokens (its own figure in the shipped prices)
    mini = context(json={**chat, "model": "gpt-4o-mini"})
    assert estimate(mini, L4096)[0] == (len(mini.body) + 3) // 4 + 2 * 48169  # type: ignore[index]
    # Responses input_image, with a file id; the figure is configurable
    responses = {
        "model": "x",
        "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}],
    }
    ctx = context("POST", "/v1/responses", json=responses)
    assert estimate(ctx, _limits(image_input_tokens=500))[0] == (len(ctx.body) + 3) // 4 + 500  # type: ignore[index]


def test_text_that_mentions_images_is_not_an_image() -> None:
    text = 'please describe {"type": "image_url"} and "input_file"'
    ctx = context(json={"model": "m", "messages": [{"role": "user", "content": text}]})
    assert estimate(ctx, L4096)[0] == (len(ctx.body) + 3) // 4  # type: ignore[index]


def test_file_parts_are_refused_unless_a_worst_case_is_configured() -> None:
    part = {"type": "file", "file": {"file_id": "file-1"}}
    body = {"model": "m", "messages": [{"role": "user", "content": [part]}]}
    refused = estimate(context(json=body), L4096)
    assert isinstance(refused, InvalidRequest) and refused.code == "file_input_not_metered"
    ctx = context(json=body)
    assert estimate(ctx, _limits(file_input_tokens=20000))[0] == (len(ctx.body) + 3) // 4 + 20000  # type: ignore[index]
    pdf = {"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_url": "u"}]}]}
    assert isinstance(estimate(context("POST", "/v1/responses", json=pdf), L4096), KeygateError)


def test_media_parts_walks_deep_bodies_without_recursion() -> None:
    deep: Any = {"type": "input_image"}
    for _ in range(5000):
        deep = [deep]
    assert media_parts({"input": deep, "x": [{"type": "input_file"}, {"type": ["odd"]}]}) == (1, 1)


def test_estimate_of_embeddings_and_unmetered_routes() -> None:
    emb = context("POST", "/v1/embeddings", json={"model": "m", "input": "x" * 40})
    assert estimate(emb, L4096) == ((len(emb.body) + 3) // 4, 0, False, "", 1)
    mod = context("POST", "/v1/moderations", json={"input": "x"})
    assert estimate(mod, L4096) == (0, 0, False, "", 1)
    assert mod.estimate == (0, 0, False, "", 1)


def test_a_request_without_a_route_or_a_body_costs_its_default_at_most() -> None:
    nowhere = context("POST", "/v1/unknown", json={"model": "m"})
    assert nowhere.route is None and estimate(nowhere, L4096) == (0, 0, False, "", 1)
    empty = context("POST", "/v1/chat/completions")  # no body read (yet): the default output
    assert estimate(empty, _limits(10)) == (0, 10, False, "max_completion_tokens", 1)


def test_the_prompt_estimate_rounds_up_to_whole_tokens() -> None:
    for size in range(1, 9):
        ctx = context(body=b"x" * size, parsed=False)
        ctx.body = b"x" * size
        assert estimate(ctx, _limits(1))[0] == -(-size // 4)  # type: ignore[index]


def test_cap_output_sets_every_cap_field_per_output() -> None:
    ctx = context(json={"model": "m", "n": 3, "max_tokens": 999, "max_completion_tokens": "x"})
    est = estimate(ctx, L4096)
    assert isinstance(est, tuple)
    capped = cap_output(ctx, est)
    assert ctx.json is not None and ctx.json["max_tokens"] == ctx.json["max_completion_tokens"] == 999
    assert capped[1:] == (2997, True, "max_completion_tokens", 3) and ctx.estimate == capped
    ctx.upstream_body()  # serialised once, as the forwarder does
    assert cap_output(ctx, capped) is capped and not ctx.json_changed  # already capped: no rewrite


def test_charge_unreported_charges_what_may_have_been_billed() -> None:
    upstream = Upstream("openai", "https://api.openai.com/v1", "", None)

    def charged(status: int, code: str | None = None, reached: bool = True, reported: bool = False) -> int:
        ctx = context(json={"model": "m"})
        ctx.status = status
        ctx.upstream = upstream if reached else None
        ctx.usage.reported = reported
        if code is not None:
            ctx.error = KeygateError("x", code=code)
        charge_unreported(ctx, 10, 20)
        assert ctx.usage.estimated == (ctx.usage.total_tokens == 30)
        return ctx.usage.total_tokens

    assert charged(200) == 30  # no usage in the answer
    assert charged(200, "budget_exceeded") == 30  # a stream cut off
    assert charged(499) == 30  # the client left
    assert charged(504, "upstream_timeout") == 30  # the upstream went silent
    assert charged(502, "upstream_connection_error") == 30
    assert charged(400) == 0 and charged(500) == 0  # the upstream answered an error: not billed
    assert charged(502, "upstream_connect_failed") == 0  # never sent
    assert charged(200, reached=False) == 0 and charged(200, reported=True) == 0
