"""FakeElectric's HTTP contract through fake.respond: status codes, headers, bodies, offsets."""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

import pytest

from replica.protocol import wire
from replica.testing import FakeElectric, FakeResponse

ITEMS = {
    "id": {"type": "int4", "pk_index": 0, "not_null": True},
    "title": {"type": "text"},
    "done": {"type": "bool"},
}
INITIAL_CACHE = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
NON_LIVE_CACHE = "public, max-age=60, stale-while-revalidate=300"
LIVE_CACHE = "public, max-age=5, stale-while-revalidate=5"


def get(fake: FakeElectric, headers: dict[str, str] | None = None, **params: str) -> FakeResponse:
    return fake.respond("GET", "/v1/shape?" + urlencode(params), headers)


def make(rows: int = 2, **kw: object) -> FakeElectric:
    fake = FakeElectric(**kw)  # type: ignore[arg-type]
    fake.create_table("items", ITEMS, [{"id": str(i), "title": f"t{i}", "done": "t"} for i in range(1, rows + 1)])
    return fake


def to_live(fake: FakeElectric, **shape: str) -> tuple[str, str]:
    """Follow non-live until up-to-date; returns (handle, offset)."""
    response = get(fake, table="items", offset="-1", **shape)
    handle, offset = response.headers["electric-handle"], response.headers["electric-offset"]
    while wire.H_UP_TO_DATE not in response.headers:
        response = get(fake, table="items", offset=offset, handle=handle, **shape)
        offset = response.headers["electric-offset"]
    return handle, offset


def test_initial_response_has_snapshot_schema_and_long_cache() -> None:
    fake = make()
    response = get(fake, table="items", offset="-1")
    assert response.status == 200
    headers = response.headers
    assert re.fullmatch(r"\d+-\d{16}", headers["electric-handle"])
    assert headers["electric-offset"] == "0_0"
    assert json.loads(headers["electric-schema"]) == ITEMS
    assert headers["cache-control"] == INITIAL_CACHE
    assert headers["etag"] == f'"{headers["electric-handle"]}:-1:0_0"'
    assert headers["electric-has-data"] == "true"
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert headers["access-control-expose-headers"] == wire.EXPOSED_HEADERS
    assert headers["electric-server"].startswith("ElectricSQL/")
    assert "electric-up-to-date" not in headers and "electric-cursor" not in headers
    body = response.json()
    assert body[:2] == [
        {"key": '"public"."items"/"1"', "value": {"id": "1", "title": "t1", "done": "true"},
         "headers": {"operation": "insert", "relation": ["public", "items"]}},
        {"key": '"public"."items"/"2"', "value": {"id": "2", "title": "t2", "done": "true"},
         "headers": {"operation": "insert", "relation": ["public", "items"]}},
    ]
    end = body[2]["headers"]
    assert end["control"] == "snapshot-end" and end["xip_list"] == []
    assert isinstance(end["xmin"], str) and isinstance(end["xmax"], str)
    assert len(body) == 3


def test_second_request_is_up_to_date_at_0_inf() -> None:
    fake = make()
    first = get(fake, table="items", offset="-1")
    handle = first.headers["electric-handle"]
    response = get(fake, table="items", offset="0_0", handle=handle)
    assert response.status == 200
    assert response.json() == [{"headers": {"control": "up-to-date", "global_last_seen_lsn": str(fake.lsn)}}]
    assert response.headers["electric-offset"] == "0_inf"
    assert response.headers["electric-up-to-date"] == ""
    assert response.headers["cache-control"] == NON_LIVE_CACHE
    assert response.headers["etag"] == f'"{handle}:0_0:0_inf"'
    assert "electric-schema" in response.headers


def test_empty_table() -> None:
    fake = make(rows=0)
    first = get(fake, table="items", offset="-1")
    assert [m["headers"]["control"] for m in first.json()] == ["snapshot-end"]
    assert first.headers["electric-offset"] == "0_0"
    assert "electric-up-to-date" not in first.headers
    second = get(fake, table="items", offset="0_0", handle=first.headers["electric-handle"])
    assert [m["headers"]["control"] for m in second.json()] == ["up-to-date"]
    assert second.headers["electric-offset"] == "0_inf"


def test_changes_only_snapshot_is_only_snapshot_end() -> None:
    fake = make(rows=3)
    first = get(fake, table="items", offset="-1", log="changes_only")
    assert [m["headers"].get("control") for m in first.json()] == ["snapshot-end"]
    full = get(fake, table="items", offset="-1")
    assert full.headers["electric-handle"] != first.headers["electric-handle"]  # another definition
    handle, offset = to_live(fake, log="changes_only")
    fake.insert("items", {"id": "9", "title": "new"})
    live = get(fake, table="items", offset=offset, handle=handle, log="changes_only", live="true")
    assert [m["key"] for m in live.json() if "key" in m] == ['"public"."items"/"9"']


