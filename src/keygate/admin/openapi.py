"""The admin API's published contract (OpenAPI 3.0), written by hand to match :mod:`.service`.

The test suite runs schemathesis against it: every response must match, none may be a 500.
"""

from __future__ import annotations

from typing import Any

from ..ops.validate import NAME_MAX

# Non-blank, without control characters (ops.validate.check_name)
_TEXT = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]"
_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": NAME_MAX,
    "pattern": rf"^{_TEXT}*[^\s\x00-\x1f\x7f-\x9f\u2028\u2029]{_TEXT}*$",
}
_POLICY = {
    "type": "object",
    "description": (
        "rules of a key or team; fields: models, routes, allow_ips, expires_at, max_body_bytes,"
        " max_output_tokens, rps, rpm, rph, rpd, tpm, max_concurrent, budget_usd, budget_tokens,"
        " honeytoken, rotate_every, prompt_scan, share_objects (see docs/access-control.md,"
        " docs/limits.md and docs/objects.md); an unknown field or a malformed value is refused with 400"
    ),
}
_TIME = {"type": "string", "description": "UTC, ISO 8601 (YYYY-MM-DDTHH:MM:SSZ), or '-'"}
_NTIME = {**_TIME, "nullable": True}
_NSTR = {"type": "string", "nullable": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "an error, in OpenAI's error shape")


_READY: dict[str, Any] = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "checks": {"type": "object", "additionalProperties": {"type": "object"}},
    },
}


