"""Where a CI queue's callbacks go (``verdict``) and the change ``cicb ci connect`` plans."""

from __future__ import annotations

import pytest

from pipeline.ci.connect import KEPT, SET, UNCHANGED, callback_url, plan
from pipeline.ci.queues import (
    Notify,
    Queue,
    QueueReport,
    redact_token,
    verdict,
    with_workflow_notify,
)
from pipeline.errors import ConfigError

PUBLIC = "https://cb.example.com/callbacks"
TOKENS = ("tok-new", "tok-old")


def queue(kind: str = "media", **notify: object) -> Queue:
    return Queue(
        bucket="media-1250000000",
        region="ap-guangzhou",
        kind=kind,
        queue_id=f"p{kind}",
        name=kind,
        state="Active",
        notify=Notify(**notify),  # type: ignore[arg-type]
    )


ON = {"state": "On", "type": "Url", "events": ("TaskFinish", "WorkflowFinish")}


@pytest.mark.parametrize(
    ("notify", "public", "expected"),
    [
        ({**ON, "url": f"{PUBLIC}?token=tok-new"}, PUBLIC, "connected"),
        ({**ON, "url": f"{PUBLIC}/?token=tok-old"}, PUBLIC, "connected"),  # the older token
        ({**ON, "url": f"{PUBLIC}?token=typo"}, PUBLIC, "wrong token"),
        ({**ON, "url": PUBLIC}, PUBLIC, "wrong token"),
        ({**ON, "url": "https://old.example.com/callbacks?token=tok-new"}, PUBLIC, "elsewhere"),
        ({**ON, "url": "https://hooks.example.com/x"}, PUBLIC, "elsewhere"),
        ({**ON, "url": "https://any.example.com/callbacks?token=tok-new"}, None, "connected"),
        ({**ON, "url": "https://any.example.com/callbacks?token=typo"}, None, "wrong token"),
        ({**ON, "url": "https://hooks.example.com/x?token=theirs"}, None, "elsewhere"),
        ({**ON, "url": f"{PUBLIC}?token=tok-new", "state": "Off"}, PUBLIC, "off"),
        ({**ON, "url": None}, PUBLIC, "off"),
        ({**ON, "url": f"{PUBLIC}?token=tok-new", "type": "TDMQ"}, PUBLIC, "elsewhere"),
        (
            {**ON, "url": f"{PUBLIC}?token=tok-new", "events": ("TaskFinish",)},
            PUBLIC,
            "missing events",
        ),
    ],
)
def test_the_verdict_on_a_media_queue(
    notify: dict[str, object], public: str | None, expected: str
) -> None:
    assert verdict(queue(**notify), tokens=TOKENS, public_url=public) == expected


def test_a_kind_without_workflows_needs_task_finish_only() -> None:
    doc = queue(
        "doc", state="On", type="Url", url=f"{PUBLIC}?token=tok-new", events=("TaskFinish",)
    )
    assert verdict(doc, tokens=TOKENS, public_url=PUBLIC) == "connected"
    assert (
        verdict(
            queue("pic", **{**ON, "events": ("TaskFinish",), "url": f"{PUBLIC}?token=tok-new"}),
            tokens=TOKENS,
            public_url=PUBLIC,
        )
        == "missing events"
    )


def test_callback_url_puts_the_token_in_replacing_one_there() -> None:
    assert callback_url(PUBLIC, "t1") == f"{PUBLIC}?token=t1"
    assert callback_url(f"{PUBLIC}?a=1&token=old", "t 2") == f"{PUBLIC}?a=1&token=t+2"
    with pytest.raises(ConfigError):
        callback_url("cb.example.com/callbacks", "t1")


def test_redact_token_hides_only_the_token() -> None:
    assert redact_token(f"{PUBLIC}?a=1&token=secret") == f"{PUBLIC}?a=1&token=***"
    assert redact_token(PUBLIC) == PUBLIC and redact_token(None) is None


def report(q: Queue) -> QueueReport:
    return QueueReport(q, verdict(q, tokens=TOKENS, public_url=PUBLIC))


def test_plan_sets_what_is_not_connected_and_keeps_what_points_elsewhere() -> None:
    url = callback_url(PUBLIC, "tok-new")
    reports = [
        report(queue("media", **{**ON, "url": url, "result_format": "XML"})),
        report(queue("pic", **{**ON, "url": "https://hooks.example.com/x"})),
        report(queue("doc")),
        report(queue("ai", **{**ON, "url": f"{PUBLIC}?token=tok-old"})),
    ]
    actions = {c.report.queue.kind: c.action for c in plan(reports, url=url)}
    # The ai queue is connected with the older token: moved to the current one.
    assert actions == {"media": UNCHANGED, "pic": KEPT, "doc": SET, "ai": SET}
    replaced = plan(reports, url=url, replace=True, queue_ids=("ppic",))
    assert [(c.report.queue.kind, c.action) for c in replaced] == [("pic", SET)]
    assert replaced[0].notify == {
        "State": "On",
        "Type": "Url",
        "Url": url,
        "Event": "TaskFinish,WorkflowFinish",
        "ResultFormat": "XML",
    }
    doc = next(
        c for c in plan(reports, url=url, result_format="json") if c.report.queue.kind == "doc"
    )
    assert doc.notify["Event"] == "TaskFinish" and doc.notify["ResultFormat"] == "JSON"
    # Another format is a change even on a connected queue.
    assert plan(reports[:1], url=url, result_format="json")[0].action == SET
    with pytest.raises(ConfigError, match="pnope"):
        plan(reports, url=url, queue_ids=("pnope",))


def test_a_workflows_update_keeps_its_topology_with_the_new_start_config() -> None:
    workflow = {
        "Name": "wf",
        "State": "Active",
        "WorkflowId": "w1",
        "CreateTime": "x",
        "Topology": {
            "Dependencies": {"Start": "Transcode_1", "Transcode_1": "End"},
            "Nodes": {
                "Start": {
                    "Type": "Start",
                    "Input": {"QueueId": "p1", "NotifyConfig": {"Url": "old"}},
                },
                "Transcode_1": {"Type": "Transcode"},
            },
        },
    }
    body = with_workflow_notify(workflow, {"Url": "new"})
    assert set(body) == {"Name", "State", "Topology"}
    assert body["Topology"]["Nodes"]["Start"]["Input"] == {
        "QueueId": "p1",
        "NotifyConfig": {"Url": "new"},
    }
    assert body["Topology"]["Dependencies"] == workflow["Topology"]["Dependencies"]
    assert workflow["Topology"]["Nodes"]["Start"]["Input"]["NotifyConfig"] == {"Url": "old"}
