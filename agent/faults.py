"""Fault injection for the crash-safety tests: die by SIGKILL at a named point.

With ``EDGEFLEET_AGENT_CRASH_AT=<point>`` in its environment, the agent kills itself the moment it
reaches that point: no cleanup, no flush, no exception handler runs, which is as close as a test
can get to pulling the power cord at a chosen instant. The points are named where they are
placed (``crash_point("staged")``); ``chunk:N`` fires once chunk N of a download is on disk. The
fleet's collector has one too (``collector:storing``: a batch received, not yet stored), since it
makes the same promise of losing nothing it has accepted.
Outside those tests the variable is unset and a point costs one comparison. The variable is read
here, once, rather than at the entry point, so that the seam needs no plumbing through every
constructor it passes.
"""

from __future__ import annotations

import os
import signal

_CRASH_AT = os.environ.get("EDGEFLEET_AGENT_CRASH_AT")


def crash_point(name: str) -> None:
    if _CRASH_AT is not None and name == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)
