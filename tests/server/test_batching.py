"""Batcher on its own: buckets by sample shape, filling, the timeout (a clock the test sets), flushing."""

from __future__ import annotations

import torch

from server.batching import Batcher
from server.workers import Job, PendingRequest

MS = 1_000_000


def request(rows: int, name: str, sample: tuple[int, ...] = (3, 4, 4), dtype: torch.dtype = torch.float32,
            received_ns: int = 0) -> PendingRequest:
    x = torch.zeros(rows, *sample, dtype=dtype)
    return PendingRequest(identity=name.encode(), request_id=name, ts=None, tensor=x, frame=None,
                          nbytes=x.nbytes, received_ns=received_ns, decode_ns=0)


def names(job: Job) -> list:
    return [r.request_id for r in job.requests]


def test_off_below_two_rows() -> None:
    assert not Batcher(0, MS).enabled and not Batcher(1, MS).enabled and Batcher(2, MS).enabled


def test_a_bucket_becomes_a_job_when_it_fills() -> None:
    b = Batcher(max_batch_size=4, timeout_ns=10 * MS)
    assert b.add(request(1, "a"), now_ns=0) == []
    assert b.add(request(2, "b"), now_ns=1) == []
    (job,) = b.add(request(1, "c"), now_ns=2)
    assert names(job) == ["a", "b", "c"]
    assert b.next_deadline_ns() is None and b.due(now_ns=10**15) == []


def test_a_request_that_would_overflow_the_bucket_ships_the_bucket_first() -> None:
    b = Batcher(max_batch_size=4, timeout_ns=10 * MS)
    b.add(request(3, "a"), now_ns=0)
    (job,) = b.add(request(2, "b"), now_ns=1)  # 3 + 2 > 4: "a" goes alone, "b" starts a new bucket
    assert names(job) == ["a"]
    assert b.next_deadline_ns() == 1 + 10 * MS
    assert [names(j) for j in b.due(now_ns=1 + 10 * MS)] == [["b"]]


def test_the_oldest_request_sets_the_deadline() -> None:
    b = Batcher(max_batch_size=8, timeout_ns=2 * MS)
    b.add(request(1, "a"), now_ns=100)
    b.add(request(1, "b"), now_ns=100 + MS)  # joining does not push the deadline back
    assert b.next_deadline_ns() == 100 + 2 * MS
    assert b.due(now_ns=100 + 2 * MS - 1) == []
    (job,) = b.due(now_ns=100 + 2 * MS)
    assert names(job) == ["a", "b"]
    assert b.next_deadline_ns() is None


def test_different_sample_shapes_and_dtypes_wait_in_different_buckets() -> None:
    b = Batcher(max_batch_size=2, timeout_ns=5 * MS)
    assert b.add(request(1, "small"), now_ns=0) == []
    assert b.add(request(1, "large", sample=(3, 8, 8)), now_ns=MS) == []
    assert b.add(request(1, "uint8", dtype=torch.uint8), now_ns=2 * MS) == []
    (job,) = b.add(request(1, "small2"), now_ns=3 * MS)
    assert names(job) == ["small", "small2"]
    assert b.next_deadline_ns() == 6 * MS  # "large" is now the oldest
    assert [names(j) for j in b.due(now_ns=6 * MS)] == [["large"]]
    assert [names(j) for j in b.due(now_ns=7 * MS)] == [["uint8"]]


def test_a_request_as_large_as_a_batch_passes_through_alone() -> None:
    b = Batcher(max_batch_size=4, timeout_ns=5 * MS)
    b.add(request(1, "waiting"), now_ns=0)
    for rows in (4, 9):
        (job,) = b.add(request(rows, f"big{rows}"), now_ns=MS)
        assert names(job) == [f"big{rows}"]
    assert b.next_deadline_ns() == 5 * MS  # the waiting bucket is untouched


def test_flush_all_ships_every_bucket_whatever_the_time() -> None:
    b = Batcher(max_batch_size=8, timeout_ns=10**12)
    b.add(request(1, "a"), now_ns=0)
    b.add(request(1, "b", sample=(1, 2, 2)), now_ns=0)
    b.add(request(2, "c"), now_ns=0)
    jobs = b.due(now_ns=0, flush_all=True)
    assert sorted(map(names, jobs)) == [["a", "c"], ["b"]]
    assert b.next_deadline_ns() is None and b.due(now_ns=0, flush_all=True) == []
