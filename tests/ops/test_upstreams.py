"""``keygate.ops.upstreams``: upstreams of the config file and of the store, their encrypted keys:
define, store, rotate, retire, enable, and the listing that never shows a secret."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from keygate.errors import ConfigError, InvalidRequest, NotFound
from keygate.ops import upstreams
from keygate.types import Secret
from keygate.vault import fingerprint

from ..certs import CA
from .conftest import UPSTREAM_KEY, Ops, make_ops

STORED = "sk-proj-ops-stored-key-aaaa1111"
STORED_2 = "sk-proj-ops-stored-key-bbbb2222"


def test_resolve_upstream_knows_config_and_stored_upstreams(ops: Ops) -> None:
    assert upstreams.resolve_upstream(ops.settings, ops.store, None) is None
    assert upstreams.resolve_upstream(ops.settings, ops.store, "") is None
    assert upstreams.resolve_upstream(ops.settings, ops.store, "openai") == "openai"
    with pytest.raises(InvalidRequest, match=r"no upstream named 'beta' \(known: openai\)") as info:
        upstreams.resolve_upstream(ops.settings, ops.store, "beta")
    assert info.value.param == "upstream"
    upstreams.define(ops.settings, ops.store, ops.actor, "beta", base_url="https://beta.example/v1")
    assert upstreams.resolve_upstream(ops.settings, ops.store, "beta") == "beta"
    assert upstreams.known_upstreams(ops.settings, ops.store) == {"openai", "beta"}
    with pytest.raises(InvalidRequest):
        upstreams.resolve_upstream(ops.settings, ops.store, "x" * 201)


def test_storing_needs_a_master_key(tmp_path: Path) -> None:
    ops = make_ops(tmp_path, env={"KEYGATE_MASTER_KEY": ""})
    with pytest.raises(ConfigError, match="needs a master key"):
        upstreams.keyring_for(ops.settings)
    with pytest.raises(ConfigError):
        upstreams.store_key(ops.settings, ops.store, ops.actor, "openai", Secret(STORED))
    assert ops.store.list_upstream_keys() == [] and ops.store.list_audit() == []
    ops.store.close()


def test_store_key_seals_it_and_shows_only_last4_and_fingerprint(ops: Ops) -> None:
    view = upstreams.store_key(ops.settings, ops.store, ops.actor, "openai", Secret(STORED))
    assert view == {"key_id": view["key_id"], "upstream": "openai", "last4": "1111",
                    "fingerprint": fingerprint(STORED), "others_retire_at": None}  # fmt: skip
    (row,) = ops.store.list_upstream_keys()
    assert row.sealed is not None and STORED.encode() not in row.sealed.ciphertext
    assert upstreams.keyring_for(ops.settings).open("openai", row.id, row.sealed).reveal() == STORED
    (entry,) = ops.audit()
    assert (entry.action, entry.target) == ("upstreams.add", view["key_id"])
    assert entry.details == {"upstream": "openai", "fingerprint": fingerprint(STORED)}
    with pytest.raises(NotFound, match="no upstream named 'nope'"):
        upstreams.store_key(ops.settings, ops.store, ops.actor, "nope", Secret(STORED))


def test_rotation_retires_the_others_after_the_grace_period(ops: Ops) -> None:
    first = upstreams.store_key(ops.settings, ops.store, ops.actor, "openai", Secret(STORED))
    before = time.time()
    second = upstreams.store_key(ops.settings, ops.store, ops.actor, "openai", Secret(STORED_2), grace=3600.0)
    assert second["others_retire_at"].endswith("Z")
    rows = {r.id: r for r in ops.store.list_upstream_keys()}
    old = rows[first["key_id"]]
    assert old.status == "retiring" and old.retire_at is not None
    assert before + 3600 - 1 <= old.retire_at <= time.time() + 3600
    assert rows[second["key_id"]].status == "active"
    assert [e.action for e in ops.audit()] == ["upstreams.add", "upstreams.rotate"]
    # retire() without a key id: every key still in its grace period, wiped now.
    assert upstreams.retire(ops.store, ops.actor, "openai", None) == [first["key_id"]]
    assert upstreams.retire(ops.store, ops.actor, "openai", None) == []
    assert upstreams.retire(ops.store, ops.actor, "openai", second["key_id"]) == [second["key_id"]]
    for key_id in (second["key_id"], "uk_unknown"):
        with pytest.raises(NotFound, match="no live key"):
            upstreams.retire(ops.store, ops.actor, "openai", key_id)
    assert {r.status for r in ops.store.list_upstream_keys()} == {"retired"}
    assert all(r.sealed is None for r in ops.store.list_upstream_keys())
    assert [e.action for e in ops.audit("upstreams.retire")] == ["upstreams.retire"] * 2


def test_define_a_stored_upstream(ops: Ops, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="give its --base-url") as info:
        upstreams.define(ops.settings, ops.store, ops.actor, "beta")
    assert info.value.param == "base_url"
    with pytest.raises(ConfigError, match="https is required"):
        upstreams.define(ops.settings, ops.store, ops.actor, "beta", base_url="http://beta.example/v1")
    for fallback in ("nope", "beta"):
        with pytest.raises(InvalidRequest, match="is not another upstream") as info:
            upstreams.define(
                ops.settings, ops.store, ops.actor, "beta", base_url="https://b.example", fallback=fallback
            )
        assert info.value.param == "fallback"
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("no certificate here")
    with pytest.raises(ConfigError, match="--ca-bundle"):
        upstreams.define(
            ops.settings, ops.store, ops.actor, "beta", base_url="https://b.example", ca_bundle=str(not_pem)
        )
    assert ops.store.list_upstream_defs() == [] and ops.store.list_audit() == []

    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(CA("test ca").pem())
    upstreams.define(ops.settings, ops.store, ops.actor, "beta", base_url="http://beta.example/v1/",
                     allow_insecure=True, fallback="openai", ca_bundle=str(ca_path))  # fmt: skip
    (beta,) = ops.store.list_upstream_defs()
    assert (beta.base_url, beta.allow_insecure, beta.fallback) == ("http://beta.example/v1", True, "openai")
    assert beta.ca_bundle == str(ca_path.resolve())
    # Defining it again changes only what is given, keeps the rest, and writes nothing if nothing changed.
    upstreams.define(ops.settings, ops.store, ops.actor, "beta")
    upstreams.define(ops.settings, ops.store, ops.actor, "beta", base_url="http://beta.example/v1")
    assert len(ops.audit("upstreams.define")) == 1
    upstreams.define(ops.settings, ops.store, ops.actor, "beta", base_url="http://beta2.example/v1")
    (moved,) = ops.store.list_upstream_defs()
    assert (moved.base_url, moved.allow_insecure, moved.fallback, moved.ca_bundle, moved.created_at) == (
        "http://beta2.example/v1", True, "openai", beta.ca_bundle, beta.created_at
    )  # fmt: skip
    assert [e.details for e in ops.audit("upstreams.define")][-1] == {
        "base_url": "http://beta2.example/v1", "fallback": "openai"
    }  # fmt: skip


def test_define_leaves_config_upstreams_to_the_config_file(tmp_path: Path) -> None:
    ops = make_ops(
        tmp_path,
        {"upstreams": {"openai": {"base_url": "https://api.example/v1", "api_key": "${OPENAI_API_KEY}"}}},
    )
    upstreams.define(ops.settings, ops.store, ops.actor, "openai")
    upstreams.define(ops.settings, ops.store, ops.actor, "openai", base_url="https://api.example/v1/")
    with pytest.raises(InvalidRequest, match="with another base URL"):
        upstreams.define(ops.settings, ops.store, ops.actor, "openai", base_url="https://other.example/v1")
    for option in ({"fallback": "x"}, {"ca_bundle": "/ca.pem"}, {"allow_insecure": True}):
        with pytest.raises(InvalidRequest, match="change it there"):
            upstreams.define(ops.settings, ops.store, ops.actor, "openai", **option)  # type: ignore[arg-type]
    assert ops.store.list_upstream_defs() == [] and ops.store.list_audit() == []
    ops.store.close()


def test_the_builtin_default_is_used_as_it_is_or_replaced_by_a_stored_one(ops: Ops) -> None:
    """Regression (issue 10, bug 6): a stored upstream named like the built-in default replaces it."""
    assert ops.settings.upstreams["openai"].source == "builtin"
    upstreams.define(ops.settings, ops.store, ops.actor, "openai")  # as it is: nothing stored
    assert ops.store.list_upstream_defs() == []
    listed = upstreams.views(ops.settings, ops.store)
    assert [(v["upstream"], v["key_id"], v["source"], v["last4"], v["status"]) for v in listed] == [
        ("openai", "openai#0", "${OPENAI_API_KEY}", UPSTREAM_KEY[-4:], "active")
    ]
    upstreams.define(ops.settings, ops.store, ops.actor, "openai", base_url="https://proxy.example/v1")
    view = upstreams.store_key(ops.settings, ops.store, ops.actor, "openai", Secret(STORED))
    listed = upstreams.views(ops.settings, ops.store)
    # The built-in entry (and its ${OPENAI_API_KEY}) is gone; the stored key has the stored base URL.
    assert [(v["key_id"], v["source"], v["base_url"]) for v in listed] == [
        (view["key_id"], "store", "https://proxy.example/v1")
    ]


def test_views_of_config_keys_never_show_a_secret(tmp_path: Path) -> None:
    present = tmp_path / "present.key"
    present.write_text("sk-from-a-file-zzzz9999\n")
    config = {"upstreams": {"openai": {"base_url": "https://api.example/v1", "api_keys": [
        "${OPENAI_API_KEY}", "${UNSET_KEY}", f"file:{present}",
    ]}}}  # fmt: skip
    ops = make_ops(tmp_path, config)
    listed = upstreams.views(ops.settings, ops.store)
    assert [(v["key_id"], v["source"], v["last4"], v["status"]) for v in listed] == [
        ("openai#0", "${OPENAI_API_KEY}", UPSTREAM_KEY[-4:], "active"),
        ("openai#1", "${UNSET_KEY}", None, "missing"),
        ("openai#2", f"file:{present}", "9999", "active"),
    ]
    assert listed[0]["fingerprint"] == fingerprint(UPSTREAM_KEY) and listed[1]["fingerprint"] is None
    assert UPSTREAM_KEY not in repr(listed) and "sk-from-a-file" not in repr(listed)
    view = upstreams.store_key(ops.settings, ops.store, ops.actor, "openai", Secret(STORED))
    ops.store.touch_upstream_keys({view["key_id"]: 1.0e9})
    (stored,) = [v for v in upstreams.views(ops.settings, ops.store) if v["source"] == "store"]
    assert stored == {"upstream": "openai", "base_url": "https://api.example/v1", "key_id": view["key_id"],
                      "source": "store", "last4": "1111", "fingerprint": fingerprint(STORED),
                      "created_at": stored["created_at"], "last_used_at": "2001-09-09T01:46:40Z",
                      "status": "active", "retire_at": None}  # fmt: skip
    ops.store.close()


def test_views_sweep_keys_whose_grace_period_is_over(ops: Ops) -> None:
    first = upstreams.store_key(ops.settings, ops.store, ops.actor, "openai", Secret(STORED))
    upstreams.store_key(ops.settings, ops.store, ops.actor, "openai", Secret(STORED_2), grace=0.0)
    statuses = {v["key_id"]: v["status"] for v in upstreams.views(ops.settings, ops.store)}
    assert statuses[first["key_id"]] == "retired"
    (row,) = [r for r in ops.store.list_upstream_keys() if r.id == first["key_id"]]
    assert row.sealed is None  # wiped by the listing's sweep


def test_enable_puts_config_and_stored_keys_back(ops: Ops) -> None:
    upstreams.enable(ops.settings, ops.store, ops.actor, "openai", "openai#0")
    view = upstreams.store_key(ops.settings, ops.store, ops.actor, "openai", Secret(STORED))
    upstreams.enable(ops.settings, ops.store, ops.actor, "openai", view["key_id"])
    assert set(ops.store.upstream_key_enables()) == {"openai#0", view["key_id"]}
    assert [e.target for e in ops.audit("upstreams.enable")] == ["openai#0", view["key_id"]]
    upstreams.retire(ops.store, ops.actor, "openai", view["key_id"])
    for name, key_id in (
        ("openai", "openai#1"),
        ("openai", view["key_id"]),
        ("beta", "openai#0"),
        ("beta", "beta#0"),
    ):
        with pytest.raises(NotFound, match=f"no live key {key_id} on upstream {name}"):
            upstreams.enable(ops.settings, ops.store, ops.actor, name, key_id)
    assert len(ops.audit("upstreams.enable")) == 2
