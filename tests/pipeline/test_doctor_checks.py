"""``pipeline.doctor``'s checks one by one: the verdicts on a real Valkey, the CI stand-in
through the real SDK, and fakes where the finding is Celery's (the workers' answers).

What a whole ``cicb doctor`` says of real processes is in tests/integration/test_doctor.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue
from pipeline.brokers.kind import kind_of
from pipeline.brokers.queues import connection, dead_letter_queue
from pipeline.doctor import FAIL, PASS, WARN, Check, failed, run_checks
from pipeline.doctor.ci import CLOCK_MAX_OFFSET_S, ci_checks
from pipeline.doctor.processes import beat, workers
from pipeline.doctor.stores import archive, dead_letters, redis_store
from pipeline.endpoints import RedisEndpoint
from pipeline.reconcile.beats import STALE_S, Beats
from pipeline.settings import Settings
from tests.ci_queues import ci_queue
from tests.peers import CiServer, ci_error
from tests.support import TOKEN, free_port

KEYS = {"cos_secret_id": "AKIDtest", "cos_secret_key": "test-secret-key"}
BUCKET = "media-1250000000"
PUBLIC = "https://cicb.example.com/callbacks"


@pytest.fixture
def client(broker_url: str) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(broker_url)
    yield found
    found.close()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def statuses(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.status for c in checks}


# -- the finding and how it is shown ---------------------------------------------------------


def test_a_check_is_one_line_with_what_to_do_unless_it_passed_and_json_alike() -> None:
    ok = Check("broker", PASS, "answers")
    bad = Check("workers", FAIL, "none answered", "start one")
    assert ok.line(width=8) == "pass  broker    answers"
    assert bad.line(width=8) == "fail  workers   none answered  -> start one"
    assert bad.to_json() == {
        "check": "workers",
        "status": "fail",
        "found": "none answered",
        "fix": "start one",
    }
    assert not failed([ok, Check("archive", WARN, "90%", "raise it")])
    assert failed([ok, bad])


# -- Redis, dead letters, the archive ---------------------------------------------------------


def test_a_redis_that_answers_takes_writes_and_never_evicts_passes(
    broker_url: str, client: redis.Redis
) -> None:
    check = redis_store("broker", RedisEndpoint(broker_url), setting="CICB_BROKER_URL")
    assert check.status == PASS and "noeviction" in check.found
    assert client.keys("cicb:doctor:*") == []  # the probe key is gone


def test_a_redis_that_evicts_keys_fails(broker_url: str, client: redis.Redis) -> None:
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        check = redis_store("state", RedisEndpoint(broker_url), setting="CICB_REDIS_URL")
    finally:
        client.config_set("maxmemory-policy", "noeviction")
    assert check.status == FAIL
    assert "allkeys-lru" in check.found and check.fix is not None and "noeviction" in check.fix


def test_a_redis_that_does_not_answer_fails_naming_the_setting() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    check = redis_store("state", RedisEndpoint(url), setting="CICB_REDIS_URL")
    assert check.status == FAIL and "unreachable" in check.found
    assert check.fix is not None and "CICB_REDIS_URL" in check.fix


def test_dead_letters_waiting_warn_with_the_command_that_lists_them(broker_url: str) -> None:
    settings = Settings(broker_url=broker_url)
    assert dead_letters(settings).status == PASS
    queue = DeadLetterQueue(lambda: connection(settings), dead=dead_letter_queue(settings))
    letter = DeadLetter(
        task="cicb.ingest",
        queue="ingest",
        args=[],
        kwargs={},
        error="ParseError",
        reason="not XML",
        attempts=1,
    )
    queue.put(letter)
    check = dead_letters(settings)
    assert (check.status, check.found) == (WARN, "1 dead letter(s) waiting")
    assert check.fix is not None and "cicb dlq list" in check.fix


def test_the_archive_warns_from_nine_tenths_of_its_limit(
    broker_url: str, client: redis.Redis
) -> None:
    settings = Settings(broker_url=broker_url, archive_max_entries=10)
    kind = kind_of(settings)
    for n in range(8):
        client.xadd("cicb:archive", {"n": n})
    assert archive(settings, kind).found == "8 of 10 callbacks (80%)"
    client.xadd("cicb:archive", {"n": 9})
    check = archive(settings, kind)
    assert check.status == WARN and check.found.startswith("9 of 10 callbacks (90%)")
    assert archive(Settings(broker_url=broker_url, archive_max_entries=0), kind).status == PASS


# -- workers and beat -------------------------------------------------------------------------


def test_workers_pass_when_those_online_consume_ingest_and_actions() -> None:
    none = workers(lambda timeout_s: {})
    assert none.status == FAIL and "no worker answered" in none.found
    half = workers(lambda timeout_s: {"w1@h": ["ingest"]})
    assert half.status == FAIL and "none consumes actions" in half.found
    split = workers(lambda timeout_s: {"w1@h": ["ingest"], "w2@h": ["actions", "mine"]})
    assert split.status == PASS and "2 online (w1@h, w2@h)" in split.found


def test_beats_are_heard_until_they_stop_or_go_quiet(client: redis.Redis) -> None:
    clock = Clock()
    beats = Beats(client, clock=clock)
    beats.heard("h1:10")
    clock.now += 5
    beats.heard("h2:20")
    assert [b.beat_id for b in beats.alive()] == ["h2:20", "h1:10"]
    clock.now += STALE_S - 1
    assert [b.beat_id for b in beats.alive()] == ["h2:20"]
    beats.gone("h2:20")
    assert beats.alive() == [] and [b.beat_id for b in beats.known()] == ["h1:10"]


def test_exactly_one_beat_sending_reconcile_passes_passes(
    broker_url: str, client: redis.Redis
) -> None:
    clock = Clock()
    settings = Settings(broker_url=broker_url, **KEYS)
    kind = kind_of(settings)
    off = beat(Settings(broker_url=broker_url), kind, clock=clock)
    assert off.status == WARN and "reconcile passes are off" in off.found
    assert beat(settings, kind, clock=clock).status == FAIL
    beats = Beats(client, clock=clock)
    beats.heard("h1:10")
    one = beat(settings, kind, clock=clock)
    assert (one.status, one.found) == (PASS, "one beat sends reconcile passes (h1:10)")
    beats.heard("h2:20")
    assert beat(settings, kind, clock=clock).status == WARN
    clock.now += STALE_S + 5
    gone = beat(settings, kind, clock=clock)
    assert gone.status == FAIL and "(last: h2:20, 35 s ago)" in gone.found


# -- CI: keys, clock, queues --------------------------------------------------------------------


def ci_settings(ci: CiServer, **extra: str) -> Settings:
    values = {
        "ci_endpoint": f"http://{ci.endpoint}",
        "ci_buckets": (f"{BUCKET}:ap-guangzhou",),
        "public_url": PUBLIC,
        "receiver_token": TOKEN,
        **KEYS,
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


def test_without_keys_or_buckets_the_ci_checks_warn_saying_what_to_set() -> None:
    none = ci_checks(Settings())
    assert statuses(none) == {"ci-keys": WARN, "clock": WARN, "queues": WARN}
    assert all("CICB_COS_SECRET_ID" in (c.fix or "") for c in none)
    keys_only = ci_checks(Settings(**KEYS))
    assert all("CICB_CI_BUCKETS" in (c.fix or "") for c in keys_only)


def test_connected_queues_pass_and_a_wrong_token_fails(ci_server: CiServer) -> None:
    ci_server.queues[(BUCKET, "media")] = [ci_queue("pmedia01", url=f"{PUBLIC}?token={TOKEN}")]
    ci_server.queues[(BUCKET, "doc")] = [
        ci_queue("pdoc02", url=f"{PUBLIC}?token={TOKEN}", events="TaskFinish")
    ]
    checks = ci_checks(ci_settings(ci_server))
    assert statuses(checks) == {"ci-keys": PASS, "clock": PASS, "queues": PASS}
    assert checks[2].found == "2 queue(s) in 1 bucket(s) connected"
    ci_server.queues[(BUCKET, "doc")] = [
        ci_queue("pdoc02", url=f"{PUBLIC}?token=typo", events="TaskFinish")
    ]
    queues = ci_checks(ci_settings(ci_server))[2]
    assert queues.status == FAIL
    assert queues.found == f"1 of 2 not connected: doc pdoc02 of {BUCKET}: wrong token"
    assert "typo" not in json.dumps(queues.to_json()) and TOKEN not in queues.line()


def test_keys_ci_refuses_fail_and_so_does_reading_the_queues(ci_server: CiServer) -> None:
    ci_server.refusals[BUCKET] = ci_error(403, "AccessDenied", "signature does not match")
    keys, clock, queues = ci_checks(ci_settings(ci_server))
    assert keys.status == FAIL and "AccessDenied" in keys.found
    assert clock.status == PASS  # a refusal has a Date too
    assert queues.status == FAIL


def test_a_clock_a_minute_off_from_ci_fails(ci_server: CiServer) -> None:
    ahead = ci_checks(ci_settings(ci_server), clock=lambda: time.time() + CLOCK_MAX_OFFSET_S + 5)
    assert ahead[1].status == FAIL and "ahead of CI's" in ahead[1].found
    behind = ci_checks(ci_settings(ci_server), clock=lambda: time.time() - 30)
    assert behind[1].status == PASS and "behind CI's" in behind[1].found


def test_ci_out_of_reach_fails_the_keys(ci_server: CiServer) -> None:
    settings = ci_settings(ci_server, ci_endpoint=f"http://127.0.0.1:{free_port()}")
    keys, clock, _ = ci_checks(settings)
    assert keys.status == FAIL and "CI not reached" in keys.found
    assert clock.status == WARN


# -- all of them --------------------------------------------------------------------------------


def test_every_check_runs_in_order_and_one_that_breaks_stops_none(broker_url: str) -> None:
    def broken(timeout_s: float) -> dict[str, list[str]]:
        raise ConnectionError("broker gone mid-way")

    settings = Settings(broker_url=broker_url, receiver_url=f"http://127.0.0.1:{free_port()}/cb")
    checks = run_checks(settings, inspect=broken)
    assert [c.name for c in checks] == [
        "broker",
        "state",
        "receiver",
        "workers",
        "beat",
        "ci-keys",
        "clock",
        "queues",
        "dead-letters",
        "archive",
    ]
    by_name = {c.name: c for c in checks}
    assert by_name["workers"].found == "ConnectionError: broker gone mid-way"
    assert by_name["workers"].fix == "see the broker check"
    assert by_name["receiver"].status == FAIL and by_name["broker"].status == PASS
