"""The queue and workflow APIs of the CI stand-in (``tests.peers.serve_ci``).

``GET /queue``, ``/picqueue``, ``/docqueue``, ``/asrqueue``, ``/ai_queue`` list a bucket's
queues of that kind (``QueueList``, paged by ``pageNumber``/``pageSize``, with
``TotalCount``); ``PUT /<kind path>/<id>`` updates one (``Name``, ``State``,
``NotifyConfig``) and answers it under ``Queue``. ``GET /workflow`` and
``PUT /workflow/<id>`` do the same for workflows (``MediaWorkflowList``, ``MediaWorkflow``).
An unknown id is CI's 404 ``NoSuchQueue``/``NoSuchWorkflow``.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any
from xml.etree import ElementTree

# The bucket the queue tests look after, as CICB_CI_BUCKETS names it.
BUCKET = "media-1250000000"
REGION = "ap-guangzhou"

# The path of each kind of queue, as the SDK calls it.
QUEUE_PATHS = {
    "media": "queue",
    "pic": "picqueue",
    "doc": "docqueue",
    "asr": "asrqueue",
    "ai": "ai_queue",
}
KIND_OF_PATH = {path: kind for kind, path in QUEUE_PATHS.items()}


def ci_env(endpoint: str, *, public_url: str | None = None) -> dict[str, str]:
    """The settings that point cicb at the stand-in on ``endpoint`` for ``BUCKET``."""
    env = {
        "CICB_CI_BUCKETS": f"{BUCKET}:{REGION}",
        "CICB_COS_SECRET_ID": "AKIDtest",
        "CICB_COS_SECRET_KEY": "test-secret-key-never-logged",
        "CICB_CI_ENDPOINT": f"http://{endpoint}",
    }
    return env if public_url is None else {**env, "CICB_PUBLIC_URL": public_url}


def ci_queue(
    queue_id: str,
    *,
    name: str | None = None,
    url: str | None = None,
    events: str = "TaskFinish,WorkflowFinish",
    state: str = "Active",
    notify: str = "On",
    result_format: str = "XML",
) -> dict[str, Any]:
    """A queue as CI's queue list gives it; without ``url`` its notifications are off."""
    config: dict[str, Any] = {"State": "Off"}
    if url is not None:
        config = {
            "Url": url,
            "Type": "Url",
            "Event": events,
            "State": notify,
            "ResultFormat": result_format,
        }
    return {
        "QueueId": queue_id,
        "Name": name or f"queue-{queue_id[-6:]}",
        "State": state,
        "NotifyConfig": config,
        "MaxSize": "10000",
        "MaxConcurrent": "10",
        "CreateTime": "2024-03-01T10:00:00+08:00",
        "UpdateTime": "2024-03-01T10:00:00+08:00",
    }


def ci_workflow(
    workflow_id: str, *, queue_id: str, url: str | None, tags: tuple[str, ...] = ("Transcode",)
) -> dict[str, Any]:
    """A workflow as ``GET /workflow`` gives it: a Start node on ``queue_id`` (with its own
    NotifyConfig when ``url`` is given) and one node per Tag."""
    start_input: dict[str, Any] = {"QueueId": queue_id, "ObjectPrefix": "in/"}
    if url is not None:
        start_input["NotifyConfig"] = {
            "Url": url,
            "Type": "Url",
            "Event": "TaskFinish,WorkflowFinish",
            "State": "On",
            "ResultFormat": "XML",
        }
    nodes: dict[str, Any] = {"Start": {"Type": "Start", "Input": start_input}}
    deps: dict[str, str] = {}
    for n, tag in enumerate(tags):
        nodes[f"{tag}_{1581665960536 + n}"] = {
            "Type": tag,
            "Operation": {"TemplateId": "t0123456789abcdef0123456789abcdef"},
        }
        deps[f"{tag}_{1581665960536 + n}"] = "End"
    deps["Start"] = ",".join(k for k in nodes if k != "Start")
    return {
        "Name": f"workflow-{workflow_id[-6:]}",
        "WorkflowId": workflow_id,
        "State": "Active",
        "CreateTime": "2024-03-01T10:00:00+08:00",
        "UpdateTime": "2024-03-01T10:00:00+08:00",
        "Topology": {"Dependencies": deps, "Nodes": nodes},
    }


def read_request(body: bytes) -> dict[str, Any]:
    """An update's ``<Request>`` as nested dicts (a repeated element is a list)."""
    return _node(ElementTree.fromstring(body))


def _node(element: ElementTree.Element) -> Any:
    children = list(element)
    if not children:
        return element.text
    out: dict[str, Any] = {}
    for child in children:
        value = _node(child)
        if child.tag in out:
            prior = out[child.tag]
            out[child.tag] = [*prior, value] if isinstance(prior, list) else [prior, value]
        else:
            out[child.tag] = value
    return out


def send_callback(job: dict[str, Any], config: dict[str, Any], body_xml: bytes) -> int:
    """POST the TaskFinish callback of ``job`` where ``config`` (a NotifyConfig) points, as
    CI does when a job ends: XML, or JSON with ``ResultFormat`` JSON. Returns the status."""
    if config.get("ResultFormat", "XML").upper() == "JSON":
        body = json.dumps({"EventName": "TaskFinish", "JobsDetail": job}).encode()
        content_type = "application/json"
    else:
        body, content_type = body_xml, "application/xml"
    request = urllib.request.Request(
        config["Url"], data=body, method="POST", headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return int(answer.status)
