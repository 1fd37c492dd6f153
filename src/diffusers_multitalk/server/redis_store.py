"""The job store on Redis (`--queue redis://...`): the same JobStore interface as the SQLite store, shared by the API
and every `multitalk worker` on any machine. Each state change is one Lua script (atomic in Redis): a job is claimed
by one worker at a time; a worker's liveness is a key that expires `ttl` seconds after its last heartbeat, so a
running job whose worker's key is gone may be taken over, and one whose worker is alive never is."""

from __future__ import annotations

import json
import time

from .store import (
    BUSY,
    CLAIMED,
    DEFAULT_MAX_ATTEMPTS,
    FINAL,
    GONE,
    SECONDS_BUCKETS,
    WORKER_LOST,
    JobStore,
    QueueFull,
    bucket_counts,
    fresh_progress,
)


PREFIX = "multitalk:"
# The fields a script changes (JSON-encoded, as strings); the others are the job's inputs, in `inputs`.
_DYNAMIC = ("status", "worker", "attempts", "cancel_requested", "version", "progress", "warnings", "error", "video",
            "started_at", "finished_at", "seq")  # fmt: skip

# Shared Lua: (re)start a run, end a run, end an orphan. KEYS: job, queued, running, finished; ARGV[1] = job id.
_LUA_HELPERS = """
local job, queued, running, finished, id = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1]
local prefix = ARGV[2]
local function bump() redis.call('hincrby', job, 'version', 1) end
local function start(worker, now)
  redis.call('hset', job, 'status', '"running"', 'worker', cjson.encode(worker), 'started_at', now,
             'progress', '{"step": 0, "steps": null, "chunk": 0, "chunks": null}')
  redis.call('hincrby', job, 'attempts', 1)
  redis.call('zrem', queued, id)
  redis.call('sadd', running, id)
  bump()
end
local function finish(state, err, video, now)
  redis.call('hset', job, 'status', cjson.encode(state), 'error', err, 'video', video, 'finished_at', now)
  redis.call('zrem', queued, id)
  redis.call('srem', running, id)
  redis.call('zadd', finished, now, id)
  redis.call('sadd', prefix .. 'state:' .. state, id)
  bump()
end
local function requeue(counted)
  redis.call('hset', job, 'status', '"queued"', 'worker', 'null', 'started_at', 'null',
             'progress', '{"step": 0, "steps": null, "chunk": 0, "chunks": null}')
  if not counted then
    local attempts = tonumber(redis.call('hget', job, 'attempts'))
    redis.call('hset', job, 'attempts', math.max(0, attempts - 1))
  end
  redis.call('srem', running, id)
  redis.call('zadd', queued, tonumber(redis.call('hget', job, 'seq')), id)
  bump()
end
local function end_orphan(max, reason, now)
  if redis.call('hget', job, 'cancel_requested') == 'true' then
    finish('cancelled', 'null', 'null', now)
  else
    local attempts = redis.call('hget', job, 'attempts')
    local text = reason .. '; it ran ' .. attempts .. ' time(s), the most the server allows (max_attempts ' .. max .. ')'
    finish('failed', cjson.encode(text), 'null', now)
  end
end
local function alive(owner)
  return redis.call('exists', prefix .. 'worker:' .. owner) == 1
end
local function owner()
  return cjson.decode(redis.call('hget', job, 'worker'))
end
local function status()
  local found = redis.call('hget', job, 'status')
  if not found then return nil end
  return cjson.decode(found)
end
"""

_ADD = """
-- KEYS: queued, all, seq counter, job; ARGV: max_queue, id, field/value pairs...
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[1]) then return -1 end
local seq = redis.call('incr', KEYS[3])
redis.call('hset', KEYS[4], 'seq', seq, unpack(ARGV, 3))
redis.call('zadd', KEYS[1], seq, ARGV[2])
redis.call('zadd', KEYS[2], seq, ARGV[2])
return redis.call('zrank', KEYS[1], ARGV[2]) + 1
"""

_CLAIM = (
    _LUA_HELPERS
    + """
-- ARGV: id, prefix, worker, max_attempts, now, reason, queued_only ('1': the oldest queued job, no take-over)
local worker, max, now, reason = ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local st = status()
if st == 'queued' then start(worker, now) return 'claimed' end
if st ~= 'running' or ARGV[7] == '1' then return 'gone' end
local current = owner()
if current == worker or alive(current) then return 'busy' end
if redis.call('hget', job, 'cancel_requested') == 'true' or tonumber(redis.call('hget', job, 'attempts')) >= max then
  end_orphan(max, reason, now)
  return 'gone'
end
start(worker, now)
return 'claimed'
"""
)

