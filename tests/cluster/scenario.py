"""One fault under load, measured: what every cluster scenario shares.

``run`` starts cicb on the cluster, sends 2,000 callbacks at 40 a second over both receivers
(half of them Failed jobs that the default route notifies and resubmits through CI's API
stand-in), breaks something 15 s in, waits for everything to settle, prints the figures and
asserts: every callback was answered 200 or 503, every callback answered 200 was notified
(0 lost), no job was resubmitted twice,
and a notification was repeated only where a worker's log shows why: the step finished while
it could not reach Redis (its completion recorded late, after a copy ran), or the target's
answer never came back to it (the request may have arrived: it is sent again, with the same
``webhook-id``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.cluster.stack import Cluster, expected, settle, window
from tests.reliability.harness import log_lines, report

# What is not done this long after the load ended is reported, then asserted on.
SETTLE_S = 240

COUNT = 2000
RATE = 40.0
FAULT_AT_S = 15.0  # into the load
# Steady again: every callback answered 200 from then on is notified within this long.
STEADY_LAG_S = 5.0


def run(
    cluster: Cluster, name: str, broker_url: str, fault: Callable[[], None], **env: str
) -> dict[str, Any]:
    cluster.start_cicb(broker_url, **env)
    load = cluster.load(count=COUNT, rate=RATE)
    time.sleep(FAULT_AT_S)
    fault_at = time.time()
    fault()
    fault_done = time.time()
    load.popen.wait(timeout=COUNT / RATE + 120)
    answers = cluster.answers()
    keys, failed = expected(answers)
    settle(
        lambda: (
            set(keys.values()) <= set(cluster.notified())
            and len(cluster.submitted()) >= len(failed)
        ),
        timeout_s=SETTLE_S,
    )
    # A repeat can come for as long as a task message is kept: wait until none is.
    settle(lambda: cluster.in_flight() == 0, timeout_s=SETTLE_S)
    notified = cluster.notified()
    first = cluster.first_notified()
    submitted = cluster.submitted()
    answered = {a["n"]: a["at"] for a in answers if a["status"] == 200}
    late = [
        answered[n] for n, key in keys.items() if first.get(key, 1e18) - answered[n] > STEADY_LAG_S
    ]
    steady_s = max(0.0, max(late, default=fault_at) - fault_at)
    repeated = sorted(k for k, c in notified.items() if c > 1)
    logs = [cluster.worker_log(h.name) for h in cluster.workers]
    proven = {
        f"TaskFinish:{line.get('job_id')}:{line.get('state')}"
        for line in log_lines(*logs)
        if line.get("task") == "cicb.notify"
        and (
            (
                line.get("event") in ("task.waiting_for_redis", "task.end_not_recorded")
                and line.get("end") == "finish"
            )
            or (line.get("event") == "notify.not_delivered" and line.get("may_have_arrived"))
        )
    }
    figures = {
        "sent": len(answers),
        "answered_200": len(keys),
        "answered_503": sum(a["status"] == 503 for a in answers),
        "other": sum(a["status"] not in (200, 503) for a in answers),
        "notified": len(set(keys.values()) & set(notified)),
        "lost": len(set(keys.values()) - set(notified)),
        "repeated": repeated,
        "repeats_proven_by_log": sorted(set(repeated) & proven),
        "failed_answered_200": len(failed),
        "resubmitted": len(submitted),
        "resubmitted_twice": sorted(i for i, c in submitted.items() if c > 1),
        "window_503_s": round(window(answers, 503), 1),
        "fault_s": round(fault_done - fault_at, 1),
        "notified_per_s_during_fault": round(
            sum(fault_at <= t <= fault_done for t in first.values())
            / max(fault_done - fault_at, 1.0),
            1,
        ),
        "republished": sum(line.get("event") == "message.republished" for line in log_lines(*logs)),
        "steady_after_s": round(steady_s, 1),
    }
    missing = sorted(set(keys.values()) - set(notified))[:5]
    if missing or cluster.in_flight():
        figures["missing"] = missing
        figures["unresubmitted"] = sorted(
            {f"input/jrel{n:08d}.mp4" for n in failed} - set(submitted)
        )[:5]
        figures["still_in_flight"] = cluster.in_flight_states()
    report(name, **figures)
    assert figures["lost"] == 0
    assert figures["other"] == 0  # every callback got an answer, 200 or 503, within 30 s
    assert set(submitted) >= {f"input/jrel{n:08d}.mp4" for n in failed}
    assert figures["resubmitted_twice"] == []
    assert set(repeated) <= proven, (repeated, proven)
    return figures
