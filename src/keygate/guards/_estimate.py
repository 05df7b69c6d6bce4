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


class Estimate:
    __slots__ = ("given", "output", "prompt")

    def __init__(self, prompt: int, output: int, given: bool) -> None:
        self.prompt = prompt
        self.output = output
        self.given = given  # the request set its own max output tokens

    @property
    def total(self) -> int:
        return self.prompt + self.output


def estimate(ctx: Context, default_output: int) -> Estimate:
    """The request's worst case, computed once per request and shared by the limit guards."""
    found: Estimate | None = ctx.extras.get("estimate")
    if found is not None:
        return found
    route = ctx.route.name if ctx.route is not None else ""
    prompt = (len(ctx.body) + 3) // 4 if route in TOKEN_ROUTES else 0
    output, given = 0, False
    fields = OUTPUT_FIELDS.get(route)
    if fields:
        output = default_output
        data = ctx.json or {}
        for name in fields:
            value = data.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                output, given = value, True
                break
    found = Estimate(prompt, output, given)
    ctx.extras["estimate"] = found
    return found