_OWNED = (
    _LUA_HELPERS
    + """
-- ARGV: id, prefix, worker, op, a, b, c, now
if status() ~= 'running' or owner() ~= ARGV[3] then return 0 end
local op = ARGV[4]
if op == 'progress' then
  redis.call('hset', job, 'progress', ARGV[5])
  bump()
elseif op == 'warn' then
  local warnings = cjson.decode(redis.call('hget', job, 'warnings'))
  table.insert(warnings, ARGV[5])
  redis.call('hset', job, 'warnings', cjson.encode(warnings))
  bump()
elseif op == 'finish' then
  finish(ARGV[5], ARGV[6], ARGV[7], ARGV[8])
elseif op == 'hand_back' then
  requeue(false)
end
return 1
"""
)

_CANCEL = (
    _LUA_HELPERS
    + """
-- ARGV: id, prefix, now
local st = status()
if not st then return 0 end
if st == 'queued' then
  finish('cancelled', 'null', 'null', ARGV[3])
elseif st == 'running' and redis.call('hget', job, 'cancel_requested') ~= 'true' then
  redis.call('hset', job, 'cancel_requested', 'true')
  bump()
end
return 1
"""
)

_RECOVER = (
    _LUA_HELPERS
    + """
-- ARGV: id, prefix, max_attempts, now, reason, alive ('1': alive, '0': not, 'check': its liveness key)
local max, now, reason, said = tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
if status() ~= 'running' then return 'none' end
if said == '1' or (said == 'check' and alive(owner())) then return 'none' end
if redis.call('hget', job, 'cancel_requested') == 'true' or tonumber(redis.call('hget', job, 'attempts')) >= max then
  end_orphan(max, reason, now)
else
  requeue(true)
end
return status()
"""
)


