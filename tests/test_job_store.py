"""The job stores' semantics, the same for both (server/store.py's SQLite store, server/redis_store.py's on a real
redis-server on loopback): the bounded queue, one claim per job, a dead worker's job taken over (at most
max_attempts runs, then failed with the reason), recovery after a restart, cancel, hand-back, the histogram; and a
SQLite file keeps everything across a new store on it (a new process)."""

from __future__ import annotations

import threading
import time

import pytest
from service_helpers import RedisServer

from diffusers_multitalk.server.store import (
    BUSY,
    CLAIMED,
    GONE,
    INTERRUPTED,
    WORKER_LOST,
    QueueFull,
    SQLiteJobStore,
    new_record,
)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        made = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    else:
        from diffusers_multitalk.server.redis_store import RedisJobStore

        url = request.getfixturevalue("redis_url")
        made = RedisJobStore(url)
        made.redis.flushdb()
    yield made
    made.close()


def _job(job_id: str) -> dict:
    return new_record(job_id, prompt="p", options={"tiny": True}, extras={}, image="image.png", video_in=None,
                      source_size=[64, 96], audio=["person1.wav"], audio_seconds=[1.0], tts=None)  # fmt: skip


def test_queue_is_bounded_and_ordered(store):
    assert [store.add(_job(f"j{i}"), max_queue=3) for i in range(3)] == [1, 2, 3]
    with pytest.raises(QueueFull):
        store.add(_job("j3"), max_queue=3)
    assert store.get("j3") is None
    assert store.counts() == {"queued": 3, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert [store.position(f"j{i}") for i in range(3)] == [1, 2, 3]
    assert [r["id"] for r in store.recent()] == ["j2", "j1", "j0"]
    assert store.get("j0")["image"] == "image.png" and store.get("j0")["source_size"] == [64, 96]


def test_one_claim_per_job_and_only_the_owner_reports(store):
    store.add(_job("a"), 8)
    store.heartbeat("w1", 30, {"kind": "test"})
    store.heartbeat("w2", 30, {"kind": "test"})
    outcome, record = store.claim("a", "w1")
    assert outcome == CLAIMED and record["status"] == "running" and record["attempts"] == 1
    assert store.claim("a", "w2")[0] == BUSY  # its worker is alive: never taken
    assert store.claim(None, "w2") == (GONE, None)  # nothing queued
    version = store.get("a")["version"]
    store.progress("a", "w2", {"step": 9})  # not w2's job: ignored
    store.progress("a", "w1", {"step": 1, "steps": 2, "chunk": 1, "chunks": 1})
    store.warn("a", "w1", "a clip was cut")
    assert store.get("a")["progress"]["step"] == 1 and store.get("a")["warnings"] == ["a clip was cut"]
    assert store.get("a")["version"] == version + 2
    assert not store.finish("a", "w2", "succeeded", video="video.mp4")
    assert store.finish("a", "w1", "succeeded", video="video.mp4")
    assert store.claim("a", "w2")[0] == GONE
    done = store.get("a")
    assert done["status"] == "succeeded" and done["video"] == "video.mp4" and done["finished_at"] is not None
    assert store.counts()["succeeded"] == 1 and store.counts()["running"] == 0
    assert {w["id"] for w in store.workers()} == {"w1", "w2"}
    store.forget_worker("w2")
    assert [w["id"] for w in store.workers()] == ["w1"]


def test_concurrent_claims_give_each_job_once(store):
    for i in range(6):
        store.add(_job(f"c{i}"), 8)
    taken: list[str] = []

    def worker(name):
        while True:
            outcome, record = store.claim(None, name)
            if outcome != CLAIMED:
                return
            taken.append(record["id"])

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(taken) == [f"c{i}" for i in range(6)]


def test_a_dead_workers_job_is_taken_over_at_most_max_attempts_runs(store):
    store.add(_job("d"), 8)
    store.heartbeat("dead1", 0.5, {})
    assert store.claim("d", "dead1", max_attempts=2)[0] == CLAIMED
    store.heartbeat("live", 60, {})
    time.sleep(1.0)  # dead1's liveness lapses
    assert [w["id"] for w in store.workers()] == ["live"]
    outcome, record = store.claim("d", "live", max_attempts=2)
    assert outcome == CLAIMED and record["worker"] == "live" and record["attempts"] == 2
    assert not store.finish("d", "dead1", "succeeded")  # the old owner, if it wakes up, changes nothing
    store.forget_worker("live")  # this one dies too: 2 runs were the most
    outcome, record = store.claim("d", "third", max_attempts=2)
    assert outcome == GONE and record["status"] == "failed"
    assert record["error"].startswith(WORKER_LOST) and "max_attempts 2" in record["error"]


def test_recover_after_a_restart(store):
    for name in ("r1", "r2", "r3"):
        store.add(_job(name), 8)
    for name in ("r1", "r2", "r3"):
        assert store.claim(name, "old", max_attempts=2)[0] == CLAIMED
    store.cancel("r3")  # a cancel asked before the crash is honoured, not re-run
    # r2 had been cut short once before
    store.hand_back("r2", "old")
    store.claim("r2", "old")
    store.claim("r2", "x")  # busy: nothing changes
    changed = dict(store.recover(set(), max_attempts=1, reason=INTERRUPTED))
    assert changed == {"r1": "failed", "r2": "failed", "r3": "cancelled"}
    assert store.get("r1")["error"].startswith("interrupted by a restart")
    # with room for a re-run: queued again in its old place, counted
    store.add(_job("r4"), 8)
    store.add(_job("r5"), 8)
    store.claim("r4", "old")
    assert store.recover({"someone else"}, max_attempts=3, reason=INTERRUPTED) == [("r4", "queued")]
    assert store.position("r4") == 1 and store.get("r4")["attempts"] == 1 and store.get("r4")["worker"] is None
    assert store.recover(None, max_attempts=3, reason=INTERRUPTED) == []  # nothing running


def test_cancel_and_hand_back(store):
    store.add(_job("q"), 8)
    store.add(_job("r"), 8)
    cancelled = store.cancel("q")
    assert cancelled["status"] == "cancelled" and store.position("r") == 1
    assert store.claim("q", "w")[0] == GONE  # a cancelled job's message runs nothing
    store.claim("r", "w")
    asked = store.cancel("r")
    assert asked["status"] == "running" and asked["cancel_requested"] is True
    assert store.cancel("missing") is None
    store.add(_job("h"), 8)
    store.claim("h", "w")
    assert store.hand_back("h", "w") and not store.hand_back("h", "w")
    back = store.get("h")
    assert back["status"] == "queued" and back["attempts"] == 0 and store.position("h") == 1
    store.finish("r", "w", "cancelled")
    assert store.expired(0) == ["r"] or set(store.expired(0)) == {"q", "r"}
    store.delete("q")
    assert store.get("q") is None and store.counts()["cancelled"] == 1


def test_histogram_and_wait_for_change(store):
    store.observe(3.0)
    store.observe(700.0)
    buckets, total, count = store.histogram()
    assert (buckets["1"], buckets["5"], buckets["600"], buckets["1200"], buckets["+Inf"]) == (0, 1, 1, 2, 2)
    assert total == pytest.approx(703.0) and count == 2
    store.add(_job("v"), 8)
    version = store.get("v")["version"]
    threading.Timer(0.3, lambda: store.cancel("v")).start()
    assert store.wait_for_change("v", version, 30) == version + 1
    assert store.wait_for_change("nope", 0, 0.1) == -1


def test_a_sqlite_file_keeps_the_jobs_for_the_next_process(tmp_path):
    first = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    first.add(_job("k"), 8)
    first.claim("k", "w")
    first.progress("k", "w", {"step": 3})
    first.close()  # as a crash would leave it: the last transaction is on disk
    second = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    record = second.get("k")
    assert record["status"] == "running" and record["progress"] == {"step": 3} and record["worker"] == "w"
    second.close()
