"""Which of a pool's source addresses sends next, and which peer replica takes what none of them may send.

The scheduler asks once per connection. Quarantined and paused addresses never send. Warming addresses
(those with warm-up caps) are filled first, since a warm-up day only counts when most of its cap was used;
the pool's warm addresses take what the warming ones cannot, but only when the pool's overflow policy is
'warm-addresses' or it has no warming address that may send. What fits nowhere waits here or, when the
pool says so, goes to a peer replica (``smtpinfra_mta.handoff``). Round robin within each tier.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from smtpinfra_mta.config import MtaConfig, Peer, Pool, SourceIp
from smtpinfra_mta.handoff import choose_peer
from smtpinfra_mta.throttle import Automation, Shaping, WarmupGate, effective_shaping

NOTHING_MAY_SEND_RECHECK = 60.0
"""Seconds before a queue whose pool has no sendable address here looks again (a reload wakes it sooner)."""


class SourcePicker:
    """The round-robin positions per pool and tier; everything else is read from the running config."""

    def __init__(self) -> None:
        self._rr: dict[str, int] = defaultdict(int)

    def pick(self, cfg: MtaConfig, warmup: WarmupGate, automation: Automation, domain: str, pool_name: str,
             site: str, provider: str | None,
             recheck: Callable[[float], float]) -> tuple[SourceIp | None, Shaping, float]:
        """A source address of the pool that may send now, or how long until one may."""
        try:
            pool = cfg.pool(pool_name)
        except KeyError:
            return None, Shaping(), NOTHING_MAY_SEND_RECHECK
        sendable = [s for s in pool.source_ips if not s.quarantined and not s.paused]
        warming = [s for s in sendable if warmup.capped(s.address)]
        warm = [s for s in sendable if not warmup.capped(s.address)]
        tiers = [warming, warm] if pool.overflow == "warm-addresses" or not warming else [warming]
        best_wait = float("inf") if sendable else NOTHING_MAY_SEND_RECHECK
        for tier_no, tier in enumerate(tiers):
            n = len(tier)
            key = f"{pool_name}/{tier_no}"
            start = self._rr[key] % n if n else 0
            for i in range(n):
                src = tier[(start + i) % n]
                wait = max(warmup.wait_time(src.address, provider),
                           automation.suspended_for([f"domain:{domain}", site, f"ip:{src.address}"]))
                if wait <= 0:
                    self._rr[key] = (start + i + 1) % n
                    return src, effective_shaping(cfg.throttling.rules, domain, provider, src.address), 0.0
                best_wait = min(best_wait, wait)
        return None, Shaping(), recheck(best_wait)

    def peer(self, pool: Pool, warmup: WarmupGate, provider: str | None) -> Peer | None:
        """The peer that takes mail none of this replica's addresses of ``pool`` may send now (None: it waits)."""
        key = f"peer:{pool.name}"
        found = choose_peer(pool, warmup.capped, lambda a: warmup.wait_time(a, provider) > 0, self._rr[key])
        if found is not None:
            self._rr[key] += 1
        return found


def may_send(cfg: MtaConfig, pool_name: str, address: str) -> bool:
    """Whether ``address`` may still send under the running config (a reload may have stopped it)."""
    try:
        pool = cfg.pool(pool_name)
    except KeyError:
        return False
    return any(s.address == address and not s.quarantined and not s.paused for s in pool.source_ips)
