"""The REST API's fast paths on real PostgreSQL: summary and detail serialized once (the same JSON as
FastAPI's response_model would give), the token cache (one token query per client burst, expiry still on
time), and the database pool's ping of idle connections only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter

from orchestrator.persistence import db
from orchestrator.services import answers as answers_mod
from orchestrator.services import auth
from schemas.patching import ExecutionDetail, ExecutionSummary
from tests.integration.entrypoints.test_rest_api import World, server, world  # noqa: F401  (the fixture)


def _count(w: World, call: Any) -> tuple[Any, list[str]]:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    sa.event.listen(w.container.db_engine, "before_cursor_execute", count)
    try:
        return call(), statements
    finally:
        sa.event.remove(w.container.db_engine, "before_cursor_execute", count)


def test_summary_and_detail_are_the_models_json_by_alias_with_the_paging_headers(world: World) -> None:  # noqa: F811
    jane = world.login()
    ids = []
    for _ in range(3):
        ids.append(world.execute([server(1)], jane)[0]["executionId"])
        world.drive()
    one = ids[0]  # the run that installed the patches
    path = f"/rest/servers/osd/server/{server(1)}/patch"
    page = world.client.get(path + "?limit=2", headers=jane)
    assert page.status_code == 200 and page.headers["content-type"] == "application/json"
    expected = TypeAdapter(list[ExecutionSummary]).dump_python(
        world.container.service.history("OSD", server(1), limit=2), mode="json", by_alias=True)
    assert page.json() == expected and len(expected) == 2
    cursor = page.json()[-1]["execution_id"]
    assert page.headers["X-Next-Cursor"] == cursor
    assert page.headers["Link"] == f'<{path}?limit=2&cursor={cursor}>; rel="next"'
    last = world.client.get(path + f"?limit=2&cursor={cursor}", headers=jane)
    assert len(last.json()) == 1 and "X-Next-Cursor" not in last.headers and "Link" not in last.headers

    detail = world.client.get(f"{path}/{one}", headers=jane)
    assert detail.status_code == 200
    assert detail.json() == world.container.service.detail("OSD", server(1), one).model_dump(mode="json",
                                                                                              by_alias=True)
    assert ExecutionDetail.model_validate(detail.json()).patches
    assert world.client.get(f"{path}/VA1-000001", headers=jane).status_code == 404


def test_a_burst_of_calls_checks_its_token_once_and_expiry_is_still_on_time(world: World) -> None:  # noqa: F811
    jane = world.login()
    path = f"/v2/servers/osd/{server(1)}"
    first, statements = _count(world, lambda: world.client.get(path, headers=jane))
    assert first.status_code == 200 and any("tokens" in s for s in statements)
    second, statements = _count(world, lambda: world.client.get(path, headers=jane))
    assert second.status_code == 200 and not any("tokens" in s for s in statements)
    world.clock.advance(timedelta(days=14).total_seconds() + 1)  # expired while cached: refused at once
    answer = world.client.get(path, headers=jane)
    assert answer.status_code == 401 and "expired" in answer.json()["message"]
    assert world.client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_the_token_cache_forgets_after_its_ttl_and_can_be_turned_off(world: World) -> None:  # noqa: F811
    jane = world.login()
    token = jane["Authorization"].split()[1]
    accounts = world.client.app.state.auth  # type: ignore[attr-defined]
    now = [100.0]
    cache = auth.TokenCache(accounts, ttl=5.0, monotonic=lambda: now[0])
    queries: list[str] = []
    real_check = accounts.check

    def check(value: str | None) -> tuple[auth.Principal, datetime]:
        queries.append("check")
        return real_check(value)

    accounts.check = check  # type: ignore[method-assign]
    try:
        who = cache.authenticate(token)
        assert who.username == "jane" and cache.authenticate(token) == who and len(queries) == 1
        now[0] += 5.0
        assert cache.cached(token) is None and cache.authenticate(token) == who and len(queries) == 2
        off = auth.TokenCache(accounts, ttl=0.0, monotonic=lambda: now[0])
        off.authenticate(token)
        off.authenticate(token)
        assert len(queries) == 4 and off.cached(token) is None
        small = auth.TokenCache(accounts, ttl=60.0, size=1, monotonic=lambda: now[0])
        small.authenticate(token)
        small.authenticate(world.login("viewer")["Authorization"].split()[1])
        assert small.cached(token) is None  # bounded: the full cache was emptied for the newcomer
    finally:
        del accounts.check


def test_pooled_connections_are_pinged_only_after_sitting_idle(pg: str) -> None:
    pings: list[datetime] = []
    busy = db.create_engine_for(pg, ping_after_idle=60.0)
    always = db.create_engine_for(pg, ping_after_idle=0.0)
    try:
        for engine in (busy, always):
            real = engine.dialect.do_ping

            def ping(connection: Any, real: Any = real) -> bool:
                pings.append(datetime.now(UTC))
                return bool(real(connection))

            engine.dialect.do_ping = ping  # type: ignore[method-assign]
        for _ in range(3):
            with busy.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        assert pings == []  # returned a moment ago: no round trip
        for _ in range(3):
            with always.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        assert len(pings) == 2  # every reuse of a pooled connection (the first was a new one)

        # a pooled connection that died while idle is replaced before anyone uses it
        with always.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with busy.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with always.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != pid
    finally:
        busy.dispose()
        always.dispose()


def test_answers_are_read_fresh_while_an_execution_runs_and_cached_once_it_ended(world: World) -> None:  # noqa: F811
    jane = world.login()
    answers = world.container.service.answers
    answers.clear()
    execution_id = str(world.execute([server(3)], jane)[0]["executionId"])
    base = f"/rest/servers/osd/server/{server(3)}/patch"

    def read() -> tuple[bytes, bytes, list[str]]:
        (summary, detail), statements = _count(world, lambda: (
            world.client.get(base, headers=jane), world.client.get(f"{base}/{execution_id}", headers=jane)))
        assert summary.status_code == 200 and detail.status_code == 200
        return summary.content, detail.content, statements

    first = read()
    world.container.engine.advance(execution_id)  # one step: still running, its answers change
    second = read()
    assert first[1] != second[1] and len(answers) == 0  # running: never cached
    assert len(first[2]) == len(second[2]) == 4  # summary: page + cycles; detail: execution + patches
    world.drive()
    ended = read()
    assert b'"status":"completed"' in ended[0] and ended[1] != second[1] and len(answers) == 2
    hits = answers.hits
    again = read()
    assert again[:2] == ended[:2] and answers.hits == hits + 2
    assert len(again[2]) == 2  # from the cache: the page alone, the execution row alone

    # the cached bytes are exactly the models' JSON, the same as a fresh read gives
    service = world.container.service
    assert again[0] == TypeAdapter(list[ExecutionSummary]).dump_json(service.history("OSD", server(3)), by_alias=True)
    assert again[1] == TypeAdapter(ExecutionDetail).dump_json(service.detail("OSD", server(3), execution_id),
                                                              by_alias=True)

    # a write that reached an ended row would bump its version: a new key, a fresh answer
    with world.container.db_engine.begin() as conn:
        conn.execute(sa.text("UPDATE executions SET end_message = 'changed', version = version + 1 WHERE id = :id"),
                     {"id": execution_id})
    changed = read()
    assert b'"end_message":"changed"' in changed[1] and len(changed[2]) == 4  # both read fresh


def test_the_answer_cache_is_bounded_least_recently_used_first() -> None:
    cache = answers_mod.AnswerCache(max_bytes=100)
    cache.put(("summary", "A"), b"a" * 40)
    cache.put(("summary", "B"), b"b" * 40)
    assert cache.get(("summary", "A")) == b"a" * 40  # A is now the most recently used
    cache.put(("summary", "C"), b"c" * 40)  # over 100 bytes: B goes
    assert cache.get(("summary", "B")) is None and len(cache) == 2 and cache.size == 80
    cache.put(("detail", "D"), b"d" * 101)  # larger than the whole cache: not kept
    assert cache.get(("detail", "D")) is None and cache.size == 80
    for n in range(1000):
        cache.put(("summary", str(n)), b"x" * 30)
    assert cache.size <= 100 and len(cache) == 3
