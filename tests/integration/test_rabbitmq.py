"""The whole path on a real RabbitMQ: receiver -> RabbitMQ -> Celery worker -> notify target.

cicb claims to work with RabbitMQ as the broker (``CICB_BROKER_URL=amqp://...``): the receiver
then publishes through Celery's ``send_task`` instead of its Redis fast path, and the dead
letters are plain AMQP messages. Deduplication, completion records and the outcome counters
still live in Redis (``CICB_REDIS_URL``, the session's Valkey here). These tests cover:

- callbacks posted together each reach the notify target exactly once, with their job id, and
  a callback sent twice is notified once;
- a malformed body is dead-lettered on RabbitMQ and ``cicb dlq`` lists it, shows its raw bytes
  and the reason, replays it and purges it;
- the console's bounded reads of the dead letters work there too: the oldest read and given
  back in order, one group replayed while the others stay;
- a callback answered 200 survives RabbitMQ dying at once (killed, not stopped); while it is
  down the receiver answers 503 quickly (and ``/readyz`` too), and once it is back the
  receiver takes callbacks again without a restart.

Each server is a ``rabbitmq-server`` of the test's own, with its own epmd, on free loopback
ports and with its data and logs in a pytest temporary directory. Without RabbitMQ installed
the tests are skipped, and fail under ``CI=true`` (``.ci/run`` installs Debian's
``rabbitmq-server``).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from kombu import Connection

from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue
from pipeline.brokers.kind import kind_of
from pipeline.brokers.queues import (
    ACTIONS_QUEUE,
    DEAD_LETTER_QUEUE,
    INGEST_QUEUE,
    INGEST_TASK,
    connection,
    queue,
)
from pipeline.errors import BrokerUnavailable
from pipeline.settings import Settings
from tests.rabbitmq import RabbitMQ
from tests.support import (
    CICB,
    SAMPLES,
    TOKEN,
    Stack,
    Target,
    cicb_env,
    metric,
    start_receiver,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.integration

TTS_JOB_ID = "j707f4864f86811ecb90d0b03267ce0e5"


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """A RabbitMQ server for the session's tests."""
    server = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def amqp_url(rabbitmq: RabbitMQ) -> str:
    """The session's RabbitMQ, with cicb's queues empty."""
    with Connection(rabbitmq.url) as conn:
        for name in (INGEST_QUEUE, ACTIONS_QUEUE, DEAD_LETTER_QUEUE):
            bound = queue(name)(conn.default_channel)
            bound.declare()
            bound.purge()
    return rabbitmq.url


@pytest.fixture
def stack(
    make_stack: Callable[..., Stack], amqp_url: str, broker_url: str, target: Target
) -> Stack:
    """A worker and a receiver on RabbitMQ, with Redis (Valkey) beside it, notifying ``target``."""
    return make_stack(
        CICB_BROKER_URL=amqp_url, CICB_REDIS_URL=broker_url, CICB_NOTIFY_URLS=target.url
    )


def tts_callback(job_id: str) -> bytes:
    """The TTS sample callback, for another job."""
    body = (SAMPLES / "tts_success.xml").read_bytes()
    assert TTS_JOB_ID.encode() in body
    return body.replace(TTS_JOB_ID.encode(), job_id.encode())


def post(url: str, body: bytes, timeout_s: float = 10) -> httpx.Response:
    return httpx.post(
        f"{url}/callbacks", content=body, headers={"X-Callback-Token": TOKEN}, timeout=timeout_s
    )


