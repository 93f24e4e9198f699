"""Which groups a Replica coordinates (design.md §3c): the default group stops at DEFAULT_GROUP_LIMIT;
whom a member's news has the group ask for a catch-up."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest

from replica import Shape
from replica.sync.group import DEFAULT_GROUP_LIMIT, PROBE_WINDOW, Group, group_members


def shapes(count: int, **options: object) -> list[Shape]:
    return [Shape("t", where="id = $1", params={"1": str(i)}, name=f"s{i}", **options) for i in range(count)]


def test_every_shape_of_a_replica_is_in_the_default_group_up_to_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    formed = group_members(shapes(DEFAULT_GROUP_LIMIT))
    assert list(formed) == ["default"] and len(formed["default"]) == DEFAULT_GROUP_LIMIT
    assert not caplog.records


def test_past_the_limit_the_default_group_is_not_formed_and_the_log_names_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="replica"):
        formed = group_members(shapes(DEFAULT_GROUP_LIMIT + 1) + shapes(2, group="orders"))
    assert list(formed) == ["orders"]
    [record] = caplog.records
    assert f"{DEFAULT_GROUP_LIMIT + 1} shapes" in record.getMessage() and 'group="orders"' in record.getMessage()


def test_named_groups_have_no_limit_and_groups_of_one_need_no_coordinator() -> None:
    big = shapes(DEFAULT_GROUP_LIMIT * 2, group="tenants")
    formed = group_members([*big, Shape("audit", group="alone"), Shape("log", group=None)])
    assert list(formed) == ["tenants"] and formed["tenants"] == big


def test_a_member_writing_news_has_the_members_behind_it_asked_at_once() -> None:
    """``Group.coming``: the catch-ups go out before the news is staged (their answers overlap the
    write), only to members behind it, and not before every member has reached up-to-date."""
    asked: list[tuple[str, int]] = []
    group = Group("g", shapes(4), session=cast(Any, None), host=cast(Any, None))
    for name in group.members:
        group.attach(name, lambda need, name=name: asked.append((name, need)))
    group.up_to_date("s0", 100)
    group.up_to_date("s1", 100)
    group.up_to_date("s2", 300)
    group.coming("s0", 300)
    assert asked == []  # s3 has not reached up-to-date: plan() decides during a first sync
    group.up_to_date("s3", 100)
    group.failed("s1")
    group.coming("s0", 300)
    assert asked == [("s3", 300)]  # not s0 itself, s1 (failed) nor s2 (complete at 300 already)
    group.coming("s0", 400)
    assert asked == [("s3", 300), ("s2", 400)]  # s3 was asked within PROBE_WINDOW: the group asks it at its end
    assert PROBE_WINDOW > 0
