"""The production feature store: user histories in Redis, shared by every encoder replica.

Key layout (``P`` = ``redis_prefix``; ``{user}`` is a Redis Cluster hash tag, so one user's keys
live in one slot and every script below touches a single slot):

* ``P:{user}:h:<domain>``: sorted set, one member per event, score = event unix time; the
  member is ``<event_id> US <kind> US <item_id>`` (US = 0x1F), so the same item may appear
  several times and ties are ordered by event id. Capped at ``max_history`` (oldest dropped).
* ``P:{user}:d``: set of that user's history keys (what ``forget`` deletes).
* ``P:{user}:e``: sorted set of accepted event ids, score = acceptance time; ids older than
  ``event_id_ttl_s`` are trimmed on every append, the key expires with its newest id.

An append is ONE Lua script (atomic: a batch is either fully applied or not at all; a retried
batch finds its ids in ``:e`` and adds nothing). A read is one round trip: both domains' ``ZRANGE``s written at
once on one pooled connection (``_read``), without redis-py's pipeline object and reply callbacks,
which were most of a read's client CPU (bench/feature_store_benchmark.py). Every call is
bounded by ``redis_timeout_s``; a timeout or a connection error is ``FeatureStoreUnavailable``.
The client reconnects on its own: a broken pooled connection is dropped and the next call dials
again (plus one immediate retry on a connection error, so a Redis restart costs no error).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.encoder.feature_store import (
    EMPTY,
    AppendResult,
    FeatureStoreConfig,
    FeatureStoreUnavailable,
    History,
    StoredEvent,
)
from services.encoder.store_metrics import observe_call, watch_pool

log = logging.getLogger("xdrec.encoder.redis")

T = TypeVar("T")
SEPARATOR = "\x1f"

APPEND_SCRIPT = """
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
local accepted = 0
local touched = {}
for i = 4, #ARGV, 4 do
  local key = KEYS[tonumber(ARGV[i])]
  if redis.call('ZADD', KEYS[1], 'NX', now, ARGV[i + 1]) == 1 then
    redis.call('ZADD', key, ARGV[i + 2], ARGV[i + 3])
    touched[key] = true
    accepted = accepted + 1
  end
end
for key in pairs(touched) do
  redis.call('ZREMRANGEBYRANK', key, 0, -cap - 1)
  redis.call('SADD', KEYS[2], key)
end
redis.call('PEXPIRE', KEYS[1], math.floor(ttl * 1000))
return accepted
"""

FORGET_SCRIPT = """
local deleted = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  deleted = deleted + redis.call('ZCARD', key)
  redis.call('DEL', key)
end
redis.call('DEL', KEYS[1], KEYS[2])
return deleted
"""


def member(event: StoredEvent) -> str:
    return SEPARATOR.join((event.event_id, event.kind, event.item_id))


def parse_member(raw: bytes | str) -> tuple[str, str, str]:
    """``(event_id, kind, item_id)``; event ids and kinds never hold the separator."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    event_id, kind, item = text.split(SEPARATOR, 2)
    return event_id, kind, item


def parse_history(reply: Sequence[Any]) -> History:
    """A domain's history from a raw ``ZRANGE ... WITHSCORES`` reply (oldest first): RESP3
    pairs ``[member, score]``, or RESP2's flat ``member, score, member, score, ...``."""
    if not reply:
        return EMPTY
    if isinstance(reply[0], list):
        members, scores = [pair[0] for pair in reply], [pair[1] for pair in reply]
    else:
        members, scores = reply[0::2], reply[1::2]
    separator = SEPARATOR.encode()
    return History(
        items=tuple(raw.split(separator, 2)[2].decode() for raw in members),
        timestamps=tuple(map(float, scores)),
    )


def snapshot_event_id(row: tuple[str, str, str, float], occurrence: int = 1) -> str:
    """A content-derived id for a snapshot row, so loading a snapshot twice adds nothing;
    ``occurrence`` numbers identical rows, so a row repeated in the file is kept as often."""
    text = "\t".join(map(str, (*row, occurrence)))
    return "snap-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def snapshot_event_ids(rows: Iterable[tuple[str, str, str, float]]) -> list[str]:
    """``snapshot_event_id`` of every row, counting repeats within ``rows``."""
    occurrences: Counter[tuple[str, str, str, float]] = Counter()
    ids = []
    for row in rows:
        occurrences[row] += 1
        ids.append(snapshot_event_id(row, occurrences[row]))
    return ids


