"""Secrets and personal data in request bodies: refuse, mask or record them before forwarding.

The last line of defence for credentials that people paste into prompts: an AWS key in a log
excerpt, a ``.env`` file, a private key, a keygate key. What is looked for is
:mod:`keygate.secret_scan`; this guard decides, per request, what to do with it. The policy is a
key's or team's ``prompt_scan`` field, else the gateway's ``prompt_scan`` setting:

======= =====================================================================================
mode    effect
======= =====================================================================================
block   400 ``secret_in_prompt`` (or ``pii_in_prompt``), naming the kind, never the match
mask    each match replaced by ``[REDACTED:<kind>]`` in the body that is forwarded
log     forwarded unchanged
off     not scanned
======= =====================================================================================

``secrets`` and ``pii`` each take a mode (defaults: ``block`` and ``off``). When both the key and
its team set one, the stricter applies (block > mask > log > off), as with every other policy
field; either replaces the gateway's default. Every finding that is not ``off`` is written to the
audit trail (action ``prompt_scan.block``/``.mask``/``.log``, through a write-behind buffer, never
on the request path) and to the operator log (``keygate.alert``, ``prompt_scan_finding``), each
with the kinds, their counts, the key, the team and the route: never the matched text.

What is scanned: every string of a JSON body (values and keys, at any depth; ``data:`` URLs of
inline files excepted), and the text fields of a multipart body (not its file parts). A clean
body costs one Hyperscan pass over the raw bytes (see :class:`~keygate.secret_scan.AnchorSearch`);
the strings are decoded and matched only when an anchor was found, or when personal data is
looked for.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from typing import Any, Final

import orjson

from ..batching import ListWriteBehind
from ..chain import Guard
from ..context import Context
from ..errors import InvalidRequest, KeygateError
from ..multipart import FormError, boundary_of
from ..secret_scan import (
    KINDS,
    PII_KINDS,
    AnchorSearch,
    Finding,
    find_pii,
    find_secrets,
    mask,
    merge,
)
from ..store import Store
from ..types import AuditRecord
from .policy import policies

log = logging.getLogger("keygate.alert")
writer_log = logging.getLogger("keygate.prompt_scan")

# Strictness of the modes (access_config.SCAN_MODES): the stricter of key and team wins.
_RANK: Final = {"off": 0, "log": 1, "mask": 2, "block": 3}
_SEP: Final = "\x00"  # between the strings of a body when they are scanned as one text


class AuditTrail(ListWriteBehind[AuditRecord]):
    """Prompt-scan findings for the audit trail, written in batches by a thread of their own."""

    failure_log = writer_log
    failure_message = "prompt-scan audit write failed; will retry"

    def __init__(self, store: Store, interval: float, max_pending: int = 10_000) -> None:
        super().__init__(interval, "keygate-prompt-scan", max_pending)
        self._store = store

    def add(self, record: AuditRecord) -> None:
        self._pending.append(record)

    def _write(self, batch: list[AuditRecord]) -> None:
        # Written one by one; each one written leaves the batch, so after a failure only the
        # records not yet written go back to the buffer (none is written twice).
        while batch:
            self._store.write_audit(batch[0])
            del batch[0]


def _strings(value: Any, out: list[str]) -> list[str]:
    """Every string in a JSON value, keys included, in a fixed order (:func:`_replace` follows it);
    a ``data:...;base64,`` URL (an inline file: image, audio, PDF) as an empty string."""
    if isinstance(value, str):
        out.append("" if value.startswith("data:") and ";base64," in value[:200] else value)
    elif isinstance(value, dict):
        for k, v in value.items():
            out.append(k)
            if type(v) is str:  # the common case, without a call
                out.append("" if v.startswith("data:") and ";base64," in v[:200] else v)
            else:
                _strings(v, out)
    elif isinstance(value, list):
        for v in value:
            if type(v) is str:
                out.append("" if v.startswith("data:") and ";base64," in v[:200] else v)
            else:
                _strings(v, out)
    return out


def _replace(value: Any, new: dict[int, str], at: list[int]) -> Any:
    """``value`` with its ``i``-th string (in :func:`_strings` order) replaced by ``new[i]``."""
    if isinstance(value, str):
        i = at[0]
        at[0] += 1
        return new.get(i, value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            i = at[0]
            if type(v) is str:  # the common case, without a call
                at[0] += 2
                out[new.get(i, k)] = new.get(i + 1, v)
            else:
                at[0] += 1
                out[new.get(i, k)] = _replace(v, new, at)
        return out
    if isinstance(value, list):
        return [_replace(v, new, at) for v in value]
    return value


def _mode(found: tuple[dict[str, Any], ...], field: str, default: str) -> str:
    best: str | None = None
    for policy in found:
        scan = policy.get("prompt_scan")
        if scan:
            mode = scan.get(field)
            if mode is not None and (best is None or _RANK[mode] > _RANK[best]):
                best = mode
    return default if best is None else best


class PromptScan(Guard):
    """Runs after the body is read and the request policy applied, before the limits (so a masked
    body is what they estimate) and before forwarding."""

    name = "prompt_scan"
    needs = frozenset({"key", "team", "body", "json", "model"})

    def __init__(self, secrets: str = "block", pii: str = "off", audit: AuditTrail | None = None) -> None:
        self.default_secrets = secrets
        self.default_pii = pii
        self.audit = audit
        self._anchors = AnchorSearch()

    async def start(self) -> None:
        if self.audit is not None:
            await self.audit.start()

    async def stop(self) -> None:
        if self.audit is not None:
            await self.audit.close()

    def request(self, ctx: Context) -> KeygateError | None:
        route = ctx.route
        if route is None or route.body == "none" or not ctx.body:
            return None
        found = policies(ctx)
        if found:
            secrets = _mode(found, "secrets", self.default_secrets)
            pii = _mode(found, "pii", self.default_pii)
        else:
            secrets, pii = self.default_secrets, self.default_pii
        if secrets == "off" and pii == "off":
            return None
        if ctx.json is not None:
            return self._scan_json(ctx, secrets, pii)
        if route.body == "multipart":
            return self._scan_multipart(ctx, secrets, pii)
        return None

    # -- JSON --------------------------------------------------------------------------------------

    def _scan_json(self, ctx: Context, secrets: str, pii: str) -> KeygateError | None:
        anchors: frozenset[int] = frozenset()
        if secrets != "off":
            anchors = self._anchors.in_json(ctx.body)
            if not anchors and pii == "off":
                return None  # the common case: nothing that could start a secret
        texts = _strings(ctx.json, [])
        findings = self._find(texts, anchors if secrets != "off" else None, pii != "off")
        if not findings:
            return None
        err, masked = self._decide(ctx, findings, secrets, pii)
        if err is not None or not masked:
            return err
        new = self._masked_texts(texts, masked)
        data = _replace(ctx.json, new, [0])
        ctx.json = data
        ctx.body = orjson.dumps(data)
        ctx.json_changed = False  # (what any guard set so far is in it)
        model = data.get("model")
        ctx.model = model if isinstance(model, str) else None
        return None

    def _find(self, texts: list[str], anchors: frozenset[int] | None, pii: bool) -> list[Finding]:
        """Findings over the strings joined as one text (``_SEP`` between them)."""
        joined = _SEP.join(texts)
        found: list[Finding] = []
        if anchors:
            found = find_secrets(joined, anchors)
        if pii:
            found = found + find_pii(joined)
        return merge(found)

    @staticmethod
    def _masked_texts(texts: list[str], masked: list[Finding]) -> dict[int, str]:
        """The strings that hold a finding to mask, by index, each with its findings replaced."""
        starts = list(itertools.accumulate((len(t) + 1 for t in texts), initial=0))
        by_text: dict[int, list[Finding]] = {}
        for f in masked:
            i = bisect.bisect_right(starts, f.start) - 1  # the string that holds the finding
            base = starts[i]
            by_text.setdefault(i, []).append(Finding(f.kind, f.start - base, f.end - base))
        return {i: mask(texts[i], found) for i, found in by_text.items()}

    # -- multipart ---------------------------------------------------------------------------------

    def _scan_multipart(self, ctx: Context, secrets: str, pii: str) -> KeygateError | None:
        try:
            boundary = boundary_of(ctx.headers.get("content-type", ""))
        except FormError:
            return None  # the body guard refuses such a body before this guard runs
        delimiter = b"--" + boundary
        pieces = ctx.body.split(delimiter)
        fields: list[tuple[int, int, int]] = []  # (piece, value start, value end) of each text field
        for n, piece in enumerate(pieces[1:-1], start=1):
            head_end = piece.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            head = piece[:head_end].lower()
            if b"filename=" in head or b"filename*=" in head:
                continue  # a file part: its bytes are the upload, not text
            ctype = head.find(b"content-type:")
            if ctype >= 0 and not head[ctype + 13 :].lstrip().startswith(b"text/"):
                continue
            end = len(piece) - 2 if piece.endswith(b"\r\n") else len(piece)
            fields.append((n, head_end + 4, end))
        if not fields:
            return None
        texts = [pieces[n][s:e].decode("utf-8", "surrogateescape") for n, s, e in fields]
        anchors: frozenset[int] | None = None
        if secrets != "off":
            anchors = self._anchors(_SEP.join(texts).encode("utf-8", "surrogateescape"))
            if not anchors and pii == "off":
                return None
        findings = self._find(texts, anchors, pii != "off")
        if not findings:
            return None
        err, masked = self._decide(ctx, findings, secrets, pii)
        if err is not None or not masked:
            return err
        for i, text in self._masked_texts(texts, masked).items():
            n, s, e = fields[i]
            pieces[n] = pieces[n][:s] + text.encode("utf-8", "surrogateescape") + pieces[n][e:]
        ctx.body = delimiter.join(pieces)
        return None

    # -- what to do --------------------------------------------------------------------------------

    def _decide(
        self, ctx: Context, findings: list[Finding], secrets: str, pii: str
    ) -> tuple[KeygateError | None, list[Finding]]:
        """The error to refuse with (a block), or the findings to mask; records what was found."""
        modes = {"secret": secrets, "pii": pii}
        counts: dict[str, int] = {}
        for f in findings:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        for category in ("secret", "pii"):
            if modes[category] != "block":
                continue
            kinds = [f.kind for f in findings if (f.kind in PII_KINDS) == (category == "pii")]
            if kinds:
                self._record(ctx, "block", counts)
                code = "pii_in_prompt" if category == "pii" else "secret_in_prompt"
                what = "personal data" if category == "pii" else "a secret"
                return (
                    InvalidRequest(
                        f"The request contains {what} ({KINDS[kinds[0]]}), so keygate did not forward "
                        f"it. Remove it and send the request again.",
                        code=code,
                    ),
                    [],
                )
        masked = [f for f in findings if modes["pii" if f.kind in PII_KINDS else "secret"] == "mask"]
        self._record(ctx, "mask" if masked else "log", counts)
        return None, masked

    def _record(self, ctx: Context, action: str, counts: dict[str, int]) -> None:
        key, team = ctx.key, ctx.team
        route = ctx.route.name if ctx.route is not None else "-"
        key_id = key.id if key is not None else "-"
        fields = {
            "alert": "prompt_scan_finding",
            "severity": "high" if action == "block" else "medium",
            "action": action,
            "kinds": counts,
            "count": sum(counts.values()),
            "key_id": key_id,
            "team_id": team.id if team is not None else None,
            "route": route,
            "client_ip": ctx.client_ip,
            "request_id": ctx.request_id,
        }
        verb = {"block": "refused", "mask": "masked before forwarding", "log": "forwarded"}[action]
        log.warning(f"prompt scan: a request holding {', '.join(sorted(counts))} was {verb}", extra=fields)
        if self.audit is not None:
            details = {k: fields[k] for k in ("kinds", "count", "route", "team_id", "request_id")}
            self.audit.add(
                AuditRecord(
                    time.time(),
                    key_id,
                    ctx.client_ip,
                    f"prompt_scan.{action}",
                    key_id,
                    orjson.dumps(details).decode(),
                )
            )
