"""The streamed executePackage answer (orchestrator/entrypoints/rest/streaming.py) is, byte for byte, the JSON
list FastAPI answered before (`response_model=list[QueuedAnswer]`, `response_model_exclude_none=True`)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Response
from fastapi.testclient import TestClient

from orchestrator.entrypoints.rest import bodies, streaming
from schemas.patching import QueuedServer


def _answers(count: int) -> list[QueuedServer]:
    out = []
    for i in range(count):
        if i % 3 == 2:
            out.append(QueuedServer(server=f"VA1OSDPATCH{i:02d}", is_queued=False,
                                    error_message=f"Server \"VA1OSDPATCH{i:02d}\" déjà en cours: VA1-{100000 + i} ✓"))
        else:
            out.append(QueuedServer(server=f"VA1OSDPATCH{i:02d}", is_queued=True, execution_id=f"VA1-{100000 + i}"))
    return out


def _app(answers: list[QueuedServer], chunk: int) -> FastAPI:
    app = FastAPI()

    @app.post("/list", response_model=list[bodies.QueuedAnswer], response_model_exclude_none=True)
    def as_list() -> list[bodies.QueuedAnswer]:  # the route before streaming
        return [bodies.queued_answer("osd", a) for a in answers]

    @app.post("/stream", response_model=list[bodies.QueuedAnswer], response_model_exclude_none=True)
    def as_stream() -> Response:
        return streaming.StreamingResponse(streaming.queued_json("osd", answers, chunk=chunk),
                                           media_type="application/json")

    return app


@pytest.mark.parametrize(("count", "chunk"), [(0, 3), (1, 3), (3, 3), (7, 3), (2500, 1000)])
def test_the_streamed_answer_is_the_list_answer_byte_for_byte(count: int, chunk: int) -> None:
    client = TestClient(_app(_answers(count), chunk))
    listed, streamed = client.post("/list"), client.post("/stream")
    assert listed.status_code == streamed.status_code == 200
    assert streamed.content == listed.content
    assert streamed.headers["content-type"] == listed.headers["content-type"] == "application/json"


def test_the_real_response_streams_in_chunks() -> None:
    pieces = list(streaming.queued_json("osd", _answers(5), chunk=2))
    assert pieces[0] == b"[" and pieces[-1] == b"]" and len(pieces) == 5  # [, 2, 2, 1 entries, ]
    assert isinstance(streaming.queued_response("osd", _answers(2)), streaming.StreamingResponse)
