"""Find secrets and personal data in text: what the prompt-scan guard looks for, and nothing else.

A pure module (no I/O, no keygate imports), so it can be fuzzed and benchmarked alone. It knows
the shapes of credentials that people paste into prompts by mistake and of a few kinds of personal
data, and answers *where* they are and *what kind* they are; what to do about it (refuse, mask,
record) is :mod:`keygate.guards.prompt_scan`'s business.

How it stays cheap (the budget is 30 µs on a 2 KB chat request, ``benchmarks/prompt_scan.py``):

- :class:`AnchorSearch` is the prefilter on the raw body: one Hyperscan pass for the opening shape
  of every secret kind (``AKIA`` and 16 capitals or digits, ``sk-`` and 20 key characters after a
  word boundary, ``-----BEGIN ... PRIVATE KEY``, ...), about 1.5 µs for 2 KB. A body where none
  occurs is clean: the common case. Without Hyperscan (no wheel for the platform) the literal
  anchors are searched one by one, which is correct but costs a pass over the body each.
- Only the rules whose anchor was found then run, each a Python expression that starts with its
  literal (so the engine searches for it quickly), and each match is confirmed by a check per
  kind: the boundary around it, a mix of character classes where real keys are random, keygate's
  own checksum for ``kg_``/``kga_`` keys. (One combined alternation was measured at 500 µs for
  2 KB: CPython's engine tries every branch at every position.)
- Personal data (off unless a policy turns it on) is looked for only where a ``bytes.find`` over
  the text's shape (digits as ``0``, capitals as ``A``) finds a place one can start (an ``@``, a
  ``+`` and a digit, two capitals and two digits, four digits); card numbers must pass the Luhn
  check and a known issuer prefix, IBANs their country's length and the mod-97 check, phone
  numbers must be written internationally (``+``).

Measured alternatives (docs/access-control.md): Yelp's ``detect-secrets`` scans line by line
through dozens of plugins and took about 40 ms for a 2 KB body; RE2 with the anchors as one
expression about 8 µs; Hyperscan about 1.5 µs.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Final, NamedTuple

try:
    import hyperscan as _hyperscan
except ImportError:  # no wheel for this platform: AnchorSearch searches anchor by anchor
    _hyperscan = None  # type: ignore[assignment]

# -- what is looked for ----------------------------------------------------------------------------

SECRET_KINDS: Final[dict[str, str]] = {
    "openai_key": "an OpenAI API key",
    "anthropic_key": "an Anthropic API key",
    "aws_access_key": "an AWS access key",
    "aws_secret_key": "an AWS secret access key",
    "gcp_api_key": "a Google Cloud API key",
    "azure_key": "an Azure storage or service key",
    "github_token": "a GitHub token",
    "slack_token": "a Slack token",
    "slack_webhook": "a Slack webhook URL",
    "stripe_key": "a Stripe live key",
    "private_key": "a private key",
    "jwt": "a JSON Web Token",
    "keygate_key": "a keygate API key",
    "keygate_admin_token": "a keygate admin token",
}
"""Each secret kind, and how an error message names it (never the match itself)."""

PII_KINDS: Final[dict[str, str]] = {
    "card_number": "a payment card number",
    "iban": "an IBAN",
    "email": "an email address",
    "phone": "a phone number",
}
"""Each kind of personal data, and how an error message names it."""

KINDS: Final[dict[str, str]] = {**SECRET_KINDS, **PII_KINDS}

# One rule per secret shape: the literal every match starts with, its kind, and its expression.
# A rule's expression runs only when its literal is in the text (``in`` is a fast substring search
# in C); an expression that starts with a single literal is itself searched quickly by the regex
# engine. (One combined alternation was measured at 500 µs on a 2 KB body: CPython's engine tries
# every branch at every position once a pattern starts with an alternation or a class.)
_RULE_SPECS: Final = (
    ("sk-ant-", "anthropic_key", r"sk-ant-[A-Za-z0-9_-]{32,}"),
    ("sk-", "openai_key", r"sk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"),
    ("sk_live_", "stripe_key", r"sk_live_[A-Za-z0-9]{20,}"),
    ("rk_live_", "stripe_key", r"rk_live_[A-Za-z0-9]{20,}"),
    ("AKIA", "aws_access_key", r"AKIA[A-Z0-9]{16}"),
    ("ASIA", "aws_access_key", r"ASIA[A-Z0-9]{16}"),
    ("AIza", "gcp_api_key", r"AIza[A-Za-z0-9_-]{35}"),
    ("AccountKey=", "azure_key", r"AccountKey=[A-Za-z0-9+/]{40,88}={0,2}"),
    ("SharedAccessKey=", "azure_key", r"SharedAccessKey=[A-Za-z0-9+/]{40,88}={0,2}"),
    ("ghp_", "github_token", r"ghp_[A-Za-z0-9]{36,255}"),
    ("gho_", "github_token", r"gho_[A-Za-z0-9]{36,255}"),
    ("ghs_", "github_token", r"ghs_[A-Za-z0-9]{36,255}"),
    ("ghu_", "github_token", r"ghu_[A-Za-z0-9]{36,255}"),
    ("ghr_", "github_token", r"ghr_[A-Za-z0-9]{36,255}"),
    ("github_pat_", "github_token", r"github_pat_[A-Za-z0-9_]{50,255}"),
    ("xox", "slack_token", r"xox[abposr]-[A-Za-z0-9-]{10,250}"),
    (
        "hooks.slack.com",
        "slack_webhook",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{20,}",
    ),
    (
        "-----BEGIN",
        "private_key",
        # the header, the base64 body (and PEM headers such as Proc-Type), the footer if there
        r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[A-Za-z0-9+/=\s:,.]|-(?!-))*(?:-----END[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----)?",
    ),
    ("eyJ", "jwt", r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}"),
    ("kga_", "keygate_admin_token", r"kga_[0-9A-Za-z]{38}"),
    ("kg_", "keygate_key", r"kg_[0-9A-Za-z]{38}"),
)
_RULES: Final = tuple((anchor, kind, re.compile(rx)) for anchor, kind, rx in _RULE_SPECS)

# The literals of the prefilter: every secret match contains one of them (a test checks it).
# "ecret" is for the labelled AWS secret key (aws_secret_access_key = ..., "SecretAccessKey": ...).
ANCHORS: Final = (*dict.fromkeys(a.encode() for a, _, _ in _RULES if a != "sk-ant-"), b"ecret", b"ECRET")
_ANCHORS_STR: Final = tuple(a.decode() for a in ANCHORS)
ALL_ANCHORS: Final = frozenset(range(len(ANCHORS)))
_ESCAPE_ID: Final = len(ANCHORS)  # the Hyperscan id of an escaped ASCII character
# The rules to run when an anchor was found, by the anchor's index.
_RULES_OF: Final = tuple(tuple(r for r in _RULES if r[0].encode().startswith(anchor)) for anchor in ANCHORS)
_AWS_LABEL_ANCHORS: Final = frozenset(i for i, a in enumerate(ANCHORS) if a in (b"ecret", b"ECRET"))
# What Hyperscan looks for in place of each anchor: the shape a rule's match starts with, after a
# word boundary where the rule's check wants one, so that words like "task-runner" or "high" do not
# send a clean body down the slow path. Each is implied by the rule (a body with a confirmed match
# always has it), and none spans a character a JSON encoder may escape ("/", a quote), since it
# runs over the raw body, where an escape (\n, \t, \u00e9) may stand right before a token.
_LABEL = rb"(?:aws_?secret_?(?:access_?)?key|secret_?access_?key)"
_B = rb"(?:\b|\\[nrtbf]|\\u[0-9A-Fa-f]{4})"  # a boundary in the decoded text
_SHAPES: Final[dict[bytes, bytes]] = {
    b"sk-": _B + rb"sk-[A-Za-z0-9_-]{20}",
    b"sk_live_": _B + rb"sk_live_[A-Za-z0-9]{20}",
    b"rk_live_": _B + rb"rk_live_[A-Za-z0-9]{20}",
    b"AKIA": _B + rb"AKIA[A-Z0-9]{16}",
    b"ASIA": _B + rb"ASIA[A-Z0-9]{16}",
    b"AIza": _B + rb"AIza[A-Za-z0-9_-]{35}",
    b"ghp_": _B + rb"ghp_[A-Za-z0-9]{36}",
    b"gho_": _B + rb"gho_[A-Za-z0-9]{36}",
    b"ghs_": _B + rb"ghs_[A-Za-z0-9]{36}",
    b"ghu_": _B + rb"ghu_[A-Za-z0-9]{36}",
    b"ghr_": _B + rb"ghr_[A-Za-z0-9]{36}",
    b"github_pat_": _B + rb"github_pat_[A-Za-z0-9_]{50}",
    b"xox": _B + rb"xox[abposr]-[A-Za-z0-9-]{10}",
    b"-----BEGIN": rb"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY",
    b"eyJ": _B + rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ",
    b"kga_": _B + rb"kga_[0-9A-Za-z]{38}",
    b"kg_": _B + rb"kg_[0-9A-Za-z]{38}",
    b"ecret": _LABEL,  # caseless: see AnchorSearch
    b"ECRET": _LABEL,
}
# A letter, digit, "-", "_", "=" or "." written as a \u escape in JSON could hide an anchor from a
# search of the raw bytes. Clients escape only what is not ASCII (and some "<", ">", "&"), so a
# body with such an escape is scanned decoded instead.
_ESCAPED_ASCII: Final = re.compile(
    rb"\\u00(?:2[dDeE]|3[0-9dD]|4[1-9a-fA-F]|5[0-9afAF]|6[1-9a-fA-F]|7[0-9aA])"
)

# The label of an AWS secret key, any case, and the 40 characters after it.
_AWS_LABEL: Final = re.compile(
    r"(?:aws_?secret_?(?:access_?)?key|secret_?access_?key)[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+]{40})"
    r"(?![A-Za-z0-9/+])",
    re.IGNORECASE,
)
# A 40-character AWS secret key near an access key id, without a label.
_AWS_SECRET_NEAR: Final = re.compile(r"[A-Za-z0-9/+]{40,}")  # exactly 40, checked after
_AWS_NEAR_CHARS: Final = 200
_AROUND: Final = "\"'`,;:()[]{}<>"

# Personal data, each matched only where a cheap search over the text's shape found a candidate
# (see find_pii): an "@", a "+" before a digit, two capitals before two digits, four digits.
_EMAIL: Final = re.compile(
    r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}"
)
_PHONE: Final = re.compile(
    r"\+[1-9][0-9]{0,2}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,5}(?:[ .-]?[0-9]{1,5}){1,5}"
)
_IBAN: Final = re.compile(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?")
_DIGIT_GROUP: Final = re.compile(r"[0-9]+")
_RUN: Final = re.compile(rb"[0 -]*")  # over the shape: digits, spaces and dashes
_LOCAL_PART: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
# Every character's shape, one byte each: digits 0, capitals A, small letters a, the rest as is.
_SHAPE: Final = bytes(
    48 if 48 <= c <= 57 else 65 if 65 <= c <= 90 else 97 if 97 <= c <= 122 else c for c in range(256)
)

_WORD: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_TOKEN_CHARS: Final = _WORD | {"-"}
_B64_CHARS: Final = _WORD | {"+", "/", "-"}
_PHONE_BEFORE: Final = _WORD | {"+", ")", "]"}  # "x+12345678", "(a)+12345678": arithmetic, not a number
_BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class Finding(NamedTuple):
    """One match: its kind and where it is in the text scanned (never its text)."""

    kind: str
    start: int
    end: int


# -- the prefilter ---------------------------------------------------------------------------------


class AnchorSearch:
    """Which anchors occur in some bytes, in one pass: a Hyperscan database of each anchor's shape
    (:data:`_SHAPES`: the anchor and what must follow it) where the library is installed (a wheel
    for Linux x86_64), else one ``bytes`` search per anchor. Either way, a rule whose anchor is not
    reported cannot match; Hyperscan reports fewer anchors that come to nothing.

    Measured on a 2 KB chat body (``benchmarks/prompt_scan.py``): Hyperscan about 1.5 µs, the
    searches one by one 25-80 µs (each a pass over the body). Each instance has its own scratch
    space, so one instance must not scan from two threads at once; the gateway makes one per guard.
    """

    def __init__(self, use_library: bool = True) -> None:
        self._db: Any = None
        self._found: set[int] = set()
        if use_library and _hyperscan is not None:
            try:
                self._db = self._compile()
            except Exception:  # a CPU Hyperscan cannot run on (it needs SSSE3): search one by one
                self._db = None

    @staticmethod
    def _compile() -> Any:
        db = _hyperscan.Database(mode=_hyperscan.HS_MODE_BLOCK)
        single, caseless = _hyperscan.HS_FLAG_SINGLEMATCH, _hyperscan.HS_FLAG_CASELESS
        db.compile(
            # one more expression, last: an escaped ASCII character (see escapes_ascii)
            expressions=[*(_SHAPES.get(a, re.escape(a)) for a in ANCHORS), _ESCAPED_ASCII.pattern],
            ids=list(range(len(ANCHORS) + 1)),
            flags=[*(single | caseless if a in (b"ecret", b"ECRET") else single for a in ANCHORS), single],
        )
        return db

    @property
    def library(self) -> bool:
        """True when Hyperscan does the search."""
        return self._db is not None

    def _on_match(self, anchor: int, start: int, end: int, flags: int, context: object) -> None:
        self._found.add(anchor)

    def __call__(self, data: bytes) -> frozenset[int]:
        """The indexes (in :data:`ANCHORS`) of the anchors in ``data``; empty: no secret can be there."""
        if self._db is None:
            return frozenset(i for i, a in enumerate(ANCHORS) if a in data)
        self._found = set()
        self._db.scan(data, match_event_handler=self._on_match)
        self._found.discard(_ESCAPE_ID)
        return frozenset(self._found)

    def in_json(self, raw: bytes) -> frozenset[int]:
        """The anchors to look for in the strings of the raw JSON body ``raw``: those found in it,
        or all of them when it escapes an ASCII character (:func:`escapes_ascii`), in one pass."""
        if self._db is None:
            return ALL_ANCHORS if escapes_ascii(raw) else self(raw)
        self._found = set()
        self._db.scan(raw, match_event_handler=self._on_match)
        return ALL_ANCHORS if _ESCAPE_ID in self._found else frozenset(self._found)


def escapes_ascii(raw: bytes) -> bool:
    """True when raw JSON writes a letter, digit or ``-_=.`` as a ``\\u00XX`` escape, which could
    hide an anchor from a search of the raw bytes (scan the decoded strings then)."""
    return b"\\u00" in raw and _ESCAPED_ASCII.search(raw) is not None


# -- the checks per kind ---------------------------------------------------------------------------


def _mixed(text: str) -> bool:
    """Digits and letters of both cases: what a random key has and a word or identifier rarely does."""
    return (
        any(c.isdigit() for c in text) and any(c.isupper() for c in text) and any(c.islower() for c in text)
    )


def _keygate_checksum_ok(key: str) -> bool:
    """keygate's own key format (``keys.py``): prefix, 32 base62 characters, base62 CRC32 of both."""
    prefix = key[: key.index("_") + 1]
    body, check = key[len(prefix) : len(prefix) + 32], key[len(prefix) + 32 :]
    n = zlib.crc32((prefix + body).encode())
    digits = []
    for _ in range(6):
        n, r = divmod(n, 62)
        digits.append(_BASE62[r])
    return "".join(reversed(digits)) == check


