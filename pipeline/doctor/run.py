"""Every check, run side by side (the slowest one sets the time), in a fixed order."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pipeline.brokers.kind import kind_of
from pipeline.doctor import ci, processes, stores
from pipeline.doctor.checks import FIX_AND_AGAIN, Check, guarded
from pipeline.doctor.processes import Inspector
from pipeline.settings import Settings

__all__ = ["Inspector", "run_checks"]


def run_checks(settings: Settings, *, inspect: Inspector) -> list[Check]:
    """Every check's finding; ``inspect`` finds the workers (``celery_inspector``)."""
    kind = kind_of(settings)
    on_broker, on_state = "see the broker check", "see the state check"
    steps: list[tuple[str, Callable[[], list[Check]], str]] = [
        ("broker", lambda: [stores.broker(settings, kind)], FIX_AND_AGAIN),
        ("state", lambda: [stores.state(kind)], FIX_AND_AGAIN),
        ("receiver", lambda: [processes.receiver(settings)], FIX_AND_AGAIN),
        ("workers", lambda: [processes.workers(inspect)], on_broker),
        ("beat", lambda: [processes.beat(settings, kind)], on_state),
        ("ci", lambda: ci.ci_checks(settings), FIX_AND_AGAIN),
        ("dead-letters", lambda: [stores.dead_letters(settings)], on_broker),
        ("archive", lambda: [stores.archive(settings, kind)], on_state),
    ]
    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        futures = [pool.submit(guarded, name, step, fix) for name, step, fix in steps]
        return [check for future in futures for check in future.result()]
