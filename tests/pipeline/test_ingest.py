"""``pipeline.ingest`` against a real Guard on Valkey: each callback starts its route once,
and a failure never keeps a callback from a later delivery."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline.brokers.envelope import Envelope
from pipeline.errors import BrokerUnavailable, ParseError
from pipeline.guard import Guard
from pipeline.ingest import DISPATCHED, DUPLICATE, UNROUTED, ingest
from pipeline.routing import Route, RouteTable

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SAMPLE = SAMPLES / "tts_success.xml"
SAMPLE_JOB_ID = b"j707f4864f86811ecb90d0b03267ce0e5"
TABLE = RouteTable((Route("tts", ["notify"], tag="Tts", state="Success"),))
DEDUP_TTL_S = 300
CLAIM_TTL_S = 1


def envelope(
    job_id: str,
    *,
    state: str = "Success",
    body: bytes | None = None,
    source: str = "callback",
    scope: str | None = None,
) -> Envelope:
    if body is None:
        body = SAMPLE.read_bytes().replace(SAMPLE_JOB_ID, job_id.encode())
        body = body.replace(b"<State>Success</State>", f"<State>{state}</State>".encode())
    received = Envelope.received_now(
        body, content_type="application/xml", remote_addr="127.0.0.1", request_id="r1"
    )
    return dataclasses.replace(received, source=source, scope=scope)


class Dispatcher:
    """Records every route started; fails the next ``fail`` calls with ``error``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.events: list[dict[str, Any]] = []
        self.fail = 0
        self.error: BaseException = BrokerUnavailable("broker away")

    def __call__(self, route: Route, event: dict[str, Any], key: str) -> None:
        if self.fail:
            self.fail -= 1
            raise self.error
        self.calls.append((route.name, event["job_id"], key))
        self.events.append(event)


