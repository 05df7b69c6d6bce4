"""The worst case of a request before it is forwarded: estimated prompt tokens plus max output.

The prompt estimate is the body size divided by four (about four bytes of English per token; JSON
punctuation makes it an overestimate, which is the safe side). The output is the request's own
max tokens field (``Route.output_fields``), or the configured default when it gives none.
"""

from __future__ import annotations

from ..context import Context, Estimate

_NOTHING: Estimate = (0, 0, False, "")


def estimate(ctx: Context, default_output: int) -> Estimate:
    """The request's worst case, computed once per request by the first limit guard that needs it
    and kept in ``ctx.estimate`` for the others (which look there first)."""
    route = ctx.route
    if route is None or not route.metered:
        found = _NOTHING
    elif not route.output_fields:  # embeddings: a prompt and no output
        found = (len(ctx.body) + 3) >> 2, 0, False, ""
    else:
        fields = route.output_fields
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
    ctx.estimate = found
    return found
