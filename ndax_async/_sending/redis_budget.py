"""The fleet budget in Redis: one rolling window for every process behind one IP.

One sorted set per budget name (``ndax:budget:<name>``) holds one member per
granted attempt, scored by the Redis server's own clock (``TIME`` inside the
Lua script), so members' clocks never matter. The script trims entries older
than the window, applies the class's ceiling and the bulk sub-window cap, and
either grants (adds the entry) or answers how long until the entry that would
admit this call ages out. A 429 sets a shared "blocked until" key that every
member's next acquire waits out. A member that dies holds nothing: its entries
age out.

If Redis cannot be reached (at start or mid-run), the member falls back to a
local share, logs one warning, probes Redis in the background, and rejoins by
adding its recent grants to the log. Lost mid-run, for the first window the
member also grants no more than it held when Redis went (it cannot see the
others' recent grants); rejoining a log Redis lost (a restart), it keeps to
its share as well for a window, until every member has rejoined.
Requires the ``redis`` extra (``pip install 'ndax-async[redis]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

from .._clock import Clock
from .._redact import redact_url
from .budget import Budget, BudgetLimit, BudgetWait, Priority, WindowLog

__all__ = ["RedisBudget"]

logger = logging.getLogger("ndax_async")

# KEYS: log, block. ARGV: window_us, ceiling, sub_window_us (0: none), sub_cap, member.
# Returns {1, now_us} (granted) or {0, wait_us, paused}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local blocked = redis.call('PTTL', KEYS[2])
if blocked > 0 then return {0, blocked * 1000, 1} end
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', KEYS[1])
local ceiling = tonumber(ARGV[2])
local wait = 0
if count >= ceiling then
  local entry = redis.call('ZRANGE', KEYS[1], count - ceiling, count - ceiling, 'WITHSCORES')
  wait = tonumber(entry[2]) + window - now
end
local sub = tonumber(ARGV[3])
if sub > 0 then
  local cap = tonumber(ARGV[4])
  local recent = redis.call('ZCOUNT', KEYS[1], string.format('(%.0f', now - sub), '+inf')
  if recent >= cap then
    local entry = redis.call('ZRANGE', KEYS[1], count - cap, count - cap, 'WITHSCORES')
    wait = math.max(wait, tonumber(entry[2]) + sub - now)
  end
end
if wait > 0 then return {0, wait, 0} end
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[5])
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
return {1, now}
"""

# KEYS: block. ARGV: milliseconds. Only ever extends the block.
_BLOCK = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], '1', 'PX', ms) end
return 1
"""

# KEYS: log, epoch. ARGV: my_epoch, new_epoch, window_us, n_since_outage, then
# (member, age_us) pairs: first the grants made while away, then the older ones.
# A missing or different epoch means Redis lost the log: every recent grant goes in.
_JOIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  redis.call('SET', KEYS[2], ARGV[2])
  epoch = ARGV[2]
end
local last = #ARGV
if epoch == ARGV[1] then last = 4 + 2 * tonumber(ARGV[4]) end
for i = 5, last, 2 do
  redis.call('ZADD', KEYS[1], string.format('%.0f', now - tonumber(ARGV[i + 1])), ARGV[i])
end
if last > 4 then redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) / 1000) + 1000) end
return epoch
"""


