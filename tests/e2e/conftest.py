"""Fixtures for end-to-end tests: a cluster of real worker and beat processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulation.mailsink import MailSink
from tests.e2e.harness import Cluster


@pytest.fixture
def cluster(pg: str, redis_url: str, mail_sink: MailSink, tmp_path: Path) -> Iterator[Cluster]:
    """Processes are started by the test; all are stopped (and their logs kept in tmp_path) afterwards."""
    group = Cluster.for_test(pg, redis_url, mail_sink.url, tmp_path / "cluster")
    yield group
    group.stop_all()