class RedisFeatureStore:
    """Histories in Redis via ``redis.asyncio``: pipelined reads, one script per write batch."""

    backend = "redis"

    def __init__(self, client: aioredis.Redis, config: FeatureStoreConfig) -> None:
        self.client = client
        self.config = config
        self.prefix = config.redis_prefix
        self.timeout = config.redis_timeout_s
        self._append = client.register_script(APPEND_SCRIPT)
        self._forget = client.register_script(FORGET_SCRIPT)
        watch_pool(self.backend, client.connection_pool)

    @classmethod
    def from_config(cls, config: FeatureStoreConfig) -> RedisFeatureStore:
        # Blocking pool: a burst beyond ``redis_max_connections`` waits for a free connection
        # (within the call's bound) instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            config.redis_url,
            password=config.redis_password or None,
            max_connections=config.redis_max_connections,
            timeout=max(config.redis_timeout_s, config.redis_write_timeout_s),
            # The per-call bounds are enforced by ``_call``; the socket must not cut writes short.
            socket_timeout=max(config.redis_timeout_s, config.redis_write_timeout_s),
            socket_connect_timeout=config.redis_timeout_s,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        log.info(
            "redis feature store",
            extra={"url": config.redis_url, "prefix": config.redis_prefix},
        )
        return cls(aioredis.Redis(connection_pool=pool), config)

    # -- keys -----------------------------------------------------------------------------------

    def user_key(self, user_id: str, suffix: str) -> str:
        return f"{self.prefix}:{{{user_id}}}:{suffix}"

    def history_key(self, user_id: str, domain: str) -> str:
        return self.user_key(user_id, f"h:{domain}")

    # -- the bounded call -----------------------------------------------------------------------

    async def _call(self, op: str, call: Awaitable[T], timeout: float | None = None) -> T:
        """Runs one store call under the timeout; store trouble becomes FeatureStoreUnavailable."""
        start = time.perf_counter()
        outcome = "ok"
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                return await call
        except (TimeoutError, RedisTimeoutError):
            outcome = "timeout"
            bound = self.timeout if timeout is None else timeout
            raise FeatureStoreUnavailable(
                f"feature store (redis) did not answer {op} within {bound * 1000:.0f} ms"
            ) from None
        except RedisError as exc:
            outcome = "error"
            raise FeatureStoreUnavailable(f"feature store (redis) {op} failed: {exc}") from None
        finally:
            observe_call(self.backend, op, outcome, time.perf_counter() - start)

    # -- reads ----------------------------------------------------------------------------------

    async def histories(self, user_id: str, domains: Sequence[str]) -> Mapping[str, History]:
        keys = [self.history_key(user_id, domain) for domain in domains]
        replies = await self._call("histories", self._read(keys))
        return {
            domain: parse_history(reply) for domain, reply in zip(domains, replies, strict=True)
        }

    async def _read(self, keys: Sequence[str]) -> list[Any]:
        """``ZRANGE key 0 -1 WITHSCORES`` of every key in one write on one pooled connection,
        then the raw replies: a pipeline's single round trip without redis-py's pipeline object
        and reply callbacks (0.6x / 0.2x the client CPU of ``client.pipeline()`` at 20 / 200
        events per domain), and the server cost of plain ZRANGEs (a Lua script returning the same
        sets cost Redis 2.7-3.5x the CPU). One immediate retry on a connection error, like every
        other call of the client (a restarted Redis costs no error)."""
        pool = self.client.connection_pool
        commands = [("ZRANGE", key, 0, -1, "WITHSCORES") for key in keys]
        for attempt in (1, 2):
            connection = await pool.get_connection()
            try:
                packed = connection.pack_commands(commands)
                await connection.send_packed_command(packed, check_health=False)
                return [await connection.read_response() for _ in commands]
            except RedisConnectionError:
                await connection.disconnect()
                if attempt == 2:
                    raise
            except BaseException:  # timeout, cancellation: a half-read reply must not reach
                await connection.disconnect()  # the next caller of this connection
                raise
            finally:
                await pool.release(connection)
        raise AssertionError("unreachable")

    # -- writes ---------------------------------------------------------------------------------

    async def append(self, user_id: str, events: Sequence[StoredEvent]) -> AppendResult:
        if not events:
            return AppendResult()
        keys = [self.user_key(user_id, "e"), self.user_key(user_id, "d")]
        slot: dict[str, int] = {}
        args: list[Any] = [time.time(), self.config.event_id_ttl_s, self.config.max_history]
        for event in events:
            if event.domain not in slot:
                keys.append(self.history_key(user_id, event.domain))
                slot[event.domain] = len(keys)  # Lua indexes KEYS from 1
            args += [slot[event.domain], event.event_id, event.timestamp, member(event)]
        accepted = int(
            await self._call(
                "append", self._append(keys=keys, args=args), self.config.redis_write_timeout_s
            )
        )
        return AppendResult(accepted=accepted, duplicates=len(events) - accepted)

    async def forget(self, user_id: str) -> int:
        keys = [self.user_key(user_id, "d"), self.user_key(user_id, "e")]
        return int(
            await self._call("forget", self._forget(keys=keys), self.config.redis_write_timeout_s)
        )

    async def load(
        self, rows: Sequence[tuple[str, str, str, float]], event_ids: Sequence[str]
    ) -> int:
        """Bulk-writes snapshot rows (one pipeline, no event-id bookkeeping: the ids are
        content-derived, so a second load rewrites the same members); the number of new
        members. Histories are capped as on append."""
        by_key: dict[str, dict[str, float]] = defaultdict(dict)
        users: dict[str, set[str]] = defaultdict(set)
        for (user, domain, item, timestamp), event_id in zip(rows, event_ids, strict=True):
            key = self.history_key(user, domain)
            by_key[key][member(StoredEvent(event_id, domain, item, timestamp))] = timestamp
            users[user].add(key)

        async def write() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, members in by_key.items():
                    pipe.zadd(key, members)
                    pipe.zremrangebyrank(key, 0, -self.config.max_history - 1)
                for user, keys in users.items():
                    pipe.sadd(self.user_key(user, "d"), *keys)
                return await pipe.execute()

        replies = await self._call("load", write(), timeout=max(self.timeout, 30.0))
        return sum(int(r) for r in replies[: 2 * len(by_key) : 2])

    # -- export ---------------------------------------------------------------------------------

    async def users(self) -> AsyncIterator[str]:
        """Every user with stored histories (SCAN: no blocking KEYS)."""
        start, end = f"{self.prefix}:{{", "}:d"
        async for raw in self.client.scan_iter(match=f"{self.prefix}:{{*}}:d", count=1000):
            key = raw.decode() if isinstance(raw, bytes) else raw
            if key.startswith(start) and key.endswith(end):
                yield key[len(start) : -len(end)]

    async def events(self, user_id: str | None = None) -> AsyncIterator[tuple[str, StoredEvent]]:
        users: AsyncIterator[str] | list[str] = self.users() if user_id is None else [user_id]
        async for user in _aiter(users):
            keys = await self._call("export", self.client.smembers(self.user_key(user, "d")))
            for raw_key in sorted(keys):
                key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                domain = key.rsplit(":h:", 1)[1]
                reply = await self._call("export", self.client.zrange(key, 0, -1, withscores=True))
                for raw, score in reply:
                    event_id, kind, item = parse_member(raw)
                    yield user, StoredEvent(event_id, domain, item, float(score), kind)

    # -- lifecycle ------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._call("ping", self.client.ping())

    async def memory_used(self) -> int:
        info = await self._call("info", self.client.info("memory"))
        return int(info.get("used_memory", 0))

    async def close(self) -> None:
        await self.client.aclose()


async def _aiter(values: AsyncIterator[str] | list[str]) -> AsyncIterator[str]:
    if isinstance(values, list):
        for value in values:
            yield value
    else:
        async for value in values:
            yield value
