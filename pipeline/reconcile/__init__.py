"""Reconcile: ask CI which jobs finished and route those whose callback never came.

CI cannot send a callback again, so a callback lost while the receiver was down is lost for
good. A pass lists, through CI's API (``ci``):

- **what**: every queue in ``CICB_RECONCILE_QUEUES``, every queue and workflow of
  ``CICB_CI_BUCKETS`` whose jobs CI lists (``discovery``, refreshed at most hourly) and every
  queue a callback named within the retention, each with the Tags in
  ``CICB_RECONCILE_TAGS`` plus the Tags found or named on it (CI's list API needs a Tag); and
  every workflow a callback named (``plan.plan``);
- **when**: per queue and Tag (or workflow), jobs created from its checkpoint minus
  ``DEFAULT_OVERLAP_S`` (the first time: ``DEFAULT_FIRST_LOOKBACK_S`` back) to now minus
  ``CICB_RECONCILE_GRACE_S``, never further back than ``CICB_DEDUP_TTL_S``, where the
  deduplication keys end (``plan.window``).

A job in a final state (Success, Failed, Cancel), ended before the grace, whose
deduplication key no callback holds and that no pass sent, is lost: it is put on ``ingest``
as an envelope of ``source="reconcile"`` holding CI's answer for that one job, so it takes a
callback's path (deduplication, route, chain, retries, dead letter) and its callback, if it
comes after all, is a duplicate. A job still running, or ended within the grace, holds the
checkpoint back (by at most ``DEFAULT_MAX_PENDING_S``), so a later pass sees it again.

One pass per target at a time (a Redis lock). CI's refusals (``CiRefused``: bad keys, no
such queue) end that target's pass with one log line and a counted error; ``CiUnavailable``
and Redis or broker failures are ``TransientError``s for the caller to retry.

The modules: ``plan`` (targets and windows), ``discovery`` (targets found in the buckets),
``ci`` (CI's lists through the SDK), ``store`` (the reconciler's state in Redis), ``passes``
(one pass over a target).
"""

from pipeline.reconcile.ci import CiJobs, CiRefused, CiUnavailable
from pipeline.reconcile.discovery import discovered
from pipeline.reconcile.passes import Found, Reconciler, Report
from pipeline.reconcile.plan import (
    QueueTarget,
    Target,
    WorkflowTarget,
    plan,
    target_from_json,
    target_to_json,
    window,
)
from pipeline.reconcile.store import ReconcileStore

__all__ = [
    "CiJobs",
    "CiRefused",
    "CiUnavailable",
    "Found",
    "QueueTarget",
    "ReconcileStore",
    "Reconciler",
    "Report",
    "Target",
    "WorkflowTarget",
    "discovered",
    "plan",
    "target_from_json",
    "target_to_json",
    "window",
]
