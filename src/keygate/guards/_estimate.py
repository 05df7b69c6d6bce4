"""The worst case of a request before it is forwarded: estimated prompt tokens plus max output.

The prompt estimate is the body size divided by four (about four bytes of English per token; JSON
punctuation makes it an overestimate, which is the safe side). The output is the request's own
max tokens field, or the configured default when it gives none.
"""

from __future__ import annotations

from ..context import Context

TOKEN_ROUTES = frozenset({"chat.completions", "completions", "responses", "embeddings"})
OUTPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "chat.completions": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "embeddings": (),
}

Estimate = tuple[int, int, bool, str]
"""``(prompt, output, given, field)``: estimated prompt tokens, max output tokens, whether the
request set a valid max itself, and the body field that caps the output (the first of the route's
fields the request has, else the route's usual one; "" for routes without one). A plain tuple: it
is made for every limited request."""


def estimate(ctx: Context, default_output: int) -> Estimate:
    """The request's worst case. Computed once per request and shared by the limit guards through
    ``ctx.extras["estimate"]``, which callers look at first."""
    route = ctx.route
    fields = OUTPUT_FIELDS.get(route.name) if route is not None else None
    if fields is None:
        found: Estimate = (0, 0, False, "")
    elif not fields:  # embeddings: a prompt and no output
        found = (len(ctx.body) + 3) >> 2, 0, False, ""
    else:
        output, given, field = default_output, False, ""
        data = ctx.json
        if data:
            for name in fields:
                if name in data:
                    field = field or name
                    value = data[name]
                    # type() is int: a bool is not a token count (isinstance(True, int) holds)
                    if type(value) is int and value > 0:
                        output, given = value, True
                        break
        found = (len(ctx.body) + 3) >> 2, output, given, field or fields[0]
    ctx.extras["estimate"] = found
    return found
