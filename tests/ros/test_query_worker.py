"""The query worker's queue policy: every query gets exactly one outcome."""
import threading
import time

from molmo2_ros.core.grounding import Grounding, Task
from molmo2_ros.ros.query_worker import (ERROR_BACKEND, ERROR_BUSY, ERROR_CANCELED, ERROR_INVALID_QUERY,
                                         ERROR_NONE, ERROR_NOT_ACTIVE, Query, QueryError, QueryWorker)


class Gate:
    """A run() that blocks until released, recording what it ran."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.ran = []

    def __call__(self, query):
        self.ran.append(query.query_id)
        self.started.set()
        self.release.wait(10)
        if query.text == "raise":
            raise RuntimeError("model exploded")
        if query.text == "invalid":
            raise QueryError(ERROR_INVALID_QUERY, "bad")
        return [Grounding(task=query.task, query=query.text, camera=camera) for camera in query.cameras]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def query(qid, text="cup", outcomes=None, cameras=("",)):
    outcomes = outcomes if outcomes is not None else {}
    return Query(query_id=qid, text=text, task=Task.POINT, cameras=cameras,
                 done=lambda o: outcomes.setdefault(qid, []).append(o))


def test_busy_keep_latest_cancel_and_errors():
    gate, outcomes = Gate(), {}
    worker = QueryWorker(gate, capacity=1)
    assert worker.submit(query("a", outcomes=outcomes))
    assert gate.started.wait(5)
    assert worker.submit(query("b", "raise", outcomes))              # waits
    assert not worker.submit(query("c", outcomes=outcomes))         # full: refused at once
    assert outcomes["c"][0].error_code == ERROR_BUSY
    worker.submit_latest(query("t1", outcomes=outcomes))
    worker.submit_latest(query("t2", "invalid", outcomes))           # replaces t1
    assert outcomes["t1"][0].error_code == ERROR_CANCELED
    waiting = query("d", outcomes=outcomes)
    assert worker.queue_length == 2 and worker.busy
    gate.release.set()
    wait_for(lambda: all(q in outcomes for q in ("a", "b", "t2")))
    assert outcomes["a"][0].error_code == ERROR_NONE and outcomes["a"][0].groundings[0].query == "cup"
    assert outcomes["b"][0].error_code == ERROR_BACKEND and "model exploded" in outcomes["b"][0].error_message
    assert outcomes["t2"][0].error_code == ERROR_INVALID_QUERY
    assert gate.ran == ["a", "b", "t2"]  # goals before the topic slot
    waiting.canceled.set()
    worker.submit(waiting)
    wait_for(lambda: "d" in outcomes)
    assert outcomes["d"][0].error_code == ERROR_CANCELED and "d" not in gate.ran
    worker.stop(timeout=5)
    assert all(len(v) == 1 for v in outcomes.values())  # exactly one outcome each


def test_stop_answers_every_waiting_query():
    gate, outcomes = Gate(), {}
    worker = QueryWorker(gate, capacity=2)
    worker.submit(query("a", outcomes=outcomes))
    assert gate.started.wait(5)
    worker.submit(query("b", outcomes=outcomes))
    worker.submit_latest(query("t", outcomes=outcomes))
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 5})
    stopper.start()
    wait_for(lambda: "b" in outcomes and "t" in outcomes)
    gate.release.set()
    stopper.join(5)
    assert outcomes["b"][0].error_code == outcomes["t"][0].error_code == ERROR_NOT_ACTIVE
    # The running one is canceled (its backend stops at the next decode step) and
    # answered NOT_ACTIVE, not CANCELED: the client did not ask for that.
    assert outcomes["a"][0].error_code == ERROR_NOT_ACTIVE
    assert "deactivated during inference" in outcomes["a"][0].error_message
    assert not worker.submit(query("late", outcomes=outcomes))
    assert outcomes["late"][0].error_code == ERROR_NOT_ACTIVE


def test_cameras_continuous_runs_least_recently_served_first():
    """Three cameras' topic slots kept full while the model is the bottleneck: each runs in
    turn (never one camera twice before the others), and goals still go first."""
    ran, release = [], threading.Semaphore(0)

    def run(q):
        while not release.acquire(timeout=0.05) and not q.canceled.is_set():   # stop cancels it
            pass
        ran.append(q.query_id)
        return [Grounding(task=q.task, query=q.text, camera=c) for c in q.cameras]

    worker = QueryWorker(run, capacity=2)
    counter = iter(range(1000))

    def refill():
        for camera in ("front", "wrist", "rear"):
            if not worker.topic_pending((camera,)):
                worker.submit_latest(query(f"{camera}-{next(counter)}", cameras=(camera,)))

    refill()
    for step in range(12):
        if step == 5:
            wait_for(lambda: worker.busy)                   # the 6th run has started
            worker.submit(query("goal", cameras=("wrist", "rear")))
        release.release()
        wait_for(lambda: len(ran) == step + 1)
        refill()
    order = [qid.split("-")[0] for qid in ran[:12]]
    worker.stop(timeout=5)
    assert order[6] == "goal", order                         # a goal waits for the running query only
    topics = [camera for camera in order if camera != "goal"]
    for i in range(0, 9, 3):
        assert sorted(topics[i:i + 3]) == ["front", "rear", "wrist"], topics