class RedisBudget(Budget):
    """The budget every process behind one egress IP shares, kept in Redis.

    ``url`` is ``redis://[:password@]host:port/db``; ``name`` separates budgets
    (one per egress IP). While Redis is unreachable, this member uses a local
    share of the limit: ``fallback_share`` requests per window, by default the
    effective limit divided by ``expected_members``; it probes Redis every
    ``probe_interval`` seconds and rejoins when it answers. A Redis outage
    never raises to the caller. ``timeout`` bounds each Redis command.
    """

    def __init__(
        self,
        url: str,
        limit: BudgetLimit | str | None = None,
        *,
        name: str = "default",
        expected_members: int = 4,
        fallback_share: int | None = None,
        probe_interval: float = 1.0,
        timeout: float = 0.5,
        clock: Clock | None = None,
        on_wait: Callable[[BudgetWait], None] | None = None,
    ) -> None:
        super().__init__(clock=clock, on_wait=on_wait)
        self.url = url
        self.limit = BudgetLimit.parse(limit) if isinstance(limit, str) else limit or BudgetLimit()
        self.name = name
        if expected_members < 1:
            raise ValueError("expected_members must be >= 1")
        share = fallback_share or self.limit.interactive_ceiling // expected_members
        self.fallback_limit = self.limit.share(share)
        self.probe_interval = probe_interval
        self.timeout = timeout
        self._keys = [f"ndax:budget:{name}", f"ndax:budget:{name}:blocked"]
        self._epoch_key = f"ndax:budget:{name}:epoch"
        self._member = uuid.uuid4().hex[:12]
        self._sequence = 0
        self._epoch = ""
        # This member's own grants (monotonic times), in either mode: the fallback
        # share starts from them, and a rejoin adds them back to a lost log.
        self._own = WindowLog(self.fallback_limit)
        self._since_outage: list[float] = []
        self._guard_until = float("-inf")
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}
        self._joined = False
        self._probe: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisBudget {redact_url(self.url)} name={self.name!r} {self.limit} {self.stats.mode}>"

    async def _try(self, priority: Priority) -> tuple[float, bool]:
        now = self.clock.monotonic()
        if self._joined and now < self._guard_until:
            # Just back after Redis lost the log: others may still be on their
            # share and the log holds only who has rejoined, so keep to ours too.
            wait, pause = self._own.wait(priority, now)
            if wait > 0:
                return wait, pause
        if self._joined or (self._probe is None and not self._closed):
            try:
                return await self._try_redis(priority, now)
            except Exception as error:  # any Redis failure: the budget never raises to the caller
                self._fall_back(error)
        wait, pause = self._own.wait(priority, now)
        if wait <= 0:
            self._own.record(now)
            self._since_outage.append(now)
        return wait, pause

    async def _try_redis(self, priority: Priority, now: float) -> tuple[float, bool]:
        if not self._joined:
            await self._join()
        limit = self.limit
        sub_us, cap = (
            (int(limit.sub_window * 1e6), limit.bulk_per_sub_window) if priority == "bulk" else (0, 0)
        )
        self._sequence += 1
        args = [
            int(limit.window * 1e6),
            limit.ceiling(priority),
            sub_us,
            cap,
            f"{self._member}:{self._sequence}",
        ]
        reply = await self._scripts["acquire"](keys=self._keys, args=args)
        if int(reply[0]) == 1:
            self._own.record(now)
            return 0.0, False
        return int(reply[1]) / 1e6, int(reply[2]) == 1

    async def report_block(self, seconds: float) -> None:
        """A 429 arrived: every member waits ``seconds`` (from Redis's clock) before its next attempt."""
        await super().report_block(seconds)
        self._own.block(self.clock.monotonic() + seconds)
        if self._probe is not None or self._closed:
            return  # Redis is away: the local pause above is all there is
        try:
            if not self._joined:
                await self._join()
            await self._scripts["block"](keys=self._keys[1:], args=[max(1, int(seconds * 1000))])
        except Exception as error:  # the budget never raises to the caller
            self._fall_back(error)

    async def aclose(self) -> None:
        """Stop probing and close the connection pool. Idempotent."""
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        if self._redis is not None:
            redis, self._redis = self._redis, None
            with contextlib.suppress(Exception):
                await redis.aclose()

    async def _connect(self) -> None:
        try:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise ImportError("RedisBudget needs redis: pip install 'ndax-async[redis]'") from None
        self._redis = redis.asyncio.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),  # a failure means fall back now, not after retries
        )
        for name, script in (("acquire", _ACQUIRE), ("block", _BLOCK), ("join", _JOIN)):
            self._scripts[name] = self._redis.register_script(script)

    async def _join(self) -> None:
        """(Re)join the shared log, adding this member's grants Redis does not hold."""
        if self._redis is None:
            await self._connect()
        now = self.clock.monotonic()
        recent = self._own.recent(now)
        away = [now - t for t in self._since_outage if t > now - self.limit.window]
        older = recent[: len(recent) - len(away)] if len(away) <= len(recent) else []
        args: list[Any] = [self._epoch, uuid.uuid4().hex, int(self.limit.window * 1e6), len(away)]
        for age in away + older:
            self._sequence += 1
            args += [f"{self._member}:{self._sequence}", int(age * 1e6)]
        epoch = await self._scripts["join"](keys=[self._keys[0], self._epoch_key], args=args)
        epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        if self._epoch and epoch != self._epoch:
            # Redis lost the log: it holds only the members that have rejoined. For
            # a whole window (every grant it cannot see has aged out by then, and a
            # member whose probe lags has rejoined) keep to this member's share too.
            self._guard_until = now + self.limit.window
        was_away = self.stats.fallbacks > 0
        self._epoch, self._joined, self._since_outage = epoch, True, []
        self.stats.mode = "redis"
        self._reopen()  # waits computed from the local share no longer hold
        if was_away:
            logger.info("ndax budget: Redis at %s is back; sharing the budget again", redact_url(self.url))

    def _fall_back(self, error: BaseException) -> None:
        """Use the local share from now on (once per outage) and probe Redis in the background."""
        if self._probe is not None or self._closed:
            return
        if self._joined:
            # Mid-run: the others' grants of the last window are out of sight now.
            self._own.hold_to_recent(self.clock.monotonic())
        self._joined = False
        self._since_outage = []
        self.stats.mode = "local"
        self.stats.fallbacks += 1
        logger.warning(
            "ndax budget: Redis at %s unreachable (%s); using a local share of %s until it returns",
            redact_url(self.url),
            type(error).__name__,
            self.fallback_limit,
        )
        self._probe = asyncio.get_running_loop().create_task(self._probe_until_back())

    async def _probe_until_back(self) -> None:
        while not self._closed:
            await self.clock.sleep(self.probe_interval)
            try:
                await self._join()
            except Exception:  # still down (the warning was logged once)
                logger.debug("ndax budget: Redis still unreachable", exc_info=False)
                continue
            self._probe = None
            return
