"""Read named fields of a ``multipart/form-data`` body, strictly and in linear time.

The body guard needs the ``model`` of an upload (audio transcriptions and translations, image
edits and variations) to apply a model allowlist, and the upstream must see the very same model.
So the body is parsed as a whole, by a real multipart parser (the ``multipart`` library's
``PushMultipartParser`` in strict mode: every boundary and header line is found with C-level
searches, so the work is linear in the body), and everything two parsers could read differently
is refused rather than guessed:

- the boundary comes from the Content-Type header (``boundary=`` once, 1-70 characters of RFC
  2046's set); a missing or invalid one is an error;
- each part has exactly one ``Content-Disposition: form-data`` header (header name in any case),
  whose parameters follow RFC 7578 (``name`` quoted or not, extra parameters, parameter names in
  any case); a parameter given twice, an extended ``name*=`` parameter (RFC 7578 §4.2 forbids
  them), and a ``name`` with a backslash, percent sign or quote in it are errors;
- a wanted field may appear once: a second part of that name is an error, and so is a part whose
  name is a wanted one in another case or with spaces (``MODEL``, ``" model"``), which another
  parser might take for it;
- a part's header lines end in CRLF and hold no other CR or LF (a bare CR or LF ends a line for
  some parsers and not for others; the library strips it from a header name):
  :func:`check_header_lines`;
- a wanted field's value is UTF-8 without control characters (a line break in it could end the
  part early for a parser that accepts a bare LF);
- the body ends with the closing boundary (an optional CRLF after it, no epilogue), and has at
  most :data:`MAX_PARTS` parts.

Entry points: :func:`parse_fields` (a whole body at once) and :class:`FieldScanner` (the same,
fed in chunks, so a caller can yield to its event loop between them). Neither imports anything
else of keygate: the fuzz tests drive them directly. Errors are :class:`FormError`, whose message
never quotes the body.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Final

import multipart as _mp

MAX_PARTS: Final = 256  # the OpenAI upload endpoints take a few fields and at most 16 images
MAX_VALUE: Final = 256  # the longest wanted field value kept (a model name is far shorter)
STEP: Final = 1 << 16  # bytes fed to the parser at a time (one large chunk is slower: copies)

# Possessive quantifiers, and case handled without re.IGNORECASE (which made the character classes
# ten times slower): a 4 KiB header is checked in about 40 µs.
_RFC_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]++"  # noqa: S105 (RFC 9110's token, not a secret)
_QUOTED = r'"(?:[^"\\\r\n]++|\\[^\r\n])*+"'
_PARAM = re.compile(rf";[ \t]*+({_RFC_TOKEN})[ \t]*+=[ \t]*+({_RFC_TOKEN}|{_QUOTED})[ \t]*+")
_END = re.compile(r";?[ \t]*+")


def _anycase(text: str) -> str:
    return "".join(f"[{c.upper()}{c}]" if c.isalpha() else re.escape(c) for c in text)


_DISPOSITION = re.compile(rf"[ \t]*+{_anycase('form-data')}[ \t]*+")
_CONTENT_TYPE = re.compile(rf"[ \t]*+{_anycase('multipart/form-data')}[ \t]*+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


class FormError(ValueError):
    """The body is not a multipart body keygate can read unambiguously (a 400 for the client)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _params(value: str, head: re.Pattern[str], what: str) -> dict[str, str]:
    """The parameters of a header value that starts with ``head``, by lower-cased name, quotes
    removed. The whole value must be ``head`` and parameters (RFC 9110 tokens and quoted
    strings); a parameter given twice, or in RFC 2231's extended form (``name*=``), is an error."""
    m = head.match(value)
    if m is None:
        raise FormError(f"The multipart body has an invalid {what} header.")
    pos = m.end()
    found: dict[str, str] = {}
    while (m := _PARAM.match(value, pos)) is not None:
        pos = m.end()
        name = m.group(1).lower()
        if "*" in name:
            raise FormError(f"The multipart body's {what} header has an extended parameter.")
        if name in found:
            raise FormError(f"The multipart body's {what} header gives '{name}' twice.")
        raw = m.group(2)
        found[name] = raw[1:-1] if raw[0] == '"' else raw
    if _END.fullmatch(value, pos) is None:
        raise FormError(f"The multipart body has an invalid {what} header.")
    return found


