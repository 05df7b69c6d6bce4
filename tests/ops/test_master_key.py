"""``keygate.ops.master_key``: re-wrap every stored data key under a new master key, row by row and
resumable; and which master key wraps how many keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from keygate.errors import ConfigError
from keygate.ops import master_key, upstreams
from keygate.types import Secret
from keygate.vault import Keyring, VaultError, generate_master_key, kek_id, parse_master_key

from .conftest import MASTER, OTHER_MASTER, Ops, make_ops

SECRETS = ["sk-proj-mk-one-1111", "sk-proj-mk-two-2222", "sk-proj-mk-three-3333"]


def stored(ops: Ops) -> list[str]:
    return [
        upstreams.store_key(ops.settings, ops.store, ops.actor, "openai", Secret(s))["key_id"]
        for s in SECRETS
    ]


def kid(value: str) -> str:
    return kek_id(parse_master_key(Secret(value)))


def test_status_counts_keys_per_master_key(ops: Ops, tmp_path: Path) -> None:
    assert master_key.status(ops.settings, ops.store) == {"current": kid(MASTER), "wrapped_by": {}}
    ids = stored(ops)
    assert master_key.status(ops.settings, ops.store) == {
        "current": kid(MASTER),
        "wrapped_by": {kid(MASTER): 3},
    }
    upstreams.retire(ops.store, ops.actor, "openai", ids[0])  # wiped: wrapped by nothing
    assert master_key.status(ops.settings, ops.store)["wrapped_by"] == {kid(MASTER): 2}
    bare = ops.reload(env={"KEYGATE_MASTER_KEY": ""})
    assert master_key.status(bare.settings, bare.store) == {"current": None, "wrapped_by": {kid(MASTER): 2}}
    bare.store.close()


def test_rotate_rewraps_every_row_and_then_nothing(ops: Ops) -> None:
    ids = stored(ops)
    before = {r.id: r.sealed for r in ops.store.list_upstream_keys()}
    new = generate_master_key()
    heard: list[tuple[str, int, int]] = []
    result = master_key.rotate(ops.settings, ops.store, ops.actor, Secret(new), lambda *a: heard.append(a))
    assert result == {"current": kid(new), "rewrapped": 3, "total": 3}
    assert heard == [(ids[0], 1, 3), (ids[1], 2, 3), (ids[2], 3, 3)]
    ring = Keyring(parse_master_key(Secret(new)))  # the new key alone opens every row
    for row in ops.store.list_upstream_keys():
        assert row.sealed is not None and row.sealed.kek_id == kid(new)
        assert row.sealed.ciphertext == before[row.id].ciphertext  # only the data key is re-wrapped
        assert ring.open("openai", row.id, row.sealed).reveal() in SECRETS
    (entry,) = ops.audit("master_key.rotate")
    assert (entry.target, entry.details) == (kid(new), {"rewrapped": 3, "total": 3})
    again = master_key.rotate(ops.settings, ops.store, ops.actor, Secret(new))
    assert again == {"current": kid(new), "rewrapped": 0, "total": 3}


def test_an_interrupted_rotation_resumes_where_it_stopped(ops: Ops) -> None:
    stored(ops)
    new = generate_master_key()

    def crash(key_id: str, done: int, todo: int) -> None:
        if done == 1:
            raise KeyboardInterrupt  # stopped after the first row

    with pytest.raises(KeyboardInterrupt):
        master_key.rotate(ops.settings, ops.store, ops.actor, Secret(new), crash)
    assert master_key.status(ops.settings, ops.store)["wrapped_by"] == {kid(MASTER): 2, kid(new): 1}
    # Run again with the new key configured and the old one as previous: the rest is re-wrapped.
    moved = ops.reload(env={"KEYGATE_MASTER_KEY": new, "KEYGATE_PREVIOUS_MASTER_KEY": MASTER})
    result = master_key.rotate(moved.settings, moved.store, moved.actor, Secret(new))
    assert result == {"current": kid(new), "rewrapped": 2, "total": 3}
    moved.store.close()


def test_rows_wrapped_by_the_previous_key_are_rewrapped_too(tmp_path: Path) -> None:
    old = make_ops(tmp_path, env={"KEYGATE_MASTER_KEY": OTHER_MASTER})
    stored(old)
    ops = old.reload(env={"KEYGATE_MASTER_KEY": MASTER, "KEYGATE_PREVIOUS_MASTER_KEY": OTHER_MASTER})
    new = generate_master_key()
    assert master_key.rotate(ops.settings, ops.store, ops.actor, Secret(new))["rewrapped"] == 3
    # Without the key that wrapped them, rows cannot be re-wrapped: nothing is half-done.
    lost = ops.reload(env={"KEYGATE_MASTER_KEY": MASTER})
    with pytest.raises(VaultError, match="is not configured"):
        master_key.rotate(lost.settings, lost.store, lost.actor, Secret(generate_master_key()))
    assert master_key.status(lost.settings, lost.store)["wrapped_by"] == {kid(new): 3}
    lost.store.close()


def test_a_malformed_new_key_is_refused_by_name(ops: Ops) -> None:
    stored(ops)
    for bad in ("short", "z" * 64, ""):
        with pytest.raises(ConfigError, match="--new-key-file: expected 32 random bytes"):
            master_key.rotate(ops.settings, ops.store, ops.actor, Secret(bad))
    assert ops.audit("master_key.rotate") == []
