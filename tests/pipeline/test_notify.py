"""notify against a real HTTP server: signed webhooks, chat formats, retry or give up."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from pipeline.actions.notify import TargetsPending, TargetsRejected, notify
from pipeline.actions.signing import webhook_secret_bytes
from pipeline.actions.targets import Target as NotifyTarget
from pipeline.errors import ConfigError, DeliveryError, PermanentError, TransientError
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
def event() -> dict[str, Any]:
    [parsed] = parse((SAMPLES / "tts_success.xml").read_bytes())
    data = parsed.to_dict()
    data["user_data"] = "回调 ✓"
    return data


def test_a_plain_url_gets_the_event_signed_the_standard_webhooks_way(
    client: httpx.Client, target: Target, event: dict[str, Any]
) -> None:
    notify(
        client, [NotifyTarget.parse(target.url)], event, webhook_key=webhook_secret_bytes(SECRET)
    )

    [request] = target.received
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == "TaskFinish:j707f4864f86811ecb90d0b03267ce0e5:Success"
    # The reference verifier accepts it, and rejects it with another secret.
    assert Webhook(SECRET).verify(request["body"], headers) == event
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(request["body"], headers)


def test_without_a_secret_the_webhook_is_sent_unsigned(
    client: httpx.Client, target: Target, event: dict[str, Any]
) -> None:
    notify(client, [NotifyTarget.parse(target.url)], event)
    [request] = target.received
    assert "webhook-signature" not in {k.lower() for k in request["headers"]}
    assert json.loads(request["body"]) == event


def test_a_bad_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        webhook_secret_bytes("not-a-whsec")
    with pytest.raises(ConfigError):
        webhook_secret_bytes("whsec_%%%")


@pytest.mark.parametrize("status", [503, 500, 429, 408])
def test_a_retryable_status_leaves_the_target_pending(
    client: httpx.Client, target: Target, event: dict[str, Any], status: int
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


def test_retry_after_is_passed_on(
    client: httpx.Client, target: Target, event: dict[str, Any]
) -> None:
    target.replies.append((429, b"slow down", {"Retry-After": "42"}))
    with pytest.raises(TargetsPending) as raised:
        notify(client, [NotifyTarget.parse(target.url)], event)
    assert raised.value.retry_after_s == 42


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_another_4xx_is_a_permanent_rejection_with_status_and_body(
    client: httpx.Client, target: Target, event: dict[str, Any], status: int
) -> None:
    target.replies.append((status, b"no such hook", {}))
    with pytest.raises(TargetsRejected) as raised:
        notify(client, [NotifyTarget.parse(target.url)], event)
    assert isinstance(raised.value, PermanentError)
    assert f"HTTP {status}" in str(raised.value) and "no such hook" in str(raised.value)


def test_a_closed_port_is_retried_and_the_url_never_shows(
    client: httpx.Client, event: dict[str, Any]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook?key=SECRET-KEY"
    with pytest.raises(TargetsPending) as raised:
        notify(client, [NotifyTarget.parse(url)], event)
    assert "connection failed" in str(raised.value)
    assert "SECRET-KEY" not in str(raised.value) and "/hook" not in str(raised.value)


def test_one_refusal_does_not_stop_the_other_targets(
    client: httpx.Client, target: Target, event: dict[str, Any]
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


def failed_event() -> dict[str, Any]:
    return parse(FAILED_JOB)[0].to_dict()


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
    client: httpx.Client, target: Target, event: dict[str, Any]
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
    client: httpx.Client, target: Target, event: dict[str, Any]
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


def test_slack_gets_text(client: httpx.Client, target: Target, event: dict[str, Any]) -> None:
    target.replies.append((200, b"ok", {}))
    notify(client, [chat(target, "slack")], event)
    text = json.loads(target.received[0]["body"])["text"]
    assert "j707f4864f86811ecb90d0b03267ce0e5" in text and "Success" in text
    assert "code:" not in text  # no failure details on success
