"""``keygate.rotation.due_keys``: which keys are due for rotation or expiry."""

from __future__ import annotations

from typing import Any

from keygate.rotation import due_keys
from keygate.types import KeyRecord

DAY = 86400.0
NOW = 1_900_000_000.0


def key(key_id: str, created_at: float = NOW - 10 * DAY, status: str = "active", **policy: Any) -> KeyRecord:
    return KeyRecord(key_id, key_id, "h_" + key_id, "kg_...x", created_at, status=status, policy=policy)


def test_rotation_counts_from_the_last_rotation_or_creation() -> None:
    records = [
        key("from_creation", rotate_every=12 * DAY),  # due in 2 days
        key("from_rotation", rotate_every=12 * DAY, rotated_at=NOW - DAY),  # due in 11 days
        key("epoch_rotation", rotate_every=DAY, rotated_at=NOW - 3 * DAY),  # 2 days overdue
        key("unreadable_rotation", rotate_every=15 * DAY, rotated_at="whenever"),  # from creation: in 5 days
    ]
    due = due_keys(records, NOW, 7 * DAY)
    assert [(d.key.id, d.reason, d.when) for d in due] == [
        ("epoch_rotation", "rotation", NOW - 2 * DAY),
        ("from_creation", "rotation", NOW + 2 * DAY),
        ("unreadable_rotation", "rotation", NOW + 5 * DAY),
    ]
    assert [d.key.id for d in due_keys(records, NOW, 11 * DAY)][
        -1
    ] == "from_rotation"  # the window's edge counts
    assert [d.key.id for d in due_keys(records, NOW, 0)] == ["epoch_rotation"]


def test_expiry_is_due_and_an_unreadable_one_is_due_now() -> None:
    records = [
        key("iso", expires_at="2030-03-18T17:46:40Z"),  # NOW + 1 day
        key("epoch", expires_at=NOW + 3 * DAY),
        key("far", expires_at=NOW + 30 * DAY),
        key("broken", expires_at="someday"),
        key("both", expires_at=NOW + DAY / 2, rotate_every=DAY, rotated_at=NOW),
    ]
    due = due_keys(records, NOW, 7 * DAY)
    assert [(d.key.id, d.reason, d.when) for d in due] == [
        ("broken", "expiry", NOW),
        ("both", "expiry", NOW + DAY / 2),
        ("iso", "expiry", NOW + DAY),
        ("both", "rotation", NOW + DAY),
        ("epoch", "expiry", NOW + 3 * DAY),
    ]


def test_revoked_keys_honeytokens_and_odd_schedules_are_never_due() -> None:
    records = [
        key("revoked", status="revoked", rotate_every=1, expires_at=NOW - DAY),
        key("honeytoken", honeytoken=True, rotate_every=1, expires_at=NOW - DAY),
        key("zero", rotate_every=0),
        key("negative", rotate_every=-5),
        key("text", rotate_every="1d"),
        key("boolean", rotate_every=True),
        key("none"),
    ]
    assert due_keys(records, NOW, 365 * DAY) == []
    assert [d.key.id for d in due_keys([key("not_a_trap", honeytoken="yes", rotate_every=1)], NOW, 0)] == [
        "not_a_trap"
    ]
