"""Every check, run side by side (the slowest one sets the time), in a fixed order."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pipeline.brokers.kind import kind_of
from pipeline.doctor import ci, processes, stores
from pipeline.doctor.checks import Check, guarded
from pipeline.doctor.processes import Inspector
from pipeline.settings import Settings

__all__ = ["Inspector", "run_checks"]


def run_checks(settings: Settings, *, inspect: Inspector) -> list[Check]:
    """Every check's finding; ``inspect`` finds the workers (``celery_inspector``)."""
    kind = kind_of(settings)
    steps: dict[str, Callable[[], list[Check]]] = {
        "broker": lambda: [stores.broker(settings, kind)],
        "state": lambda: [stores.state(kind)],
        "receiver": lambda: [processes.receiver(settings)],
        "workers": lambda: [processes.workers(inspect)],
        "beat": lambda: [processes.beat(settings, kind)],
        "ci": lambda: ci.ci_checks(settings),
        "dead-letters": lambda: [stores.dead_letters(settings)],
        "archive": lambda: [stores.archive(settings, kind)],
    }
    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        futures = [pool.submit(guarded, name, step) for name, step in steps.items()]
        return [check for future in futures for check in future.result()]