def test_offset_now() -> None:
    fake = make()
    response = get(fake, table="items", offset="now")
    assert response.json() == [{"headers": {"control": "up-to-date", "global_last_seen_lsn": str(fake.lsn)}}]
    assert response.headers["electric-offset"] == "0_inf"
    assert response.headers["electric-has-data"] == "false"
    assert "electric-schema" in response.headers
    handle = response.headers["electric-handle"]
    lsn = fake.insert("items", {"id": "7"})
    again = get(fake, table="items", offset="now", handle="ignored")
    assert again.headers["electric-offset"] == f"{lsn}_0"
    assert again.headers["electric-handle"] == handle
    fake.insert("items", {"id": "8"})
    live = get(fake, table="items", offset=f"{lsn}_0", handle=handle, live="true")
    assert [m["key"] for m in live.json() if "key" in m] == ['"public"."items"/"8"']


def test_handles_shared_per_definition_and_never_reused() -> None:
    fake = make()
    a = get(fake, table="items", offset="-1").headers["electric-handle"]
    assert get(fake, table="public.items", offset="-1", handle="whatever").headers["electric-handle"] == a
    others = {
        get(fake, table="items", offset="-1", **extra).headers["electric-handle"]
        for extra in ({"where": "id > 1"}, {"replica": "full"}, {"columns": "id"}, {"log": "changes_only"})
    }
    assert len(others) == 4 and a not in others
    seen = {a} | others
    for _ in range(3):
        fake.rotate("items")
        handle = get(fake, table="items", offset="-1").headers["electric-handle"]
        assert handle not in seen
        seen.add(handle)


BAD_REQUESTS = [
    ({"table": "items", "offset": "1_2_3", "handle": "h"}, "offset", "has invalid format"),
    ({"table": "items", "offset": "10", "handle": "h"}, "offset", "has invalid format"),
    ({"table": "items", "offset": "1_-2", "handle": "h"}, "offset", "has invalid format"),
    ({"table": "items", "offset": "abc", "handle": "h"}, "offset", "has invalid format"),
    ({"table": "items"}, "offset", "can't be blank"),
    ({"table": "items", "offset": "0_0"}, "handle", "can't be blank when offset != -1"),
    ({"table": "items", "offset": "-1", "live": "true"}, "live", "can't be true when offset == -1"),
    ({"table": "items", "offset": "now", "live": "true"}, "live", "can't be true when offset is 'now'"),
    ({"table": "items", "offset": "-1", "live_sse": "true"}, "live_sse", "can't be true unless live is also true"),
    (
        {"table": "nope", "offset": "-1"},
        "table",
        'Table "public"."nope" does not exist. If the table name contains capitals or special characters you must quote it.',
    ),
    ({"table": "Items", "offset": "-1"}, None, None),  # unquoted: folds to items, fine
    ({"table": '"Items"', "offset": "-1"}, "table", None),
    ({"table": "items", "offset": "-1", "columns": "id,nope"}, "columns", "The following columns could not be found: nope"),
    (
        {"table": "items", "offset": "-1", "columns": "title"},
        "columns",
        "The list of columns must include all primary key columns, missing: id",
    ),
    ({"table": "items", "offset": "-1", "where": "nope = 1"}, "where", None),
    ({"table": "items", "offset": "-1", "where": "id IN (SELECT 1)"}, "where", None),
    ({"table": "items", "offset": "-1", "where": "id"}, "where", "WHERE clause must return a boolean"),
    (
        {"table": "items", "offset": "-1", "where": "id = $1", "params[2]": "1"},
        "params",
        "Parameters must be numbered sequentially, starting from 1",
    ),
    (
        {"table": "items", "offset": "-1", "where": "id = $1", "params[x]": "1"},
        "params",
        "Parameters can only use numbers as keys",
    ),
    ({"table": "items", "offset": "-1", "where": "id = $2", "params[1]": "1"}, "where", None),
    ({"table": "items", "offset": "-1", "replica": "half"}, "replica", "is invalid"),
]


@pytest.mark.parametrize(("params", "field", "message"), BAD_REQUESTS)
def test_invalid_requests_get_400_with_field_errors(params: dict[str, str], field: str | None, message: str | None) -> None:
    response = get(make(), **params)
    if field is None:
        assert response.status == 200
        return
    assert response.status == 400, response.body
    body = response.json()
    assert body["message"] == "Invalid request"
    assert list(body["errors"]) == [field]
    if message is not None:
        assert body["errors"][field] == [message]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["surrogate-control"] == "no-store"
    assert "electric-handle" not in response.headers and "electric-offset" not in response.headers