@pytest.fixture
def client(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(broker_url)


@pytest.fixture
def guard(client: redis.Redis) -> Guard:
    return Guard(client, dedup_ttl_s=DEDUP_TTL_S, claim_ttl_s=CLAIM_TTL_S)


def test_a_routed_callback_starts_its_route_and_is_remembered(
    guard: Guard, client: redis.Redis
) -> None:
    dispatch = Dispatcher()
    [outcome] = ingest(envelope("j1"), table=TABLE, dispatch=dispatch, guard=guard, owner="t1")
    assert outcome == {
        "event": "TaskFinish",
        "job_id": "j1",
        "run_id": None,
        "tag": "Tts",
        "state": "Success",
        "source": "callback",
        "route": "tts",
        "outcome": DISPATCHED,
        "key": "TaskFinish:j1:Success",
    }
    assert dispatch.calls == [("tts", "j1", "TaskFinish:j1:Success")]
    # Kept for the retention window, not for the short claim.
    ttl = client.ttl("cicb:dedup:TaskFinish:j1:Success")
    assert DEDUP_TTL_S - 5 < ttl <= DEDUP_TTL_S


def test_a_delivery_after_the_claim_would_have_expired_is_still_a_duplicate(
    guard: Guard,
) -> None:
    dispatch = Dispatcher()
    ingest(envelope("j2"), table=TABLE, dispatch=dispatch, guard=guard, owner="t1")
    time.sleep(CLAIM_TTL_S + 0.5)
    [outcome] = ingest(envelope("j2"), table=TABLE, dispatch=dispatch, guard=guard, owner="t2")
    assert outcome["outcome"] == DUPLICATE
    assert len(dispatch.calls) == 1


def test_a_second_delivery_is_a_duplicate_and_starts_nothing(guard: Guard) -> None:
    dispatch = Dispatcher()
    ingest(envelope("j3"), table=TABLE, dispatch=dispatch, guard=guard, owner="t1")
    [outcome] = ingest(envelope("j3"), table=TABLE, dispatch=dispatch, guard=guard, owner="t2")
    assert outcome["outcome"] == DUPLICATE
    assert outcome["route"] == "tts"
    assert len(dispatch.calls) == 1


def test_another_state_of_the_same_job_is_not_a_duplicate(guard: Guard) -> None:
    dispatch = Dispatcher()
    table = RouteTable((Route("any", ["notify"]),))
    ingest(envelope("j4"), table=table, dispatch=dispatch, guard=guard, owner="t1")
    ingest(envelope("j4", state="Failed"), table=table, dispatch=dispatch, guard=guard, owner="t2")
    assert [key for *_, key in dispatch.calls] == [
        "TaskFinish:j4:Success",
        "TaskFinish:j4:Failed",
    ]


def test_a_failed_dispatch_gives_the_key_back_for_a_later_delivery(
    guard: Guard, client: redis.Redis
) -> None:
    dispatch = Dispatcher()
    dispatch.fail = 1
    with pytest.raises(BrokerUnavailable):
        ingest(envelope("j5"), table=TABLE, dispatch=dispatch, guard=guard, owner="t1")
    assert client.get("cicb:dedup:TaskFinish:j5:Success") is None
    # The next delivery (or a dlq replay: another task id) runs the route.
    [outcome] = ingest(envelope("j5"), table=TABLE, dispatch=dispatch, guard=guard, owner="t2")
    assert outcome["outcome"] == DISPATCHED
    assert dispatch.calls == [("tts", "j5", "TaskFinish:j5:Success")]


def test_any_exception_in_dispatch_gives_the_key_back(guard: Guard) -> None:
    dispatch = Dispatcher()
    dispatch.fail, dispatch.error = 1, KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        ingest(envelope("j6"), table=TABLE, dispatch=dispatch, guard=guard, owner="t1")
    [outcome] = ingest(envelope("j6"), table=TABLE, dispatch=dispatch, guard=guard, owner="t2")
    assert outcome["outcome"] == DISPATCHED


def test_the_same_message_delivered_again_runs_its_route_again(guard: Guard) -> None:
    # Its worker died after the claim and before the task finished: the claim is its own,
    # so the route starts again (its steps' ids make the second copy of each a no-op).
    dispatch = Dispatcher()
    assert guard.claim("TaskFinish:j7:Success", owner="t1")
    [outcome] = ingest(envelope("j7"), table=TABLE, dispatch=dispatch, guard=guard, owner="t1")
    assert outcome["outcome"] == DISPATCHED
    assert len(dispatch.calls) == 1


def test_a_callback_claimed_by_another_running_task_is_a_duplicate(guard: Guard) -> None:
    dispatch = Dispatcher()
    assert guard.claim("TaskFinish:j8:Success", owner="t1")
    [outcome] = ingest(envelope("j8"), table=TABLE, dispatch=dispatch, guard=guard, owner="t2")
    assert outcome["outcome"] == DUPLICATE
    assert dispatch.calls == []


def test_an_unrouted_callback_is_remembered_too(guard: Guard, client: redis.Redis) -> None:
    dispatch = Dispatcher()
    table = RouteTable((Route("other", ["notify"], tag="Transcode"),))
    [outcome] = ingest(envelope("j9"), table=table, dispatch=dispatch, guard=guard, owner="t1")
    assert outcome["outcome"] == UNROUTED and outcome["route"] is None
    assert dispatch.calls == []
    assert client.get("cicb:dedup:TaskFinish:j9:Success") == b"done"
    [again] = ingest(envelope("j9"), table=table, dispatch=dispatch, guard=guard, owner="t2")
    assert again["outcome"] == DUPLICATE


def test_a_body_that_is_not_a_callback_claims_nothing(guard: Guard, client: redis.Redis) -> None:
    with pytest.raises(ParseError):
        ingest(
            envelope("x", body=b"<html>not a callback</html>"),
            table=TABLE,
            dispatch=Dispatcher(),
            guard=guard,
            owner="t1",
        )
    assert list(client.scan_iter("cicb:dedup:*")) == []


def test_without_a_guard_every_delivery_dispatches() -> None:
    dispatch = Dispatcher()
    for owner in ("t1", "t2"):
        ingest(envelope("j10"), table=TABLE, dispatch=dispatch, owner=owner)
    assert len(dispatch.calls) == 2


def test_a_reconciled_job_is_routed_as_reconciled_and_its_callback_is_then_a_duplicate(
    guard: Guard,
) -> None:
    dispatch = Dispatcher()
    [found] = ingest(
        envelope("j11", source="reconcile"), table=TABLE, dispatch=dispatch, guard=guard
    )
    assert (found["outcome"], found["source"]) == ("reconciled", "reconcile")
    assert dispatch.events[0]["source"] == "reconcile"
    [late] = ingest(envelope("j11"), table=TABLE, dispatch=dispatch, guard=guard, owner="t2")
    assert late["outcome"] == DUPLICATE
    assert len(dispatch.calls) == 1


def test_a_replay_in_a_new_scope_runs_the_route_again_under_new_keys(guard: Guard) -> None:
    dispatch = Dispatcher()
    ingest(envelope("j12"), table=TABLE, dispatch=dispatch, guard=guard, owner="t1")
    [again] = ingest(
        envelope("j12", source="replay"), table=TABLE, dispatch=dispatch, guard=guard, owner="t2"
    )
    assert again["outcome"] == DUPLICATE  # a replay without a new scope runs nothing twice
    [forced] = ingest(
        envelope("j12", source="replay", scope="r1"),
        table=TABLE,
        dispatch=dispatch,
        guard=guard,
        owner="t3",
    )
    assert forced["outcome"] == DISPATCHED
    assert [key for *_, key in dispatch.calls] == [
        "TaskFinish:j12:Success",
        "TaskFinish:j12:Success@r1",
    ]
    assert dispatch.events[1]["scope"] == "r1" and dispatch.events[1]["source"] == "replay"


def test_a_failure_gives_back_every_key_whose_route_was_not_confirmed(
    guard: Guard, client: redis.Redis
) -> None:
    # Two events in one body; the worker confirms with the task's last write, so when the
    # second route cannot start, the first has not started either (its step is not out).
    body = (SAMPLES / "rules" / "state_from_code.xml").read_bytes()
    table = RouteTable((Route("any", ["notify"]),))
    dispatch = Dispatcher()
    deferred: list[str] = []
    failing = FailSecond()
    with pytest.raises(BrokerUnavailable):
        ingest(
            envelope("", body=body),
            table=table,
            dispatch=failing,
            guard=guard,
            owner="t1",
            confirm=deferred.append,
        )
    assert deferred == [failing.keys[0]]  # the first was dispatched, its confirm deferred
    assert list(client.scan_iter("cicb:dedup:*")) == []
    # The next delivery (another task id) runs both routes.
    outcomes = ingest(
        envelope("", body=body), table=table, dispatch=dispatch, guard=guard, owner="t2"
    )
    assert [o["outcome"] for o in outcomes] == [DISPATCHED, DISPATCHED]


def test_a_failure_leaves_a_confirmed_key_confirmed(guard: Guard, client: redis.Redis) -> None:
    body = (SAMPLES / "rules" / "state_from_code.xml").read_bytes()
    table = RouteTable((Route("any", ["notify"]),))
    failing = FailSecond()
    with pytest.raises(BrokerUnavailable):
        ingest(envelope("", body=body), table=table, dispatch=failing, guard=guard, owner="t1")
    first, second = failing.keys
    assert client.get(f"cicb:dedup:{first}") == b"done"  # its route started
    assert client.get(f"cicb:dedup:{second}") is None


class FailSecond:
    """Dispatches the first event and fails the second, as a broker going away would."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, route: Route, event: dict[str, Any], key: str) -> None:
        self.keys.append(key)
        if len(self.keys) == 2:
            raise BrokerUnavailable("broker away")


def test_claims_already_made_are_taken_as_answered(guard: Guard, client: redis.Redis) -> None:
    # The worker claims a body's keys with its task's lease: ingest asks Redis nothing more.
    dispatch = Dispatcher()
    answered = {"TaskFinish:j13:Success": False}
    [outcome] = ingest(
        envelope("j13"), table=TABLE, dispatch=dispatch, guard=guard, owner="t1", claimed=answered
    )
    assert outcome["outcome"] == DUPLICATE
    assert client.get("cicb:dedup:TaskFinish:j13:Success") is None
    answered = {"TaskFinish:j13:Success": True}
    [outcome] = ingest(
        envelope("j13"), table=TABLE, dispatch=dispatch, guard=guard, owner="t1", claimed=answered
    )
    assert outcome["outcome"] == DISPATCHED
    assert client.get("cicb:dedup:TaskFinish:j13:Success") == b"done"


def test_a_failure_leaves_claims_made_before_to_their_maker(
    guard: Guard, client: redis.Redis
) -> None:
    assert guard.claim("TaskFinish:j14:Success", owner="t1")
    dispatch = Dispatcher()
    dispatch.fail = 1
    with pytest.raises(BrokerUnavailable):
        ingest(
            envelope("j14"),
            table=TABLE,
            dispatch=dispatch,
            guard=guard,
            owner="t1",
            claimed={"TaskFinish:j14:Success": True},
        )
    assert client.get("cicb:dedup:TaskFinish:j14:Success") == b"claimed:t1"