def _bounded(text: str, start: int, end: int, chars: frozenset[str]) -> bool:
    return (start == 0 or text[start - 1] not in chars) and (end == len(text) or text[end] not in chars)


def _confirm(kind: str, text: str, start: int, end: int) -> bool:
    """The check after a shape matched: the boundary around it, and what real ones look like."""
    if kind in ("openai_key", "anthropic_key"):
        found = text[start:end]
        # random keys mix digits and both cases; "sk-learn-compatible-estimators" does not
        return _bounded(text, start, end, _TOKEN_CHARS) and _mixed(found[3:])
    if kind in ("keygate_key", "keygate_admin_token"):
        return _bounded(text, start, end, _TOKEN_CHARS) and _keygate_checksum_ok(text[start:end])
    if kind in ("gcp_api_key", "aws_access_key"):
        # also outside base64 (+ and /), where four given letters and a run occur by chance
        return _bounded(text, start, end, _B64_CHARS)
    if kind in ("github_token", "stripe_key", "slack_token"):
        return _bounded(text, start, end, _TOKEN_CHARS)
    if kind == "jwt":
        return start == 0 or text[start - 1] not in _TOKEN_CHARS
    return True  # delimited shapes (PEM blocks, webhook URLs, AccountKey=): the match is the evidence


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_issuer(digits: str) -> bool:
    """A prefix and length some card network issues (Visa, Mastercard, Amex, Discover, JCB,
    Diners, UnionPay, Maestro): random digit runs that pass Luhn mostly fail this."""
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if digits.startswith(("6011", "65")) or 644 <= int(digits[:3]) <= 649:
        return 16 <= n <= 19
    if 3528 <= four <= 3589:
        return 16 <= n <= 19
    if two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:
        return 14 <= n <= 19
    if two == 62:
        return 16 <= n <= 19
    if two in (50, *range(56, 59)) or digits[0] == "6":
        return 12 <= n <= 19
    return False