def test_callbacks_posted_together_are_each_notified_once(stack: Stack, target: Target) -> None:
    job_ids = [f"j{uuid.uuid4().hex}" for _ in range(6)]
    bodies = [tts_callback(job_id) for job_id in job_ids]
    bodies.append(bodies[0])  # Tencent sends a callback again: one notification all the same
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(stack.post, bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
    assert {r.json()["status"] for r in responses} == {"accepted"}

    target.wait_for(len(job_ids))
    wait_until(
        lambda: '"outcome": "duplicate"' in stack.worker.log(), what="the repeat to be skipped"
    )
    events = target.bodies()
    assert sorted(e["job_id"] for e in events) == sorted(job_ids)
    assert {(e["tag"], e["state"]) for e in events} == {("Tts", "Success")}

    log = stack.worker.log()
    assert log.count('"outcome": "dispatched"') == len(job_ids)
    assert log.count('"outcome": "duplicate"') == 1
    samples = stack.worker_metrics()
    assert metric(samples, "cicb_callbacks_total", outcome="dispatched") == len(job_ids)
    assert metric(samples, "cicb_callbacks_total", outcome="duplicate") == 1
    # What waits on RabbitMQ's queues, read by the receiver: nothing now.
    queues = stack.receiver_metrics()
    for name in ("ingest", "actions", "dead_letter"):
        assert ("cicb_queue_messages", frozenset({("queue", name)})) in queues
    assert metric(queues, "cicb_queue_messages") == 0
    # RabbitMQ cannot show a message without delivering it: no age.
    assert not any(name == "cicb_ingest_oldest_age_seconds" for name, _ in queues)
    # RabbitMQ keeps what a consumer took itself: no in-flight records to count.
    assert not any(name.startswith("cicb_inflight") for name, _ in queues)
    assert stack.dead_letters() == []


def test_a_malformed_body_is_dead_lettered_on_rabbitmq_with_its_bytes(
    stack: Stack, target: Target
) -> None:
    garbage = b"\x00\xffnot a callback\r\n" + bytes(range(256))
    assert stack.post(garbage).status_code == 200

    [letter] = wait_until(stack.dead_letters, what="a dead letter")
    assert letter["task"] == "cicb.ingest"
    assert letter["queue"] == INGEST_QUEUE
    assert letter["error"] == "ParseError"
    shown = subprocess.run(
        [CICB, "dlq", "show", str(letter["id"]), "--body"],
        env=stack.env,
        capture_output=True,
        check=True,
    ).stdout
    assert shown == garbage
    record = json.loads(stack.cli("dlq", "show", str(letter["id"])).stdout)
    assert "UTF-8" in record["reason"] and record["reason"] == letter["reason"]
    assert stack.dead_letters() == [letter]  # reading a dead letter leaves it on the queue

    assert "replayed 1" in stack.cli("dlq", "replay", str(letter["id"])).stdout
    [again] = wait_until(
        lambda: [d for d in stack.dead_letters() if d["id"] != letter["id"]], what="replayed"
    )
    assert [d["id"] for d in stack.dead_letters()] == [again["id"]]
    assert "purged 1" in stack.cli("dlq", "purge", "--yes").stdout
    assert stack.dead_letters() == []
    assert target.received == []


def test_the_consoles_bounded_dead_letter_reads_keep_the_queue_on_rabbitmq(amqp_url: str) -> None:
    dead = DeadLetterQueue(lambda: connection(Settings(broker_url=amqp_url)))
    letters = [
        DeadLetter(
            task="a" if n % 2 else "b",
            queue=ACTIONS_QUEUE,
            args=[{"job_id": f"j{n}"}],
            kwargs={},
            error="E",
            reason="r",
            attempts=1,
        )
        for n in range(5)
    ]
    for letter in letters:
        dead.put(letter)
    peeked, total = dead.peek(2)
    assert ([d.id for d in peeked], total) == ([letters[0].id, letters[1].id], 5)
    assert [d.id for d in dead.entries()] == [d.id for d in letters]
    sent: list[str] = []
    count = dead.replay_some(lambda d: sent.append(d.id), lambda d: d.task == "a", limit=3)
    assert (count, sent) == (1, [letters[1].id])
    assert sorted(d.id for d in dead.entries()) == sorted(letters[n].id for n in (0, 2, 3, 4))


def test_a_rabbitmq_crash_loses_no_accepted_callback_and_meanwhile_the_receiver_answers_503(
    tmp_path: Path, broker_url: str, target: Target
) -> None:
    server = RabbitMQ(tmp_path / "rabbitmq")  # its own: this test kills it
    worker = None
    try:
        server.start()
        env = cicb_env(server.url, CICB_REDIS_URL=broker_url, CICB_NOTIFY_URLS=target.url)
        receiver, url = start_receiver(env, tmp_path / "receiver.log")
        try:
            accepted = [f"j{uuid.uuid4().hex}" for _ in range(20)]
            with ThreadPoolExecutor(len(accepted)) as pool:
                responses = list(pool.map(lambda j: post(url, tts_callback(j)), accepted))
            assert [r.status_code for r in responses] == [200] * len(accepted)

            # A 200 means RabbitMQ has the callback on disk, not in a socket buffer: it
            # survives RabbitMQ dying at once.
            server.kill()
            late = f"j{uuid.uuid4().hex}"
            started = time.monotonic()
            refused = post(url, tts_callback(late), timeout_s=30)
            assert refused.status_code == 503, refused.text
            assert time.monotonic() - started < 10
            assert httpx.get(f"{url}/readyz", timeout=30).status_code == 503
            assert httpx.get(f"{url}/healthz").status_code == 200

            server.start()
            # The receiver takes callbacks again without a restart; Tencent's retry of the
            # one refused gets through.
            wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, what="ready")
            assert post(url, tts_callback(late)).status_code == 200

            worker = start_worker(env, tmp_path / "worker.log")
            events = target.wait_for(len(accepted) + 1)
            assert sorted(e["job_id"] for e in events) == sorted([*accepted, late])
        finally:
            receiver.stop()
        assert TOKEN not in receiver.log()
    finally:
        if worker is not None:
            worker.stop()
        server.close()


def test_a_node_that_stops_answering_a_publish_is_given_up_on(
    tmp_path: Path, broker_url: str
) -> None:
    """Every wait of a publish is bounded, the declaration's too: a publisher's connection
    declares a queue the first time it sends there, and a node that stopped answering (cut
    off, stuck) would hold that answer for as long, and the receiver's request with it."""
    server = RabbitMQ(tmp_path / "rabbitmq")  # its own: this test freezes it
    try:
        server.start()
        settings = Settings(broker_url=server.url, redis_url=broker_url)
        publisher = kind_of(settings).publisher(settings)
        try:
            publisher.send(INGEST_TASK, [{}], queue_name=INGEST_QUEUE)  # connected
            server.pause()
            try:
                started = time.monotonic()
                with pytest.raises(BrokerUnavailable):
                    # A queue this connection has not declared: the declaration goes first.
                    publisher.send(INGEST_TASK, [{}], queue_name=ACTIONS_QUEUE)
                given_up_s = time.monotonic() - started
            finally:
                server.resume()
            # Well within the 30 s a callback waits for its answer in the cluster scenarios.
            assert given_up_s < 25, f"given up on after {given_up_s:.1f} s"
            # The node answers again: so does the publisher, without a restart.
            wait_until(
                lambda: bool(publisher.send(INGEST_TASK, [{}], queue_name=ACTIONS_QUEUE)),
                what="a publish once the node answers again",
            )
        finally:
            publisher.close()
    finally:
        server.close()
