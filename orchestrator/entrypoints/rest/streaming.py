"""The executePackage answers as a stream: the JSON array FastAPI would build from `list[QueuedAnswer]`
(`response_model_exclude_none`), byte for byte, written a chunk of entries at a time, so a group action of
100,000 servers never holds its whole answer (models, dicts and one 10 MB string) in memory at once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter

from orchestrator.entrypoints.rest import bodies
from schemas.patching import QueuedServer

ENTRY = TypeAdapter(bodies.QueuedAnswer)
CHUNK = 1000  # entries per chunk written


def queued_json(alias: str, answers: Sequence[QueuedServer], chunk: int = CHUNK) -> Iterator[bytes]:
    """The bytes of the answer, in pieces: `[`, the entries separated by `,`, `]`."""
    yield b"["
    for start in range(0, len(answers), chunk):
        parts = [ENTRY.dump_json(bodies.queued_answer(alias, a), exclude_none=True)
                 for a in answers[start:start + chunk]]
        yield (b"," if start else b"") + b",".join(parts)
    yield b"]"


def queued_response(alias: str, answers: Sequence[QueuedServer]) -> StreamingResponse:
    """The executePackage answer for `answers`, streamed."""
    return StreamingResponse(queued_json(alias, answers), media_type="application/json")