def public_url(url: str) -> str:
    """The URL without its password (for /healthz and the logs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisJobStore(JobStore):
    """Jobs and workers in Redis under the `multitalk:` keys of the URL's database."""

    def __init__(self, url: str, prefix: str = PREFIX):
        import redis

        self.url, self.prefix = url, prefix
        self.describe = f"redis {public_url(url)}"
        self.redis = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
        self._scripts = {name: self.redis.register_script(code) for name, code in
                         dict(add=_ADD, claim=_CLAIM, owned=_OWNED, cancel=_CANCEL, recover=_RECOVER).items()}  # fmt: skip

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _job_keys(self, job_id: str) -> list[str]:
        return [self._key("job", job_id), self._key("queued"), self._key("running"), self._key("finished")]

    # -- jobs ----------------------------------------------------------------------------------------------
    def add(self, record, max_queue):
        inputs = {k: v for k, v in record.items() if k not in _DYNAMIC}
        fields = {k: json.dumps(record[k]) for k in _DYNAMIC if k != "seq"}
        pairs = [item for pair in {**fields, "inputs": json.dumps(inputs)}.items() for item in pair]
        keys = [self._key("queued"), self._key("all"), self._key("seq"), self._key("job", record["id"])]
        position = self._scripts["add"](keys=keys, args=[max_queue, record["id"], *pairs])
        if position == -1:
            raise QueueFull()
        return int(position)

    def get(self, job_id):
        found = self.redis.hgetall(self._key("job", job_id))
        if not found:
            return None
        record = json.loads(found.pop("inputs"))
        record.update({k: json.loads(v) for k, v in found.items()})
        return record

    def claim(self, job_id, worker, max_attempts=DEFAULT_MAX_ATTEMPTS):
        while True:
            chosen = job_id
            if chosen is None:
                oldest = self.redis.zrange(self._key("queued"), 0, 0)
                if not oldest:
                    return GONE, None
                chosen = oldest[0]
            outcome = self._scripts["claim"](
                keys=self._job_keys(chosen),
                args=[
                    chosen,
                    self.prefix,
                    worker,
                    max_attempts,
                    time.time(),
                    WORKER_LOST,
                    "1" if job_id is None else "0",
                ],
            )
            if job_id is None and outcome != CLAIMED:
                continue  # another worker took it first: the next one
            return {"claimed": CLAIMED, "busy": BUSY}.get(outcome, GONE), self.get(chosen)

    def _owned(self, job_id, worker, op, *args) -> bool:
        padded = [*args, "", "", ""][:3]
        keys = self._job_keys(job_id)
        return bool(self._scripts["owned"](keys=keys, args=[job_id, self.prefix, worker, op, *padded, time.time()]))

    def progress(self, job_id, worker, progress):
        self._owned(job_id, worker, "progress", json.dumps(progress))

    def warn(self, job_id, worker, text):
        self._owned(job_id, worker, "warn", text)

    def finish(self, job_id, worker, state, error=None, video=None):
        return self._owned(job_id, worker, "finish", state, json.dumps(error), json.dumps(video))

    def hand_back(self, job_id, worker):
        return self._owned(job_id, worker, "hand_back")

    def cancel(self, job_id):
        if not self._scripts["cancel"](keys=self._job_keys(job_id), args=[job_id, self.prefix, time.time()]):
            return None
        return self.get(job_id)

    def delete(self, job_id):
        with self.redis.pipeline() as pipe:
            pipe.delete(self._key("job", job_id))
            for name in ("queued", "all", "finished"):
                pipe.zrem(self._key(name), job_id)
            pipe.srem(self._key("running"), job_id)
            for state in FINAL:
                pipe.srem(self._key("state", state), job_id)
            pipe.execute()

    def recover(self, alive, max_attempts, reason):
        changed = []
        for job_id in self.redis.smembers(self._key("running")):
            record = self.get(job_id)
            if record is None:
                continue
            said = "check" if alive is None else ("1" if record["worker"] in alive else "0")
            args = [job_id, self.prefix, max_attempts, time.time(), reason, said]
            state = self._scripts["recover"](keys=self._job_keys(job_id), args=args)
            if state != "none":
                changed.append((job_id, state))
        return changed

    def expired(self, keep_seconds):
        return list(self.redis.zrangebyscore(self._key("finished"), "-inf", time.time() - keep_seconds))

    def counts(self):
        with self.redis.pipeline() as pipe:
            pipe.zcard(self._key("queued"))
            pipe.scard(self._key("running"))
            for state in FINAL:
                pipe.scard(self._key("state", state))
            values = pipe.execute()
        return dict(zip(("queued", "running", *FINAL), values))

    def position(self, job_id):
        rank = self.redis.zrank(self._key("queued"), job_id)
        return None if rank is None else rank + 1

    def recent(self, limit=100):
        ids = self.redis.zrevrange(self._key("all"), 0, limit - 1)
        return [record for record in map(self.get, ids) if record is not None]

    # -- workers -------------------------------------------------------------------------------------------
    def heartbeat(self, worker, ttl, info):
        with self.redis.pipeline() as pipe:
            pipe.set(self._key("worker", worker), json.dumps({**info, "id": worker}), px=max(1, int(ttl * 1000)))
            pipe.sadd(self._key("workers"), worker)
            pipe.execute()

    def forget_worker(self, worker):
        with self.redis.pipeline() as pipe:
            pipe.delete(self._key("worker", worker))
            pipe.srem(self._key("workers"), worker)
            pipe.execute()

    def workers(self):
        names = sorted(self.redis.smembers(self._key("workers")))
        infos = self.redis.mget([self._key("worker", name) for name in names]) if names else []
        gone = [name for name, info in zip(names, infos) if info is None]
        if gone:
            self.redis.srem(self._key("workers"), *gone)
        return [json.loads(info) for info in infos if info is not None]

    # -- metrics -------------------------------------------------------------------------------------------
    def observe(self, seconds):
        key = self._key("job_seconds")
        with self.redis.pipeline() as pipe:
            for le in bucket_counts(seconds):
                pipe.hincrby(key, f"le:{le}", 1)
            pipe.hincrbyfloat(key, "sum", seconds)
            pipe.hincrby(key, "count", 1)
            pipe.execute()

    def histogram(self):
        values = self.redis.hgetall(self._key("job_seconds"))
        buckets = {le: int(values.get(f"le:{le}", 0)) for le in [*map(str, SECONDS_BUCKETS), "+Inf"]}
        return buckets, float(values.get("sum", 0.0)), int(values.get("count", 0))

    def wait_for_change(self, job_id, version, timeout):
        deadline = time.monotonic() + timeout
        while True:
            found = self.redis.hget(self._key("job", job_id), "version")
            current = -1 if found is None else int(found)
            if current != version or time.monotonic() >= deadline:
                return current
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def close(self):
        self.redis.close()


__all__ = ["RedisJobStore", "fresh_progress", "public_url"]
