"""Which groups a Replica coordinates (design.md §3c): the default group stops at DEFAULT_GROUP_LIMIT."""

from __future__ import annotations

import logging

import pytest

from replica import Shape
from replica.sync.group import DEFAULT_GROUP_LIMIT, group_members


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