def boundary_of(content_type: str) -> bytes:
    """The boundary a ``multipart/form-data`` Content-Type header declares."""
    params = _params(content_type, _CONTENT_TYPE, "Content-Type")
    boundary = params.get("boundary")
    if boundary is None:
        raise FormError("The multipart Content-Type header has no boundary.")
    if "\\" in boundary or _BOUNDARY.fullmatch(boundary) is None:
        raise FormError("The multipart Content-Type header has an invalid boundary.")
    return boundary.encode("ascii")


def check_header_lines(body: bytes, boundary: bytes) -> None:
    """Refuse a body where a part's header block holds a CR or LF that is not part of a CRLF.

    Each part starts after a delimiter line (``--boundary`` then CRLF, after a CRLF but for the
    first) and its headers end at the first blank line; both are found with C-level searches, so
    this is linear in the body and copies only the header blocks. It looks at most at
    :data:`MAX_PARTS` + 1 parts: the parser refuses a body with more."""
    start_line = b"--" + boundary + b"\r\n"
    delimiter = b"\r\n" + start_line
    if body.startswith(start_line):
        pos = 0
    else:
        pos = body.find(delimiter)
        pos = pos + 2 if pos >= 0 else -1
    for _ in range(MAX_PARTS + 1):
        if pos < 0:
            return
        head = pos + len(start_line)
        end = body.find(b"\r\n\r\n", head)
        if end < 0:
            return  # no header block end: the parser refuses the body
        lines = body[head:end].replace(b"\r\n", b"")
        if b"\r" in lines or b"\n" in lines:
            raise FormError("A part of the multipart body has a malformed header line.")
        nxt = body.find(delimiter, end + 2)
        pos = nxt + 2 if nxt >= 0 else -1