def test_secret() -> None:
    fake = make(secret="s3")
    for params in ({}, {"secret": "wrong"}, {"api_secret": "nope"}):
        response = get(fake, table="items", offset="-1", **params)
        assert response.status == 401
        assert response.json() == {"message": "Unauthorized - Invalid API secret"}
        assert response.headers["cache-control"] == "no-store"
    assert get(fake, table="items", offset="-1", secret="s3").status == 200
    assert get(fake, table="items", offset="-1", api_secret="s3").status == 200
    assert fake.respond("OPTIONS", "/v1/shape?table=items").status == 204
    assert fake.respond("GET", "/v1/health").status == 200


def test_409_for_a_handle_that_is_not_current() -> None:
    fake = make()
    handle, offset = to_live(fake)
    response = get(fake, table="items", offset=offset, handle="123-456")
    assert response.status == 409
    assert response.body == b'[{"headers":{"control":"must-refetch"}}]'
    assert response.headers["electric-handle"] == handle
    assert response.headers["cache-control"] == "public, max-age=60, must-revalidate"
    assert "electric-offset" not in response.headers and "electric-schema" not in response.headers
    # another definition's handle does not match either
    other = get(fake, table="items", offset="-1", where="id = 1").headers["electric-handle"]
    assert get(fake, table="items", offset="0_0", handle=other).status == 409
    fake.rotate("items")
    rotated = get(fake, table="items", offset=offset, handle=handle, live="true")
    assert rotated.status == 409
    new = rotated.headers["electric-handle"]
    assert new != handle
    assert get(fake, table="items", offset="-1").headers["electric-handle"] == new


def test_out_of_bounds_offset() -> None:
    fake = make()
    handle, _ = to_live(fake)
    response = get(fake, table="items", offset="99999999999_0", handle=handle)
    assert response.status == 400
    assert response.json() == {"message": "Invalid request", "errors": {"offset": ["out of bounds for this shape"]}}


def test_live_with_nothing_new_answers_as_at_timeout() -> None:
    fake = make()
    handle, offset = to_live(fake)
    first = get(fake, table="items", offset=offset, handle=handle, live="true", cursor="")
    second = get(fake, table="items", offset=offset, handle=handle, live="true", cursor="")
    for response in (first, second):
        assert response.status == 200
        assert response.json() == [{"headers": {"control": "up-to-date", "global_last_seen_lsn": str(fake.lsn)}}]
        assert response.headers["electric-offset"] == offset
        assert response.headers["electric-has-data"] == "false"
        assert response.headers["electric-up-to-date"] == ""
        assert response.headers["cache-control"] == LIVE_CACHE
        assert response.headers["electric-cursor"].isdigit()
        assert "electric-schema" not in response.headers
    assert first.headers["etag"] != second.headers["etag"]
    assert first.headers["etag"].startswith(f'"{handle}:{offset}:{offset}:')


def test_cursor_is_interval_aligned_and_strictly_increasing() -> None:
    fake = make(long_poll_timeout=20.0)
    handle, offset = to_live(fake)
    first = int(get(fake, table="items", offset=offset, handle=handle, live="")
                .headers["electric-cursor"])
    assert first % 20 == 0
    cursor = first
    for _ in range(5):
        response = get(fake, table="items", offset=offset, handle=handle, live="1", cursor=str(cursor))
        new = int(response.headers["electric-cursor"])
        assert cursor < new <= cursor + 3600
        cursor = new
    not_live = get(fake, table="items", offset=offset, handle=handle, live="false")
    assert "electric-cursor" not in not_live.headers and "electric-schema" in not_live.headers


def test_snapshot_is_chunked_by_size() -> None:
    fake = make(rows=50, chunk_bytes=300)
    response = get(fake, table="items", offset="-1")
    handle = response.headers["electric-handle"]
    offsets, keys, controls = [], [], []
    while True:
        offsets.append(response.headers["electric-offset"])
        assert len(response.body) < 300 + 200  # a chunk ends once it reaches chunk_bytes
        for message in response.json():
            (keys.append(message["key"]) if "key" in message else controls.append(message["headers"]["control"]))
        if "electric-up-to-date" in response.headers:
            break
        assert all("control" not in m["headers"] or m["headers"]["control"] == "snapshot-end" for m in response.json())
        response = get(fake, table="items", offset=offsets[-1], handle=handle)
    n = len(offsets) - 1
    assert n > 3
    assert offsets == [f"0_{i}" for i in range(n)] + ["0_inf"]
    assert controls == ["snapshot-end", "up-to-date"]
    assert keys == list(fake.rows("items"))