# Lengths of IBANs by country (the SWIFT registry), so that a code of the right shape with the
# wrong length is not taken for one.
_IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def _iban_ok(code: str) -> bool:
    if _IBAN_LENGTHS.get(code[:2]) != len(code):
        return False
    moved = code[4:] + code[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


# Reserved for documentation and tests (RFC 2606, RFC 6761): an address there is nobody's.
_EXAMPLE_DOMAINS: Final = ("example.com", "example.net", "example.org")
_EXAMPLE_TLDS: Final = (".example", ".test", ".invalid", ".localhost")


def _email_ok(text: str, start: int, end: int) -> bool:
    domain = text[text.index("@", start) + 1 : end].lower()
    return (
        domain not in _EXAMPLE_DOMAINS
        and not domain.endswith(_EXAMPLE_TLDS)
        and not any(domain.endswith("." + d) for d in _EXAMPLE_DOMAINS)
    )


# -- scanning --------------------------------------------------------------------------------------


def find_secrets(text: str, anchors: frozenset[int] | None = None) -> list[Finding]:
    """Every secret in ``text``, in order of position (overlaps are removed by :func:`scan`).

    ``anchors`` (from :class:`AnchorSearch` over the raw body) limits the rules run to those whose
    anchor was found; without it each rule's anchor is looked for in ``text`` first.
    """
    found: list[Finding] = []
    if anchors is None:
        anchors = frozenset(i for i, a in enumerate(_ANCHORS_STR) if a in text)
    for i in sorted(anchors):
        for _, kind, rx in _RULES_OF[i]:
            for m in rx.finditer(text):
                start, end = m.span()
                if _confirm(kind, text, start, end):
                    found.append(Finding(kind, start, end))
    if anchors & _AWS_LABEL_ANCHORS:
        # the label expression runs only around each "secret" (any case), not over the whole text
        low = text.lower()
        at, last = low.find("secret"), -1
        while at >= 0:
            for m in _AWS_LABEL.finditer(text, max(0, at - 16, last), at + 100):
                found.append(Finding("aws_secret_key", m.start(1), m.end(1)))
                last = m.end()
            at = low.find("secret", at + 6)
    for f in [f for f in found if f.kind == "aws_access_key"]:
        lo, hi = max(0, f.start - _AWS_NEAR_CHARS), min(len(text), f.end + _AWS_NEAR_CHARS)
        # whitespace-separated words of 40 characters or more, quotes and commas around them
        # stripped (str.split runs in C; a regular expression over the window costs more)
        window = text[lo:hi]
        words = window.split()
        if not words or len(max(words, key=len)) < 40:  # max and len run in C: the common case
            continue
        at = 0
        for word in [w for w in words if len(w) >= 40]:
            at = window.find(word, at)  # the words are in order: each is after the one before
            core = word.strip(_AROUND)
            if len(core) >= 40:
                start = lo + at + word.find(core)
                for m in _AWS_SECRET_NEAR.finditer(text, start, start + len(core)):
                    s, e = m.span()
                    near = e - s == 40 and (e == len(text) or text[e] != "=")
                    if near and _mixed(m.group()) and not any(g.start <= s < g.end for g in found):
                        found.append(Finding("aws_secret_key", s, e))
            at += len(word)
    if len(found) > 1:
        found = sorted(set(found), key=lambda f: (f.start, -f.end))
    return found


def _cards(text: str, shape: bytes, found: list[Finding]) -> None:
    """Card numbers: runs of digit groups joined by single spaces or dashes, 13 to 19 digits,
    a known issuer prefix and the Luhn check, not touching other digits."""
    at = shape.find(b"0000")
    n = len(text)
    while at >= 0:
        before = shape[max(0, at - 24) : at]
        lo = at - (len(before) - len(before.rstrip(b"0 -")))
        run = _RUN.match(shape, at, at + 48)
        hi = run.end() if run is not None else at + 4
        if shape.count(b"0", lo, hi) < 13:  # too few digits for any card: the common case
            at = shape.find(b"0000", hi)
            continue
        groups = [(m.start(), m.end()) for m in _DIGIT_GROUP.finditer(text, lo, hi)]
        i = 0
        while i < len(groups):
            digits, seps, j = 0, set(), i
            hit = -1
            while j < len(groups):
                if j > i:
                    gap = groups[j][0] - groups[j - 1][1]
                    if gap != 1:
                        break
                    seps.add(text[groups[j - 1][1]])
                digits += groups[j][1] - groups[j][0]
                if digits > 19:
                    break
                if digits >= 13 and len(seps) <= 1:
                    number = "".join(text[s:e] for s, e in groups[i : j + 1])
                    start, end = groups[i][0], groups[j][1]
                    edge_ok = (start == 0 or text[start - 1] not in ".,-") and (end == n or text[end] != "-")
                    if edge_ok and _card_issuer(number) and _luhn(number):
                        hit = j
                j += 1
            if hit >= 0:
                found.append(Finding("card_number", groups[i][0], groups[hit][1]))
                i = hit + 1
            else:
                i += 1
        at = shape.find(b"0000", max(hi, at + 4))


def find_pii(text: str) -> list[Finding]:
    """Every card number, IBAN, email address and phone number in ``text``, in order of position.

    The text's shape (one byte per character, digits as ``0``, capitals as ``A``, small letters as
    ``a``, non-ASCII as ``?``) is searched with ``bytes.find`` for the few places where one can
    start; only those are matched and checked.
    """
    shape = text.encode("ascii", "replace").translate(_SHAPE)
    found: list[Finding] = []
    n = len(text)
    at = shape.find(b"@")
    while at >= 0:
        lo = at
        while lo > 0 and text[lo - 1] in _LOCAL_PART and at - lo < 64:
            lo -= 1
        while lo < at and text[lo] in ".%+-":
            lo += 1
        m = _EMAIL.match(text, lo)
        if m is not None and (m.end() == n or text[m.end()] not in _WORD) and _email_ok(text, lo, m.end()):
            found.append(Finding("email", lo, m.end()))
            at = shape.find(b"@", m.end())
        else:
            at = shape.find(b"@", at + 1)
    at = shape.find(b"+0")
    while at >= 0:
        m = _PHONE.match(text, at)
        if (
            m is not None
            and (at == 0 or text[at - 1] not in _PHONE_BEFORE)
            and (m.end() == n or text[m.end()] not in _WORD)
            and 8 <= sum(c.isdigit() for c in m.group()) <= 15
        ):
            found.append(Finding("phone", at, m.end()))
        at = shape.find(b"+0", at + 2 if m is None else m.end())
    at = shape.find(b"AA00")
    while at >= 0:
        m = _IBAN.match(text, at)
        if m is not None and (at == 0 or text[at - 1] not in _WORD):
            # the longest run of groups that is a valid IBAN, ending at a word boundary
            code = m.group()
            while code and not (
                (at + len(code) == n or text[at + len(code)] not in _WORD) and _iban_ok(code.replace(" ", ""))
            ):
                code = code[:-1]
            if len(code) > 4:
                found.append(Finding("iban", at, at + len(code)))
                at = shape.find(b"AA00", at + len(code))
                continue
        at = shape.find(b"AA00", at + 1)
    _cards(text, shape, found)
    found.sort(key=lambda f: f.start)
    return found


def merge(found: list[Finding]) -> list[Finding]:
    """Findings in order of position with overlaps removed (the earliest, then the longest, wins)."""
    if len(found) < 2:
        return found
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (f.start, -f.end)):
        if kept and f.start < kept[-1].end:
            continue
        kept.append(f)
    return kept


def scan(text: str, secrets: bool = True, pii: bool = False) -> list[Finding]:
    """The findings of the kinds asked for, in order of position, without overlaps."""
    return merge((find_secrets(text) if secrets else []) + (find_pii(text) if pii else []))


def placeholder(kind: str) -> str:
    """What a masked match is replaced with."""
    return f"[REDACTED:{kind}]"


def mask(text: str, findings: list[Finding]) -> str:
    """``text`` with each finding replaced by its :func:`placeholder` (findings in order, no overlaps)."""
    if not findings:
        return text
    out: list[str] = []
    at = 0
    for f in findings:
        out.append(text[at : f.start])
        out.append(placeholder(f.kind))
        at = f.end
    out.append(text[at:])
    return "".join(out)
