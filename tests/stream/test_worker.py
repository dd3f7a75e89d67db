"""The worker's seams with Faust: the commit path it borrows (a private API, pinned in pyproject.toml) is the one
it was tested with, a Kafka message becomes a RawMessage with its headers, and an error in the agent ends the
process."""

from __future__ import annotations

import inspect
import uuid
from importlib.metadata import version

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP

from stream.flow import Partition
from stream.worker import raw_message
from tests.stream.pipeline_run import PipelineRun


def test_the_faust_commit_path_is_the_one_the_worker_was_tested_with() -> None:
    """stream.worker commits its ledger's offsets through Consumer._commit_offsets (only assigned partitions; dead
    letters flushed first). An upgrade of faust-streaming must come with this test and the real-stack commit tests."""
    assert version("faust-streaming").startswith("0.15."), "re-check Consumer._commit_offsets, then the pin"
    commit = Consumer._commit_offsets  # noqa: SLF001
    assert inspect.iscoroutinefunction(commit)
    assert list(inspect.signature(commit).parameters) == ["self", "offsets", "start_new_transaction"]
    source = inspect.getsource(commit)
    assert "self.assignment()" in source and "producer.flush()" in source
    partition: Partition = ("posts", 3)
    assert TP("posts", 3) == partition and hash(TP("posts", 3)) == hash(partition)  # the flow's keys are TPs


class _Message:
    def __init__(self, headers: object) -> None:
        self.value, self.key, self.topic, self.partition, self.offset = b"{}", b"k", "posts", 1, 9
        self.headers = headers


def test_a_message_keeps_its_headers_in_either_faust_form() -> None:
    for headers in ([("postlens-version", b"4")], {"postlens-version": b"4"}):
        raw = raw_message(_Message(headers))  # type: ignore[arg-type]
        assert raw.headers == (("postlens-version", b"4"),) and (raw.partition, raw.offset) == (1, 9)
    assert raw_message(_Message(None)).headers == ()  # type: ignore[arg-type]


@pytest.mark.integration
async def test_an_error_in_the_agent_ends_the_worker_instead_of_restarting_the_agent(
    faulty_pipeline: PipelineRun,
) -> None:
    """Faust would restart a failed agent on the same stream, past messages it never finished; the worker ends
    (exit 1) so its orchestrator restarts it from the committed offsets. The error here: Elasticsearch refuses the
    index templates (an index name it does not accept), which no retry can fix."""
    await faulty_pipeline.create_topics()
    worker = faulty_pipeline.start_worker(POSTLENS_ES_INDEX_POSTS=f"Not-Lowercase-{uuid.uuid4().hex[:6]}")
    assert worker.process is not None
    worker.process.wait(timeout=180)
    worker.stopped_by_test = True
    assert worker.process.returncode != 0
    assert "the agent failed; ending the worker" in worker.log()
