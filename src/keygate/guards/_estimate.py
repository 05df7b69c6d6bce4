"""The worst case of a request before it is forwarded, the output cap that holds the upstream to it,
and the charge of a request whose usage never arrived.

- The prompt estimate is the body size divided by four (about four bytes of English per token; JSON
  punctuation makes it an overestimate, which is the safe side), plus, for each image input part
  (``image_url``, ``input_image``: base64 or a URL, whose size the body does not show), the most an
  image can cost on the model (``LimitSettings.image_tokens``), and for each file input part
  (``file``, ``input_file``) ``limits.file_input_tokens``; with no such figure configured a file
  cannot be bounded, and the request is refused. The parts are looked for only when the body's
  bytes mention one of those types, and only for requests a budget or a token rate applies to.
- The output is the request's own max tokens field (``Route.output_fields``; the largest, when it
  sets several), or the configured default when it gives none, times the number of outputs it asks
  for (``Route.output_multipliers``: chat ``n``, completions ``best_of``/``n``).
- :func:`cap_output` sends the request with its output cap set to what was reserved, so the
  upstream itself stops there (reasoning tokens, which are never streamed, included).
- :func:`charge_unreported` gives a request that may have been billed but reported no usage (the
  client left, the stream was cut, the upstream went silent or answered no JSON) its reservation
  as its usage, marked as an estimate.
"""

from __future__ import annotations

from math import ceil
from typing import Any

from ..context import Context, Estimate
from ..errors import InvalidRequest, KeygateError
from ..limitconf import LimitSettings

_NOTHING: Estimate = (0, 0, False, "", 1)
# Bytes that a body with an image or file part contains (JSON escapes quotes inside strings, so
# text that merely mentions these words does not match).
_MEDIA_MARKS = (b'"image_url"', b'"input_image"', b'"file"', b'"input_file"')
_IMAGE_TYPES = frozenset({"image_url", "input_image"})
_FILE_TYPES = frozenset({"file", "input_file"})
_FILES_UNBOUNDED = InvalidRequest(
    "This key has a budget or a token rate limit, and a file input cannot be metered before it is "
    "sent (a document is billed as its text plus an image per page).",
    code="file_input_not_metered",
)
# Client-facing errors after which the upstream may have received, and billed, the request.
_MAYBE_BILLED = frozenset({"upstream_timeout", "upstream_connection_error"})


def media_parts(data: Any) -> tuple[int, int]:
    """``(images, files)``: the image and file input parts anywhere in a JSON body (no recursion,
    so nesting depth costs no stack)."""
    images = files = 0
    stack = [data]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            kind = item.get("type")
            if type(kind) is str:
                if kind in _IMAGE_TYPES:
                    images += 1
                elif kind in _FILE_TYPES:
                    files += 1
            stack.extend(v for v in item.values() if type(v) is dict or type(v) is list)
        elif type(item) is list:
            stack.extend(v for v in item if type(v) is dict or type(v) is list)
    return images, files


def estimate(ctx: Context, limits: LimitSettings) -> Estimate | KeygateError:
    """The request's worst case, computed once per request by the first limit guard that needs it
    and kept in ``ctx.estimate`` for the others (which look there first); or why it has none."""
    route = ctx.route
    if route is None or not route.metered:
        ctx.estimate = _NOTHING
        return _NOTHING
    body = ctx.body
    prompt = (len(body) + 3) >> 2
    data = ctx.json
    image_url, input_image, file, input_file = _MEDIA_MARKS
    if data is not None and (image_url in body or input_image in body or file in body or input_file in body):
        images, files = media_parts(data)
        if files:
            if limits.file_input_tokens is None:
                return _FILES_UNBOUNDED
            prompt += files * limits.file_input_tokens
        if images:
            prompt += images * limits.image_tokens(ctx.model)
    fields = route.output_fields
    if not fields:  # embeddings: a prompt and no output
        found: Estimate = (prompt, 0, False, "", 1)
    else:
        output, given, field, present = limits.default_max_output_tokens, False, "", 0
        choices = 1
        if data:
            for name in fields:
                if name in data:
                    present += 1
                    field = field or name
                    value = data[name]
                    # type() is int: a bool is not a token count (isinstance(True, int) holds)
                    if type(value) is int and value > 0 and (not given or value > output):
                        output, given = value, True
            given = given and present == 1  # the body caps the output at `output` in one field
            for name in route.output_multipliers:
                value = data.get(name)
                if (type(value) is int or type(value) is float) and value > choices:
                    choices = ceil(value)
        found = (prompt, output * choices, given, field or fields[0], choices)
    ctx.estimate = found
    return found


def set_output_cap(ctx: Context, value: int) -> None:
    """Set every output cap field the body has (the route's first when it has none) to ``value``."""
    data = ctx.json
    route = ctx.route
    assert data is not None and route is not None
    present = [f for f in route.output_fields if f in data]
    for name in present[1:]:
        data[name] = value
    ctx.set_json(present[0] if present else route.output_fields[0], value)


def cap_output(ctx: Context, est: Estimate) -> Estimate:
    """Send the request with its output capped at what ``est`` reserves, unless the body already
    says so itself; returns the estimate as sent (also kept in ``ctx.estimate``)."""
    prompt, output, given, field, choices = est
    if given or not output or not field or ctx.json is None:
        return est
    per = output // choices
    set_output_cap(ctx, per)
    est = (prompt, per * choices, True, field, choices)
    ctx.estimate = est
    return est


def charge_unreported(ctx: Context, prompt: int, output: int) -> None:
    """A request that reached the upstream but reported no usage is charged ``prompt + output``
    (its reservation), marked as an estimate; one the upstream answered with an error, or that
    never reached it, stays at what it reported (nothing)."""
    usage = ctx.usage
    if usage.reported or usage.estimated or ctx.upstream is None:
        return
    status, error = ctx.status, ctx.error
    if status < 400 or status == 499 or (error is not None and error.code in _MAYBE_BILLED):
        usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens = prompt, output, 0
        usage.estimated = True
