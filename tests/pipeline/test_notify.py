"""notify against a real HTTP server: signed webhooks, chat formats, retry or give up."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from pipeline.actions.notify import Delivery, TargetsPending, TargetsRejected, notify
from pipeline.actions.signing import webhook_secret_bytes
from pipeline.actions.targets import Target as NotifyTarget
from pipeline.errors import ConfigError, DeliveryError, PermanentError, TransientError
from pipeline.parsing.events import Event, JobEvent, ModerationEvent, WorkflowEvent
from pipeline.parsing.reader import parse
from tests.support import SAMPLES, Target, free_port

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

FAILED_JOB = b"""<Response><EventName>TaskFinish</EventName><JobsDetail>
<Code>InputFileNotExist</Code><Message>input file does not exist</Message>
<JobId>jfailed</JobId><State>Failed</State><Tag>Transcode</Tag>
<CreationTime>2022-06-30T19:33:18+0800</CreationTime></JobsDetail></Response>"""


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2) as client:
        yield client


@pytest.fixture
def event() -> JobEvent:
    [parsed] = parse((SAMPLES / "tts_success.xml").read_bytes())
    assert isinstance(parsed, JobEvent)
    return dataclasses.replace(parsed, user_data="回调 ✓")


def test_a_plain_url_gets_the_event_signed_the_standard_webhooks_way(
    client: httpx.Client, target: Target, event: JobEvent
) -> None:
    notify(
        client, [NotifyTarget.parse(target.url)], event, webhook_key=webhook_secret_bytes(SECRET)
    )

    [request] = target.received
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == "TaskFinish:j707f4864f86811ecb90d0b03267ce0e5:Success"
    # The body is the event as `cicb parse` prints it, to the byte.
    assert request["body"] == json.dumps(event.to_dict(), ensure_ascii=False).encode()
    # The reference verifier accepts it, and rejects it with another secret.
    assert Webhook(SECRET).verify(request["body"], headers) == event.to_dict()
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(request["body"], headers)


def test_without_a_secret_the_webhook_is_sent_unsigned(
    client: httpx.Client, target: Target, event: JobEvent
) -> None:
    notify(client, [NotifyTarget.parse(target.url)], event)
    [request] = target.received
    assert "webhook-signature" not in {k.lower() for k in request["headers"]}
    assert json.loads(request["body"]) == event.to_dict()


def test_a_bad_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        webhook_secret_bytes("not-a-whsec")
    with pytest.raises(ConfigError):
        webhook_secret_bytes("whsec_%%%")


@pytest.mark.parametrize("status", [503, 500, 429, 408])
def test_a_retryable_status_leaves_the_target_pending(
    client: httpx.Client, target: Target, event: JobEvent, status: int
) -> None:
    target.default_status = status
    parsed = NotifyTarget.parse(target.url)
    with pytest.raises(TargetsPending) as raised:
        notify(client, [parsed], event)
    assert isinstance(raised.value, TransientError)
    assert raised.value.pending == [parsed.id]
    assert raised.value.replay_kwargs == {"pending": [parsed.id]}
    [cause] = raised.value.causes
    assert isinstance(cause, DeliveryError) and str(status) in str(cause)


def test_retry_after_is_passed_on(client: httpx.Client, target: Target, event: JobEvent) -> None:
    target.replies.append((429, b"slow down", {"Retry-After": "42"}))
    with pytest.raises(TargetsPending) as raised:
        notify(client, [NotifyTarget.parse(target.url)], event)
    assert raised.value.retry_after_s == 42


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_another_4xx_is_a_permanent_rejection_with_status_and_body(
    client: httpx.Client, target: Target, event: JobEvent, status: int
) -> None:
    target.replies.append((status, b"no such hook", {}))
    with pytest.raises(TargetsRejected) as raised:
        notify(client, [NotifyTarget.parse(target.url)], event)
    assert isinstance(raised.value, PermanentError)
    assert f"HTTP {status}" in str(raised.value) and "no such hook" in str(raised.value)


def test_a_closed_port_is_retried_and_the_url_never_shows(
    client: httpx.Client, event: JobEvent
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook?key=SECRET-KEY"
    with pytest.raises(TargetsPending) as raised:
        notify(client, [NotifyTarget.parse(url)], event)
    assert "connection failed" in str(raised.value)
    assert "SECRET-KEY" not in str(raised.value) and "/hook" not in str(raised.value)


def test_one_refusal_does_not_stop_the_other_targets(
    client: httpx.Client, target: Target, event: JobEvent
) -> None:
    refused = NotifyTarget.parse(f"{target.url}/refused")
    fine = NotifyTarget.parse(f"{target.url}/fine")
    target.statuses.extend([404, 200])
    with pytest.raises(TargetsRejected) as raised:
        notify(client, [refused, fine], event)
    assert raised.value.pending == [refused.id]
    assert [r["path"] for r in target.received] == ["/hook/refused", "/hook/fine"]


def test_target_ids_are_stable_and_descriptions_hide_secrets() -> None:
    url = "wecom+https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc-secret"
    first, second = NotifyTarget.parse(url), NotifyTarget.parse(url)
    assert first.id == second.id != NotifyTarget.parse(url + "x").id
    assert first.describe() == f"wecom:qyapi.weixin.qq.com#{first.id}"
    assert "abc-secret" not in repr(first)
    with pytest.raises(ConfigError):
        NotifyTarget.parse("teams+https://example.com/hook")
    with pytest.raises(ConfigError):
        NotifyTarget.parse("ftp://example.com/hook")


def chat(target: Target, kind: str, query: str = "") -> NotifyTarget:
    return NotifyTarget.parse(f"{kind}+{target.url}{query}")


def failed_event() -> Event:
    return parse(FAILED_JOB)[0]


def test_wecom_gets_markdown_with_job_tag_state_code_and_message(
    client: httpx.Client, target: Target
) -> None:
    target.replies.append((200, b'{"errcode":0,"errmsg":"ok"}', {}))
    notify(client, [chat(target, "wecom", "?key=k")], failed_event())
    [request] = target.received
    assert request["path"] == "/hook?key=k"
    body = json.loads(request["body"])
    assert body["msgtype"] == "markdown"
    content = body["markdown"]["content"]
    for text in ("jfailed", "Transcode", "Failed", "InputFileNotExist", "input file does not"):
        assert text in content


def test_wecom_rate_limit_is_retried_and_other_errcodes_refused(
    client: httpx.Client, target: Target
) -> None:
    target.replies.append((200, b'{"errcode":45009,"errmsg":"api freq out of limit"}', {}))
    with pytest.raises(TargetsPending):
        notify(client, [chat(target, "wecom")], failed_event())
    target.replies.append((200, b'{"errcode":93000,"errmsg":"invalid webhook url"}', {}))
    with pytest.raises(TargetsRejected):
        notify(client, [chat(target, "wecom")], failed_event())


def test_dingtalk_is_signed_with_its_secret_taken_out_of_the_url(
    client: httpx.Client, target: Target, event: JobEvent
) -> None:
    target.replies.append((200, b'{"errcode":0,"errmsg":"ok"}', {}))
    notify(client, [chat(target, "dingtalk", "?access_token=tok&secret=SEC123")], event)
    [request] = target.received
    query = parse_qs(urlsplit(request["path"]).query)
    assert query["access_token"] == ["tok"] and "secret" not in query
    stamp = query["timestamp"][0]
    expected = hmac.new(b"SEC123", f"{stamp}\nSEC123".encode(), hashlib.sha256).digest()
    assert query["sign"] == [base64.b64encode(expected).decode()]
    body = json.loads(request["body"])
    assert body["msgtype"] == "markdown"
    assert "output/hello.mp3" in body["markdown"]["text"]


def test_feishu_is_signed_in_the_body(
    client: httpx.Client, target: Target, event: JobEvent
) -> None:
    target.replies.append((200, b'{"code":0,"msg":"success"}', {}))
    notify(client, [chat(target, "feishu", "?secret=FS")], event)
    body = json.loads(target.received[0]["body"])
    key = f"{body['timestamp']}\nFS".encode()
    assert body["sign"] == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert body["msg_type"] == "text" and "Tts" in body["content"]["text"]
    target.replies.append((200, b'{"code":19021,"msg":"sign match fail"}', {}))
    with pytest.raises(TargetsRejected):
        notify(client, [chat(target, "lark", "?secret=wrong")], event)


def test_slack_gets_text(client: httpx.Client, target: Target, event: JobEvent) -> None:
    target.replies.append((200, b"ok", {}))
    notify(client, [chat(target, "slack")], event)
    text = json.loads(target.received[0]["body"])["text"]
    assert "j707f4864f86811ecb90d0b03267ce0e5" in text and "Success" in text
    assert "code:" not in text  # no failure details on success


WORKFLOW_FAILED = b"""<Response><EventName>WorkflowFinish</EventName><WorkflowExecution>
<RunId>i166ee19017b011eda8a5525400c540df</RunId><State>Failed</State>
<WorkflowId>w1b4ffd6900a343c3a2fe5b92b1fb7ff6</WorkflowId><WorkflowName>test</WorkflowName>
<CreateTime>2022-08-09 14:54:17+0800</CreateTime>
<Object>input/demo.mp4</Object></WorkflowExecution></Response>"""

REVIEW_FAILED = json.dumps(
    {
        "code": 4001,
        "message": "image download failed",
        "data": {"event": "ReviewImage", "trace_id": "tr42", "url": "https://b.example/a.jpg"},
    }
).encode()


def test_every_kind_of_event_is_sent_whole_and_summed_up_from_its_own_fields(
    client: httpx.Client, target: Target
) -> None:
    [run] = parse(WORKFLOW_FAILED)
    [review] = parse(REVIEW_FAILED)
    assert isinstance(run, WorkflowEvent) and isinstance(review, ModerationEvent)
    for ev in (run, review):
        notify(client, [NotifyTarget.parse(target.url)], ev)
    webhooks = target.received[:]
    assert [r["body"] for r in webhooks] == [
        json.dumps(ev.to_dict(), ensure_ascii=False).encode() for ev in (run, review)
    ]
    assert [{k.lower(): v for k, v in r["headers"].items()}["webhook-id"] for r in webhooks] == [
        "WorkflowFinish:i166ee19017b011eda8a5525400c540df:Failed",
        "ReviewImage:tr42:Failed",
    ]

    target.replies.extend([(200, b"ok", {})] * 2)
    for ev in (run, review):
        notify(client, [chat(target, "slack")], ev)
    run_text, review_text = (json.loads(r["body"])["text"] for r in target.received[2:])
    # A run is named by its RunId; it has no code or message of its own to report.
    assert run_text.startswith("*CI WorkflowFinish Failed: i166ee19017b011eda8a5525400c540df*")
    assert "code:" not in run_text
    assert review_text.startswith("*CI ReviewImage Failed: tr42*")
    assert "code: 4001" in review_text and "message: image download failed" in review_text


def test_a_targets_secrets_are_its_url_its_tokens_and_its_signing_secret() -> None:
    wecom = NotifyTarget.parse(
        "wecom+https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY0123456789"
    )
    assert "KEY0123456789" in wecom.secrets()
    assert "send" not in wecom.secrets()  # a short path part is not a token
    hook = NotifyTarget.parse("https://example.com/hooks/tok3n-0123456789abcdef?x=1")
    assert "tok3n-0123456789abcdef" in hook.secrets()
    assert "hooks" not in hook.secrets()
    feishu = NotifyTarget.parse(
        "feishu+https://open.feishu.cn/open-apis/bot/v2/hook/ID?secret=SEC1234"
    )
    assert "SEC1234" in feishu.secrets()
    assert hook.secrets()[0] == hook.url  # longest first: the whole URL goes before its parts


def test_each_target_tried_is_heard_with_its_status_answer_and_time(
    client: httpx.Client, target: Target, event: JobEvent
) -> None:
    target.replies.append((404, b"no such hook", {}))
    heard: list[Delivery] = []
    refused = NotifyTarget.parse(target.url)
    unreachable = NotifyTarget.parse(f"http://127.0.0.1:{free_port()}/hook")
    with pytest.raises(TargetsRejected):
        notify(client, [refused, unreachable], event, on_result=heard.append)
    first, second = heard
    assert (first.target, first.result, first.status, first.error) == (
        refused,
        "refused",
        404,
        None,
    )
    assert first.answer == "no such hook"
    assert 0 <= first.seconds < 5
    assert (second.result, second.status, second.answer) == ("failed", None, "")
    assert second.error == "connection failed (ConnectError)"
    assert not second.may_have_arrived  # never connected: the target cannot have it


def test_a_target_that_takes_the_request_and_never_answers_may_have_it(event: JobEvent) -> None:
    # The answer lost (a cut link, a hung target): trying again may repeat the event, under
    # the same webhook-id, and the delivery says so.
    with socket.create_server(("127.0.0.1", 0)) as server:
        got: list[bytes] = []

        def take() -> None:
            conn, _ = server.accept()
            with conn:
                got.append(conn.recv(65536))
                time.sleep(2)

        taker = threading.Thread(target=take)
        taker.start()
        heard: list[Delivery] = []
        url = f"http://127.0.0.1:{server.getsockname()[1]}/hook"
        with httpx.Client(timeout=0.5) as client, pytest.raises(TargetsPending):
            notify(client, [NotifyTarget.parse(url)], event, on_result=heard.append)
        taker.join()
    assert got and got[0].startswith(b"POST /hook")
    [delivery] = heard
    assert (delivery.result, delivery.status) == ("failed", None)
    assert delivery.error == "timed out (ReadTimeout)"
    assert delivery.may_have_arrived