class FieldScanner:
    """Parse one body fed in chunks (in order, then :meth:`close`), keeping the wanted fields."""

    def __init__(
        self, boundary: bytes, names: Collection[str], size: int, raw: str | None = None, raw_limit: int = 0
    ) -> None:
        # ``raw``: one more part whose bytes are kept as they are (up to ``raw_limit``; longer:
        # ``raw_value`` stays None), e.g. the file of an upload, for a caller that reads it.
        self._raw_name = raw
        self._raw_limit = raw_limit
        self._raw_parts: list[bytes] | None = None
        self._raw_size = 0
        self.raw_value: bytes | None = None
        self._raw_seen = False
        self._names = frozenset(names)
        self._folded = {n.casefold(): n for n in (*self._names, *((raw,) if raw else ()))}
        self._parser = _mp.PushMultipartParser(
            boundary, content_length=size, max_segment_count=MAX_PARTS, strict=True
        )
        self._final = b"--" + boundary + b"--"
        self._size = size
        self._fed = 0
        self._tail = b""  # the body's last bytes, held back for close()
        self._current: str | None = None  # the wanted field whose part is being read
        self._value: list[bytes] = []
        self._kept = 0
        self.fields: dict[str, str] = {}

    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk. The body's last bytes (its closing boundary) are held back for
        :meth:`close`, which parses them on their own."""
        start = self._fed
        self._fed += len(chunk)
        if self._fed > self._size:
            raise FormError("The multipart body is longer than declared.")
        cut = self._size - len(self._final) - 4  # CRLF, closing boundary, optional CRLF
        if self._fed > cut:
            keep = max(0, cut - start)
            self._tail += chunk[keep:]
            chunk = chunk[:keep]
        if chunk:
            self._parse(chunk)

    def close(self) -> dict[str, str]:
        """Finish the body; the wanted fields found, by name.

        The closing boundary (with the CRLF in front of it that belongs to it) is parsed alone, as
        the last chunk: had the stream ended before it, the strict parser refuses it as data after
        the end, so nothing can follow a first closing boundary."""
        if self._fed != self._size:
            raise FormError("The multipart body is shorter than declared.")
        tail = self._tail
        end = len(tail) - 2 if tail.endswith(b"\r\n") else len(tail)
        start = end - len(self._final)
        if start < 0 or tail[start:end] != self._final:
            raise FormError("The multipart body does not end with its closing boundary.")
        if start >= 2 and tail[start - 2 : start] == b"\r\n":
            start -= 2
        if start:
            self._parse(tail[:start])
        self._parse(tail[start:])
        try:
            self._parser.close()
        except _mp.MultipartError as exc:
            raise FormError(f"The multipart body is malformed: {exc}") from None
        return self.fields

    def _parse(self, chunk: bytes) -> None:
        try:
            for event in self._parser.parse(chunk):
                if isinstance(event, bytes):
                    if self._current is not None and self._kept <= MAX_VALUE:
                        self._value.append(event)
                        self._kept += len(event)
                    elif self._raw_parts is not None:
                        self._raw_size += len(event)
                        if self._raw_size <= self._raw_limit:
                            self._raw_parts.append(event)
                elif event is None:
                    if self._current is not None:
                        self._finish(self._current)
                    elif self._raw_parts is not None:
                        if self._raw_size <= self._raw_limit:
                            self.raw_value = b"".join(self._raw_parts)
                        self._raw_parts = None
                else:
                    self._begin(event)
        except _mp.MultipartError as exc:
            raise FormError(f"The multipart body is malformed: {exc}") from None

    def _begin(self, segment: _mp.MultipartSegment) -> None:
        dispositions = [v for k, v in segment.headerlist if k == "Content-Disposition"]
        if len(dispositions) != 1:
            raise FormError("A part of the multipart body has more than one Content-Disposition header.")
        name = _params(dispositions[0], _DISPOSITION, "Content-Disposition").get("name")
        if name is None:
            raise FormError("A part of the multipart body has no name.")
        if "\\" in name or "%" in name or '"' in name:
            raise FormError("A part of the multipart body has a name keygate cannot read unambiguously.")
        self._current = None
        if name == self._raw_name:
            if self._raw_seen:
                raise FormError(f"The multipart body gives '{name}' twice.", param=name)
            self._raw_seen = True
            self._raw_parts, self._raw_size = [], 0
            return
        if name in self._names:
            if name in self.fields:
                raise FormError(f"The multipart body gives '{name}' twice.", param=name)
            self._current = name
            self._value = []
            self._kept = 0
            return
        folded = self._folded.get(name.strip().casefold())
        if folded is not None:
            raise FormError(f"The multipart body names a field like '{folded}' another way.", param=folded)

    def _finish(self, name: str) -> None:
        self._current = None
        if self._kept > MAX_VALUE:
            raise FormError(f"The multipart field '{name}' is too long.", param=name)
        try:
            value = b"".join(self._value).decode("utf-8")
        except UnicodeDecodeError:
            raise FormError(f"The multipart field '{name}' is not UTF-8.", param=name) from None
        if _CONTROL.search(value):
            # A parser that ends a part at a bare LF would read a different value: refuse any.
            raise FormError(f"The multipart field '{name}' has a control character.", param=name)
        self.fields[name] = value


def parse_fields(body: bytes, content_type: str, names: Collection[str] = ("model",)) -> dict[str, str]:
    """The fields ``names`` of a whole ``multipart/form-data`` body, by name (those present).

    Raises :class:`FormError` for anything in the module docstring's list. Linear in the body."""
    boundary = boundary_of(content_type)
    check_header_lines(body, boundary)
    scanner = FieldScanner(boundary, names, len(body))
    for start in range(0, len(body), STEP):
        scanner.feed(body[start : start + STEP])
    return scanner.close()
