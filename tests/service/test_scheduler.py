"""The scheduler on its own: plain dataclasses in, hand-written model outputs back (no HTTP, no model)."""

import numpy as np
import pytest

from service.scheduler import ModelOutput, Scheduler, StepRequest

FRAME = np.zeros((2, 4, 4), np.float32)


def req(sid, index, epoch=0):
    return StepRequest(sid, epoch, index, index * 1000, FRAME + index, 0.0)


def output(n, k=3, layers=2):
    """Row i carries i in every field, so a test can see which row went where."""
    rows = np.arange(n, dtype=np.float32)
    return ModelOutput(
        np.repeat(rows[:, None], k, 1), np.repeat(rows[:, None], layers, 1), rows * 10, rows * 1e-9, 0.001
    )


def test_one_step_per_session_per_batch_in_order():
    s = Scheduler(max_batch=8)
    s.add_session("a", slot=0)
    s.add_session("b", slot=1)
    for i in range(3):
        s.enqueue(req("a", i))
    s.enqueue(req("b", 0))
    assert s.depth == 4
    b1 = s.schedule()
    assert [(x.request.session_id, x.request.index, x.slot) for x in b1.steps] == [("a", 0, 0), ("b", 0, 1)]
    assert b1.stack_frames().shape == (2, 2, 4, 4)
    res = s.update_from_output(b1, output(2))
    assert [(r.request.session_id, float(r.out[0]), r.batch_size) for r in res] == [
        ("a", 0.0, 2),
        ("b", 1.0, 2),
    ]
    b2 = s.schedule()
    assert [(x.request.session_id, x.request.index) for x in b2.steps] == [("a", 1)]
    b3 = s.schedule()
    assert [(x.request.session_id, x.request.index) for x in b3.steps] == [("a", 2)]
    assert s.schedule() is None and s.depth == 0


def test_round_robin_when_more_sessions_than_batch_slots():
    s = Scheduler(max_batch=2)
    for i, sid in enumerate("abcde"):
        s.add_session(sid, i)
        for k in range(2):
            s.enqueue(req(sid, k))
    served = []
    while (b := s.schedule()) is not None:
        served.append("".join(x.request.session_id for x in b.steps))
    # every session gets its first step before any gets its second
    assert served == ["ab", "cd", "ea", "bc", "de"]


def test_held_sessions_wait_and_keep_their_order():
    s = Scheduler(max_batch=4)
    s.add_session("a", 0)
    s.add_session("b", 1)
    s.enqueue(req("a", 0))
    s.enqueue(req("b", 0))
    b = s.schedule(can_run=lambda sid: sid != "a")
    assert [x.request.session_id for x in b.steps] == ["b"]
    assert s.schedule(can_run=lambda sid: False) is None
    b = s.schedule()
    assert [(x.request.session_id, x.request.index) for x in b.steps] == [("a", 0)]


def test_reset_drops_queue_and_discards_the_step_in_flight():
    s = Scheduler(max_batch=4)
    s.add_session("a", 0)
    s.add_session("b", 1)
    s.enqueue(req("a", 0))
    s.enqueue(req("a", 1))
    s.enqueue(req("b", 0))
    inflight = s.schedule()
    assert s.reset("a") == 1  # step 1 was queued; step 0 is in flight
    assert s.epoch("a") == 1
    res = s.update_from_output(inflight, output(2))
    assert [r.request.session_id for r in res] == ["b"]  # a's old-epoch result is discarded
    s.enqueue(req("a", 5, epoch=0))  # made before the reset: ignored
    s.enqueue(req("a", 0, epoch=1))
    assert s.queue_len("a") == 1 and s.depth == 1


def test_removed_session_results_are_dropped_and_slots_not_reused_by_mistake():
    s = Scheduler(max_batch=4)
    s.add_session("a", 0)
    s.enqueue(req("a", 0))
    s.enqueue(req("a", 1))
    inflight = s.schedule()
    assert s.remove_session("a") == 1
    assert s.depth == 0 and s.num_sessions == 0
    assert s.update_from_output(inflight, output(1)) == []
    s.add_session("c", 0)  # the freed slot goes to a new session
    s.enqueue(req("c", 0))
    assert [x.slot for x in s.schedule().steps] == [0]


def test_output_row_count_must_match():
    s = Scheduler(max_batch=4)
    s.add_session("a", 0)
    s.enqueue(req("a", 0))
    b = s.schedule()
    with pytest.raises(ValueError, match="2 rows for 1 scheduled steps"):
        s.update_from_output(b, output(2))


def test_add_twice_and_bad_batch():
    s = Scheduler(max_batch=1)
    s.add_session("a", 0)
    with pytest.raises(KeyError):
        s.add_session("a", 1)
    with pytest.raises(ValueError):
        Scheduler(max_batch=0)