def test_live_burst_larger_than_a_chunk_ends_without_up_to_date() -> None:
    fake = make(chunk_bytes=400)
    handle, offset = to_live(fake)
    with fake.transaction() as tx:
        for i in range(10, 30):
            tx.insert("items", {"id": str(i), "title": "x" * 20})
    seen: list[str] = []
    for _ in range(30):
        response = get(fake, table="items", offset=offset, handle=handle, live="true")
        body = response.json()
        seen += [m["key"] for m in body if "key" in m]
        offset = response.headers["electric-offset"]
        if "electric-up-to-date" in response.headers:
            assert body[-1]["headers"]["control"] == "up-to-date"
            break
        assert all("key" in m for m in body)
    else:
        pytest.fail("never up to date")
    assert len(seen) == 20 and offset == f"{tx.lsn}_38"


def test_offsets_compare_numerically_beyond_2_53() -> None:
    fake = make(start_lsn=2**60 - 7)
    handle, offset = to_live(fake)
    lsns = [fake.insert("items", {"id": str(i)}) for i in range(10, 14)]
    assert all(lsn > 2**53 for lsn in lsns)
    response = get(fake, table="items", offset=f"{lsns[1]}_0", handle=handle)
    assert [m["headers"]["lsn"] for m in response.json() if "key" in m] == [str(lsn) for lsn in lsns[2:]]
    assert response.headers["electric-offset"] == f"{lsns[-1]}_0"
    # <lsn>_inf is a valid position after every op of that transaction
    tail = get(fake, table="items", offset=f"{lsns[2]}_inf", handle=handle)
    assert [m["headers"]["lsn"] for m in tail.json() if "key" in m] == [str(lsns[3])]


def test_head_options_health_and_unknown_paths() -> None:
    fake = make()
    got = fake.respond("GET", "/v1/shape?table=items&offset=-1")
    head = fake.respond("HEAD", "/v1/shape?table=items&offset=-1")
    assert head.status == 200 and head.body == b""
    assert {k: v for k, v in head.headers.items() if k != "x-request-id"} == {
        k: v for k, v in got.headers.items() if k != "x-request-id"
    }
    options = fake.respond("OPTIONS", "/v1/shape", {"Access-Control-Request-Headers": "if-none-match, x-custom"})
    assert options.status == 204
    assert options.headers["access-control-max-age"] == "86400"
    assert options.headers["access-control-allow-methods"] == "GET, POST, HEAD, DELETE, OPTIONS"
    assert options.headers["access-control-allow-headers"] == "if-none-match"
    health = fake.respond("GET", "/v1/health")
    assert health.json() == {"status": "active"}
    assert health.headers["cache-control"] == "no-cache, no-store, must-revalidate"
    assert fake.respond("GET", "/v2/shape").status == 404
    assert fake.respond("GET", "/v1/%73hape/?table=items&offset=-1").status == 200
    assert fake.respond("DELETE", "/v1/shape?table=items").status == 405
    assert fake.respond("GET", "/", {"Origin": "http://x"}).headers["access-control-allow-origin"] == "http://x"


def test_if_none_match_gives_304() -> None:
    fake = make()
    first = get(fake, table="items", offset="-1")
    again = get(fake, {"If-None-Match": first.headers["etag"]}, table="items", offset="-1")
    assert again.status == 304 and again.body == b""
    assert again.headers["electric-handle"] == first.headers["electric-handle"]
    assert again.headers["cache-control"] == INITIAL_CACHE
    assert "electric-schema" not in again.headers
    other = get(fake, {"If-None-Match": '"nope", W/"x"'}, table="items", offset="-1")
    assert other.status == 200


def test_unknown_params_and_full_urls_are_accepted() -> None:
    fake = make()
    response = fake.respond("GET", "http://example/v1/shape?table=items&offset=-1&cache-buster=1&expired_handle=x&foo")
    assert response.status == 200
    assert [r[1] for r in fake.requests] == ["/v1/shape?table=items&offset=-1&cache-buster=1&expired_handle=x&foo"]


def test_requests_are_recorded() -> None:
    fake = make()
    get(fake, table="items", offset="-1")
    fake.respond("GET", "/v1/health")
    assert [(m, t.split("?")[0]) for m, t, _ in fake.requests] == [("GET", "/v1/shape"), ("GET", "/v1/health")]
    assert fake.requests[0][2] <= fake.requests[1][2]
