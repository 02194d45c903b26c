"""A token bucket, for the per-client publish rate (``max_publish_rate``).

Time is an argument: the broker passes its loop clock, tests pass numbers.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst`` (at least one); full at
    ``now``. Raises ValueError if ``rate`` is not positive."""

    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self.tokens = self.burst
        self.last = now

    def take(self, now: float) -> bool:
        """Take one token at ``now``; returns False (and takes none) if there is none."""
        tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True
