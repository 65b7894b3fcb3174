"""``cicb doctor``: what is wrong with a deployment, one check at a time.

Each check gives one ``Check``: its status (``pass``, ``warn``, ``fail``), what it found
and, when it is not a pass, what to do. A check never raises: what it could not reach is
its finding. The thresholds are named beside the check that uses them.

- ``stores``: the broker and the state's Redis (reachable, writable, never evicting),
  dead letters waiting, the archive against its limit;
- ``processes``: the receiver (``/readyz``, the token), the workers (Celery's ping and
  their queues), the beat sending reconcile passes (its heartbeat);
- ``ci``: CI's API (the keys, one read call; the clock against CI's ``Date``; every queue
  of ``CICB_CI_BUCKETS`` connected to the receiver).
"""

from __future__ import annotations

from pipeline.doctor.checks import FAIL, PASS, WARN, Check, Status, failed
from pipeline.doctor.run import Inspector, run_checks

__all__ = ["FAIL", "PASS", "WARN", "Check", "Inspector", "Status", "failed", "run_checks"]
