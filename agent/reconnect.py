"""Reconnecting to the broker: capped exponential backoff with jitter, and what counts as recoverable.

Without jitter, every device of a fleet whose broker restarts retries at the same instants
(1 s, 2 s, 4 s ...) and the broker meets the whole fleet at once, again and again. Each delay
is therefore drawn uniformly from the upper half of the exponential step ("equal jitter"): never
less than half the step, never more than ``max_delay``.
"""

from __future__ import annotations

import random
import socket
import ssl

# Errors from paho's connect() that mean "try again later". All are OSError subclasses, named here
# for the reader: ConnectionRefusedError/ConnectionResetError (broker down or restarting),
# socket.gaierror (DNS not up yet), TimeoutError, ssl.SSLError (a TLS handshake cut short), and
# plain OSError such as ENETUNREACH (Wi-Fi not associated yet). A ValueError (an invalid host) is
# a configuration error and is not caught.
RECOVERABLE_CONNECT_ERRORS: tuple[type[OSError], ...] = (
    ConnectionError, socket.gaierror, TimeoutError, ssl.SSLError, OSError,
)


class Backoff:
    """Delays for successive retries: min_delay, 2x, 4x ... capped at max_delay, each with jitter."""

    def __init__(self, *, min_delay: float = 1.0, max_delay: float = 60.0, rng: random.Random | None = None) -> None:
        if min_delay <= 0 or max_delay < min_delay:
            raise ValueError(f"backoff needs 0 < min_delay <= max_delay, got {min_delay} and {max_delay}")
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        """The delay before the next retry."""
        step = min(self.max_delay, self.min_delay * 2 ** min(self._attempt, 32))
        self._attempt += 1
        return self._rng.uniform(step / 2, step)

    def reset(self) -> None:
        """After a successful connection: the next failure starts from ``min_delay`` again."""
        self._attempt = 0
