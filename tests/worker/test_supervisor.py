"""`aiprod serve`'s supervisor restarts a worker that keeps crashing with exponential backoff
(capped), and one that ran a while at once."""

from __future__ import annotations

import sys
import time

from aiprod.cli.serve import Supervisor

CRASH = [sys.executable, "-c", "import sys; sys.exit(3)"]


def _run(sup: Supervisor, seconds: float) -> None:
    sup.start()
    try:
        time.sleep(seconds)
    finally:
        sup.shutdown(timeout=5)


def test_a_crashing_worker_is_restarted_with_capped_exponential_backoff() -> None:
    sup = Supervisor(1, {}, cmd=CRASH, base=0.2, cap=0.8, healthy_after=60, poll=0.02)
    assert [sup.restart_delay(n) for n in (0, 1, 2, 3, 4, 5)] == [0, 0.2, 0.4, 0.8, 0.8, 0.8]
    _run(sup, 3.5)
    # Each quick exit in a row doubles the wait, up to the cap (never a tight loop).
    assert sup.delays[:4] == [0.2, 0.4, 0.8, 0.8], sup.delays
    assert all(d == 0.8 for d in sup.delays[3:])
    assert len(sup.delays) <= 7  # 0.2 + 0.4 + 0.8 * n fits in 3.5 s at most 6 times


def test_a_worker_that_ran_a_while_is_restarted_at_once() -> None:
    sup = Supervisor(1, {}, cmd=CRASH, base=0.2, cap=0.8, healthy_after=0, poll=0.02)
    _run(sup, 1.0)
    assert len(sup.delays) >= 3 and set(sup.delays) == {0.0}