def _op(
    op_id: str,
    summary: str,
    ok: dict[str, Any],
    *,
    status: str = "200",
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "responses": {status: _json(ok, "success"), "default": _ERROR},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _obj(props: dict[str, Any], required: list[str], *, closed: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if closed:
        schema["additionalProperties"] = False
    return schema


_KEY = _obj(
    {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "hint": {"type": "string"},
        "status": {"type": "string", "enum": ["active", "revoked"]},
        "created_at": _TIME,
        "last_used_at": _NTIME,
        "team_id": _NSTR,
        "upstream": _NSTR,
        "policy": _POLICY,
    },
    ["id", "name", "hint", "status", "created_at", "team_id", "policy"],
)
_TEAM = _obj(
    {"id": {"type": "string"}, "name": {"type": "string"}, "created_at": _TIME, "policy": _POLICY},
    ["id", "name", "created_at", "policy"],
)
_INT = {"type": "integer", "minimum": 0}
_USAGE = _obj(
    {
        "key_id": _NSTR,
        "name": _NSTR,
        "requests": _INT,
        "errors": _INT,
        "prompt_tokens": _INT,
        "completion_tokens": _INT,
        "total_tokens": _INT,
        "estimated": _INT,  # requests charged their reservation: no usage was reported
        "first": _TIME,
        "last": _TIME,
    },
    ["key_id", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"],
)
_AUDIT = _obj(
    {
        "id": {"type": "integer"},
        "ts": _TIME,
        "actor": {"type": "string"},
        "action": {"type": "string"},
        "target": {"type": "string"},
        "origin": {"type": "string"},
        "details": {"type": "object"},
        "hash": {"type": "string", "description": "the entry's link in the audit hash chain"},
    },
    ["id", "ts", "actor", "action", "target", "origin", "details", "hash"],
)
_HEAD = _obj({"seq": {"type": "integer"}, "hash": {"type": "string"}}, ["seq", "hash"])
_AUDIT_VERIFY = _obj(
    {
        "ok": {"type": "boolean"},
        "entries": {"type": "integer"},
        "head": _HEAD,
        "problem": {
            "type": "string",
            "nullable": True,
            "enum": [
                "altered",
                "deleted",
                "inserted",
                "reordered",
                "truncated",
                "head_moved",
                "anchor_mismatch",
                None,
            ],
        },
        "seq": {"type": "integer", "nullable": True, "description": "the first entry at fault"},
        "message": {"type": "string"},
        "chain_start": {"type": "integer"},
        "anchor": {"type": "string"},
    },
    ["ok", "entries", "head", "problem", "seq", "message", "chain_start"],
)
_AUDIT_ANCHOR = _obj(
    {"seq": {"type": "integer"}, "hash": {"type": "string"}, "anchor": {"type": "string"}},
    ["seq", "hash", "anchor"],
)
_ROLE = {"type": "string", "enum": ["admin", "key-manager", "auditor", "metrics"]}
_TOKEN = _obj(
    {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "hint": {"type": "string"},
        "role": _ROLE,
        "status": {"type": "string", "enum": ["active", "revoked"]},
        "created_at": _TIME,
        "revoked_at": _NTIME,
    },
    ["id", "name", "hint", "role", "status", "created_at"],
)
_ERROR_SCHEMA = _obj(
    {
        "error": _obj(
            {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": _NSTR,
                "code": _NSTR,
            },
            ["message", "type", "param", "code"],
        )
    },
    ["error"],
)

_REF = {
    "type": "string",
    "maxLength": NAME_MAX,
    "nullable": True,
    "description": "an id or name; null or empty for none",
}

_ANOMALY = _obj(
    {
        "id": {"type": "string"},
        "time": {"type": "string"},
        "ts": {"type": "number"},
        "detector": {"type": "string"},
        "key_id": _NSTR,
        "team_id": _NSTR,
        "subject": {"type": "string"},
        "score": {"type": "number"},
        "action": {"type": "string", "enum": ["log", "alert", "throttle", "block_network", "quarantine"]},
        "acted": {"type": "boolean", "description": "false in observe mode: nothing was done"},
        "evidence": {"type": "object", "description": "counts, networks, baseline against observed"},
        "acked_at": _NSTR,
        "acked_by": _NSTR,
    },
    ["id", "time", "ts", "detector", "key_id", "subject", "score", "action", "acted", "evidence"],
)
_RELEASE = _obj(
    {"key_id": {"type": "string"}, "released": {"type": "boolean"}, "was_quarantined": {"type": "boolean"}},
    ["key_id", "released", "was_quarantined"],
)

_SCHEMAS: dict[str, Any] = {
    "Error": _ERROR_SCHEMA,
    "Key": _KEY,
    "CreatedKey": {
        "allOf": [
            _ref("Key"),
            _obj({"key": {"type": "string", "description": "the secret, shown once"}}, ["key"]),
        ]
    },
    "KeyCreate": _obj(
        {
            "name": _NAME,
            "team": _REF,
            "upstream": _REF,
            "policy": _POLICY,
        },
        ["name"],
        closed=True,
    ),
    "KeyUpdate": _obj(
        {
            "name": _NAME,
            "team": _REF,
            "upstream": _REF,
            "policy": _POLICY,
        },
        [],
        closed=True,
    ),
    "Team": _TEAM,
    "TeamCreate": _obj({"name": _NAME, "policy": _POLICY}, ["name"], closed=True),
    "TeamUpdate": _obj({"policy": _POLICY}, ["policy"], closed=True),
    "Usage": _USAGE,
    "AuditEntry": _AUDIT,
    "AuditVerification": _AUDIT_VERIFY,
    "AuditAnchor": _AUDIT_ANCHOR,
    "Anomaly": _ANOMALY,
    "Release": _RELEASE,
    "AdminToken": _TOKEN,
    "CreatedAdminToken": {
        "allOf": [
            _ref("AdminToken"),
            _obj({"token": {"type": "string", "description": "the secret, shown once"}}, ["token"]),
        ]
    },
    "AdminTokenCreate": _obj({"role": _ROLE, "name": _NAME}, ["role"], closed=True),
    "StoredObject": _obj(
        {"id": {"type": "string"}, "kind": {"type": "string"}, "key_id": _NSTR, "recorded_at": _TIME},
        ["id", "kind", "key_id", "recorded_at"],
    ),
    "ObjectAssign": _obj({"key_id": {"type": "string"}}, ["key_id"], closed=True),
    "ObjectUnassigned": _obj(
        {"id": {"type": "string"}, "kind": {"type": "string"}, "key_id": _NSTR, "previous_key_id": _NSTR},
        ["id", "kind", "key_id", "previous_key_id"],
    ),
}


def _list(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 document served at ``GET /openapi.json``."""
    key_id, team, token_id = _path_param("key_id"), _path_param("team"), _path_param("token_id")
    object_id = _path_param("object_id")
    return {
        "openapi": "3.0.3",
        "info": {"title": "keygate admin API", "version": "1"},
        "security": [{"adminToken": []}],
        "components": {
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "bearerFormat": "kga_..."}
            },
            "schemas": _SCHEMAS,
        },
        "paths": {
            "/healthz": {
                "get": {
                    **_op("healthz", "liveness", _obj({"status": {"type": "string"}}, ["status"])),
                    "security": [],
                }
            },
            "/readyz": {
                "get": {
                    **_op("readyz", "readiness: each dependency (503 when one is down)", _READY),
                    "security": [],
                }
            },
            "/admin/keys": {
                "get": _op("listKeys", "list client keys (never their secrets)", _list("Key")),
                "post": _op(
                    "createKey",
                    "create a key; the secret is in this response only",
                    _ref("CreatedKey"),
                    status="201",
                    body="KeyCreate",
                ),
            },
            "/admin/keys/{key_id}": {
                "get": _op("getKey", "one key", _ref("Key"), params=[key_id]),
                "patch": _op(
                    "updateKey", "change name, team or policy", _ref("Key"), body="KeyUpdate", params=[key_id]
                ),
            },
            "/admin/keys/{key_id}/revoke": {
                "post": _op("revokeKey", "revoke a key (idempotent)", _ref("Key"), params=[key_id]),
            },
            "/admin/keys/{key_id}/release": {
                "post": _op(
                    "releaseKey", "end a key's quarantine (audited)", _ref("Release"), params=[key_id]
                ),
            },
            "/admin/anomalies": {
                "get": _op(
                    "listAnomalies",
                    "anomaly events, newest first",
                    _list("Anomaly"),
                    params=[
                        _query("key", {"type": "string", "description": "a key id"}),
                        _query("since", {"type": "string", "description": "1h, 7d, or an ISO 8601 time"}),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    ],
                ),
            },
            "/admin/anomalies/{event_id}/ack": {
                "post": _op(
                    "ackAnomaly",
                    "acknowledge an anomaly event (audited)",
                    _ref("Anomaly"),
                    params=[_path_param("event_id")],
                ),
            },
            "/admin/teams": {
                "get": _op("listTeams", "list teams", _list("Team")),
                "post": _op("createTeam", "create a team", _ref("Team"), status="201", body="TeamCreate"),
            },
            "/admin/teams/{team}": {
                "get": _op("getTeam", "one team, by id or name", _ref("Team"), params=[team]),
                "patch": _op(
                    "updateTeam", "replace a team's policy", _ref("Team"), body="TeamUpdate", params=[team]
                ),
            },
            "/admin/usage": {
                "get": _op(
                    "usage",
                    "requests and tokens per key",
                    _list("Usage"),
                    params=[_query("key", {"type": "string"})],
                ),
            },
            "/admin/audit": {
                "get": _op(
                    "audit",
                    "the audit trail, newest first",
                    _list("AuditEntry"),
                    params=[
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                        _query("action", {"type": "string"}),
                        _query("actor", {"type": "string"}),
                        _query("since", {"type": "string"}),
                    ],
                ),
            },
            "/admin/audit/verify": {
                "get": _op(
                    "verifyAudit",
                    "check the audit hash chain (ok false names the first entry at fault)",
                    _ref("AuditVerification"),
                    params=[_query("anchor", {"type": "string", "pattern": "^[0-9]+:[0-9a-f]{64}$"})],
                ),
            },
            "/admin/audit/anchor": {
                "get": _op("auditAnchor", "the audit chain's head, to keep elsewhere", _ref("AuditAnchor")),
            },
            "/admin/objects": {
                "get": _op(
                    "listObjects",
                    "ownership records of stored objects (files, batches, ...), newest first",
                    _list("StoredObject"),
                    params=[
                        _query("key", {"type": "string"}),
                        _query("kind", {"type": "string"}),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    ],
                ),
            },
            "/admin/objects/{object_id}/assign": {
                "post": _op(
                    "assignObject",
                    "make a key the owner of a stored object (audited)",
                    _ref("StoredObject"),
                    body="ObjectAssign",
                    params=[object_id],
                ),
            },
            "/admin/objects/{object_id}/unassign": {
                "post": _op(
                    "unassignObject",
                    "leave a stored object to no key (audited)",
                    _ref("ObjectUnassigned"),
                    params=[object_id],
                ),
            },
            "/admin/tokens": {
                "get": _op("listAdminTokens", "list admin tokens (never their secrets)", _list("AdminToken")),
                "post": _op(
                    "createAdminToken",
                    "issue an admin token; the secret is in this response only",
                    _ref("CreatedAdminToken"),
                    status="201",
                    body="AdminTokenCreate",
                ),
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (text format; the metrics or admin role, or a "
                    "network of metrics.scrape_without_token_from)",
                    "responses": {
                        "200": {
                            "description": "success",
                            "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
                        },
                        "default": _ERROR,
                    },
                }
            },
            "/admin/tokens/{token_id}/revoke": {
                "post": _op(
                    "revokeAdminToken", "revoke an admin token", _ref("AdminToken"), params=[token_id]
                ),
            },
        },
    }
