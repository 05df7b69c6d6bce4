"""The worst case of a request before it is forwarded: estimated prompt tokens plus max output.

The prompt estimate is the body size divided by four (about four bytes of English per token; JSON
punctuation makes it an overestimate, which is the safe side). The output is the request's own
max tokens field, or the configured default when it gives none.
"""

from __future__ import annotations

from ..chain import Context

TOKEN_ROUTES = frozenset({"chat.completions", "completions", "responses", "embeddings"})
OUTPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "chat.completions": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "embeddings": (),
}

Estimate = tuple[int, int, bool]
"""``(prompt, output, given)``: estimated prompt tokens, max output tokens, and whether the request
set its own max output tokens. A plain tuple: it is made for every limited request."""


def estimate(ctx: Context, default_output: int) -> Estimate:
    """The request's worst case, computed once per request and shared by the limit guards."""
    extras = ctx.extras
    found: Estimate | None = extras.get("estimate")
    if found is not None:
        return found
    route = ctx.route
    fields = OUTPUT_FIELDS.get(route.name) if route is not None else None
    if fields is None:
        found = extras["estimate"] = (0, 0, False)
        return found
    found = (len(ctx.body) + 3) >> 2, default_output if fields else 0, False
    data = ctx.json
    if fields and data:
        for name in fields:
            value = data.get(name)
            # type() is int: a bool is not a token count (isinstance(True, int) holds)
            if type(value) is int and value > 0:
                found = found[0], value, True
                break
    extras["estimate"] = found
    return found
