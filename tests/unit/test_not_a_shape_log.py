"""An answer that is no shape log (a wrong URL, a web or proxy page): how the protocol tells it from a real
log (also one whose headers a proxy stripped), the URL its message names, and how the follow loop counts
such answers (a shape that never synced stops after ``wrong_url_limit`` in a row; one that did, retries)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica import Backoff, NotAShapeLog, ProtocolError, Replica, ReplicaError, Shape, ShapeError
from replica.protocol import wire
from replica.protocol.endpoint import check_shape_log, endpoint_of, shape_url
from replica.protocol.shapelog import Response, ShapeLog
from replica.testing import FakeElectric

URL = "http://localhost:3000"
HTML = b"<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body></body></html>"
LOG = json.dumps([{"headers": {"control": "up-to-date"}}]).encode()
ELECTRIC = {wire.H_HANDLE: "1-2", wire.H_OFFSET: "0_inf", wire.H_SCHEMA: '{"id": {"type": "int4", "pk_index": 0}}'}

# (content type, Electric's handle/offset headers?, body) → not a shape log? (None: the check lets it through)
CASES: dict[str, tuple[str | None, bool, bytes, bool]] = {
    "Electric's root: empty 200": (None, False, b"", True),
    "HTML page": ("text/html; charset=utf-8", False, HTML, True),
    "HTML without a content type": (None, False, HTML, True),
    "plain text": ("text/plain", False, b"OK", True),
    "a JSON object": ("application/json", False, b'{"status": "active"}', True),
    "a JSON array of rows, not messages": ("application/json", False, b'[{"id": 1}]', True),
    "invalid JSON": ("application/json", False, b"[{", True),
    "HTML with Electric's headers": ("text/html", True, HTML, True),
    "a real log": ("application/json; charset=utf-8", True, LOG, False),
    "a real log, no content type": (None, True, LOG, False),
    "a real log, headers stripped by a proxy": ("application/json", False, LOG, False),
    "an empty log, headers stripped": ("application/json", False, b"[]", False),
    "vendor JSON type": ("application/vnd.api+json", True, LOG, False),
    "an event stream (SSE)": ("text/event-stream", True, b'data: {"headers":{"control":"up-to-date"}}\n\n', False),
    "truncated body with Electric's headers": ("application/json", True, LOG[:-3], False),
    "empty body with Electric's headers": ("application/json", True, b"", False),
}


def headers(content_type: str | None, electric: bool) -> dict[str, str]:
    out = dict(ELECTRIC) if electric else {"electric-server": "ElectricSQL/1.7.12"}
    if content_type is not None:
        out["content-type"] = content_type
    return out


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_what_is_not_a_shape_log(case: str) -> None:
    content_type, electric, body, refused = CASES[case]
    if refused:
        with pytest.raises(NotAShapeLog, match=rf"^{URL} answered 200"):
            check_shape_log(200, headers(content_type, electric), body, URL)
    else:
        check_shape_log(200, headers(content_type, electric), body, URL)


def test_the_message_is_the_one_the_issue_asks_for() -> None:
    with pytest.raises(NotAShapeLog) as raised:
        check_shape_log(200, {"content-type": "text/html"}, HTML, "http://host:3000")
    assert str(raised.value) == ("http://host:3000 answered 200 text/html without Electric's headers: is this the "
                                 "shape endpoint? Electric serves shapes at http://host:3000/v1/shape")
    with pytest.raises(NotAShapeLog) as raised:
        check_shape_log(200, {}, b"", "http://host:3000/?secret=S3CRET")
    assert str(raised.value) == ("http://host:3000/ answered 200 (empty body) without Electric's headers: is this "
                                 "the shape endpoint? Electric serves shapes at http://host:3000/v1/shape")
    with pytest.raises(NotAShapeLog) as raised:
        check_shape_log(200, {"content-type": "text/html"}, HTML, None)
    assert str(raised.value).startswith("the server answered 200 text/html")
    assert str(raised.value).endswith("Electric serves shapes at …/v1/shape")


def test_a_page_at_the_shape_path_is_named_by_its_title() -> None:
    with pytest.raises(NotAShapeLog) as raised:
        check_shape_log(200, {"content-type": "text/html"}, b"<title>\n  Sign in &amp; go </title>", f"{URL}/v1/shape")
    assert str(raised.value) == (f"{URL}/v1/shape answered 200 text/html without Electric's headers (page title "
                                 "'Sign in & go'): something other than Electric answers at this URL (a proxy's "
                                 "login or error page?); check the URL and what sits in front of Electric")


@pytest.mark.parametrize(("url", "suggested"), [
    ("http://host:3000", "http://host:3000/v1/shape"),
    ("http://host:3000/", "http://host:3000/v1/shape"),
    ("https://example.com/electric", "https://example.com/electric/v1/shape"),
    ("http://host/v1", "http://host/v1/shape"),
    ("http://host/v1/", "http://host/v1/shape"),
    ("http://host/v1/shapes", "http://host/v1/shape"),
    ("http://host/proxy/v1/shpe?x=1", "http://host/proxy/v1/shape"),
    ("http://user:pw@host:3000?secret=S", "http://host:3000/v1/shape"),
    ("http://host/v1/shape", None),
    ("http://host/v1/shape/", None),
    (None, "…/v1/shape"),
])
def test_the_suggested_shape_endpoint(url: str | None, suggested: str | None) -> None:
    assert shape_url(url) == suggested


@given(url=st.from_regex(r"https?://[a-z0-9.:@]{1,20}(/[a-zA-Z0-9_./-]{0,20})?(\?secret=[A-Z]{6,9})?", fullmatch=True),
       status=st.sampled_from([200, 201, 203]), body=st.binary(max_size=64),
       content_type=st.one_of(st.none(), st.sampled_from(["text/html", "application/json", "text/plain", ""])),
       electric=st.booleans())
def test_any_answer_passes_or_is_not_a_shape_log_and_the_message_hides_query_and_credentials(
        url: str, status: int, body: bytes, content_type: str | None, electric: bool) -> None:
    try:
        check_shape_log(status, headers(content_type, electric), body, url)
    except NotAShapeLog as exc:
        message = str(exc)
        assert message.startswith(f"{endpoint_of(url)} answered {status}")
        assert "secret=" not in message and "@" not in message.split(" answered ")[0]
    suggestion = shape_url(url)
    assert suggestion is None or (suggestion.endswith("/v1/shape") and suggestion.split("/")[:3] ==
                                  endpoint_of(url).split("/")[:3])


def test_shapelog_refuses_such_an_answer_without_moving() -> None:
    log = ShapeLog(Shape("items"), url=URL)
    request, checkpoint = log.next_request(), log.checkpoint()
    with pytest.raises(NotAShapeLog):
        log.receive(Response(200, {"content-type": "text/html"}, HTML))
    assert log.next_request() == request and log.checkpoint() == checkpoint
    assert isinstance(NotAShapeLog("x"), ProtocolError), "retried like any protocol error"
    with pytest.raises(ProtocolError, match="a proxy may be stripping electric-\\* headers"):
        log.receive(Response(200, {"content-type": "application/json"}, LOG))


# --- the follow loop: how many in a row stop a shape ------------------------------------------------------


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    with Backoff.testing():
        yield


def make_fake(chunk_bytes: int = 10_000_000) -> FakeElectric:
    fake = FakeElectric(long_poll_timeout=0.2, chunk_bytes=chunk_bytes)
    fake.create_table("items", {"id": {"type": "int4", "pk_index": 0, "not_null": True}, "title": {"type": "text"}},
                      rows=[{"id": str(i), "title": f"t{i}"} for i in range(1, 6)])
    return fake


class Script:
    """A transport answering from a script of answers ("page", "busy", "fake"), then the fake forever."""

    def __init__(self, fake: FakeElectric, answers: list[str]) -> None:
        self.fake, self.answers, self.sent = fake, list(answers), 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        answer = self.answers.pop(0) if self.answers else "fake"
        if answer == "page":
            return httpx.Response(200, headers={"content-type": "text/html"}, content=HTML)
        if answer == "busy":
            return httpx.Response(503, json={"message": "busy"})
        return await self.fake.handler(request)


def replica_for(db: Path, script: Script, **kwargs: object) -> Replica:
    return Replica(db, "http://localhost:3000/v1/shape", Shape("items"), transport=httpx.MockTransport(script),
                   **kwargs)  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize("limit", [1, 3, 5])
async def test_a_shape_that_never_synced_stops_after_the_limit(tmp_path: Path, limit: int) -> None:
    script = Script(make_fake(), ["page"] * 100)
    replica = replica_for(tmp_path / "a.db", script, wrong_url_limit=limit)
    with pytest.raises(ShapeError, match="answered 200 text/html without Electric's headers"):
        await replica.run(once=True)
    assert script.sent == limit
    [status] = replica.status()
    assert status.state == "error" and status.error is not None and "page title 'Welcome to nginx!'" in status.error


@pytest.mark.anyio
async def test_other_answers_in_between_start_the_count_again(tmp_path: Path) -> None:
    script = Script(make_fake(), ["page", "page", "busy", "page", "page", "busy", "page", "page"])
    replica = replica_for(tmp_path / "a.db", script)  # the default: 3 in a row
    await replica.run(once=True)
    assert replica.status()[0].rows == 5


@pytest.mark.anyio
async def test_none_retries_forever_and_shows_why(tmp_path: Path) -> None:
    script = Script(make_fake(), ["page"] * 30)
    seen: list[str | None] = []
    replica = replica_for(tmp_path / "a.db", script, wrong_url_limit=None,
                          observer=lambda e: seen.append(e.error) if e.kind == "retry" else None)
    await replica.run(once=True)
    assert script.sent > 30 and len(seen) == 30 and all("without Electric's headers" in (e or "") for e in seen)


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["a stored position", "an answer earlier in this run"])
async def test_a_shape_that_synced_before_keeps_retrying(tmp_path: Path, how: str) -> None:
    fake = make_fake(chunk_bytes=200)  # several snapshot chunks: the pages can come after the first
    if how == "a stored position":
        await replica_for(tmp_path / "a.db", Script(fake, [])).run(once=True)
        fake.insert("items", {"id": "6", "title": "new"})
        script = Script(fake, ["page"] * 10)
    else:
        script = Script(fake, ["fake"] + ["page"] * 10)
    replica = replica_for(tmp_path / "a.db", script)
    await replica.run(once=True)
    assert script.sent > 10
    assert replica.status()[0].state != "error"


def test_a_limit_below_one_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ReplicaError, match="wrong_url_limit"):
        replica_for(tmp_path / "a.db", Script(make_fake(), []), wrong_url_limit=0)

