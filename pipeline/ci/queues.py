"""The queues and workflows of the buckets cicb looks after, and a verdict on each.

CI has five kinds of queue, each with its own pair of APIs (``GET /queue`` and
``PUT /queue/<id>``, ``/picqueue``, ``/docqueue``, ``/asrqueue``, ``/ai_queue``); each queue
has a ``NotifyConfig`` (``State`` On/Off, ``Type`` Url or TDMQ, ``Url``, ``Event``
``TaskFinish,WorkflowFinish``, ``ResultFormat``). A workflow (``GET /workflow``) may carry its
own ``NotifyConfig`` in its Start node, which then overrides its queue's.

A queue's verdict (``verdict``):

- ``connected``: its URL is this receiver's (``CICB_PUBLIC_URL``, or, without one, any URL
  that carries a token the receiver accepts) with an accepted token, and it sends every
  event its kind has;
- ``missing events``: connected, but without TaskFinish (or WorkflowFinish where the kind
  has it);
- ``wrong token``: this receiver's URL with a token it refuses (every callback a 401), or,
  without ``CICB_PUBLIC_URL``, a ``/callbacks`` URL whose token it refuses;
- ``elsewhere``: another URL, or a message queue (TDMQ);
- ``off``: notifications off, or no URL.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from qcloud_cos import CosS3Client

from pipeline.actions.cos import as_list, ci_call, ci_clients
from pipeline.settings import Settings

TASK_FINISH: Final = "TaskFinish"
WORKFLOW_FINISH: Final = "WorkflowFinish"
PAGE_SIZE: Final = 100
MAX_PAGES: Final = 100  # 10,000 queues of one kind in one bucket: more is a broken answer

CONNECTED: Final = "connected"
MISSING_EVENTS: Final = "missing events"
WRONG_TOKEN: Final = "wrong token"
ELSEWHERE: Final = "elsewhere"
OFF: Final = "off"
WORKFLOW: Final = "workflow"


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of CI queue: the SDK's calls for it and the events its queues send."""

    name: str
    list_call: str
    update_call: str
    events: tuple[str, ...]
    # CI's job list (GET /jobs, ci_list_media_jobs) has this kind's jobs: reconcile reads it.
    lists_jobs: bool
    # The Tags every queue of this kind runs, listed even before a callback names one.
    tags: tuple[str, ...] = ()


KINDS: Final = (
    Kind(
        "media", "ci_get_media_queue", "ci_update_media_queue", (TASK_FINISH, WORKFLOW_FINISH), True
    ),
    Kind(
        "pic",
        "ci_get_media_pic_queue",
        "ci_update_media_pic_queue",
        (TASK_FINISH, WORKFLOW_FINISH),
        True,
        ("PicProcess",),
    ),
    Kind("doc", "ci_get_doc_queue", "ci_update_doc_queue", (TASK_FINISH,), False),
    Kind("asr", "ci_get_asr_queue", "ci_update_asr_queue", (TASK_FINISH,), False),
    Kind("ai", "ci_get_ai_queue", "ci_update_ai_queue", (TASK_FINISH, WORKFLOW_FINISH), True),
)
KIND_BY_NAME: Final = {k.name: k for k in KINDS}
WORKFLOW_EVENTS: Final = (TASK_FINISH, WORKFLOW_FINISH)


@dataclass(frozen=True, slots=True)
class Notify:
    """A ``NotifyConfig`` as CI gives it."""

    state: str | None = None
    type: str | None = None
    url: str | None = None
    events: tuple[str, ...] = ()
    result_format: str | None = None

    @classmethod
    def from_ci(cls, node: Any) -> Notify:
        if not isinstance(node, Mapping):
            return cls()
        events = _text(node.get("Event")) or ""
        return cls(
            state=_text(node.get("State")),
            type=_text(node.get("Type")),
            url=_text(node.get("Url")),
            events=tuple(e.strip() for e in events.split(",") if e.strip()),
            result_format=_text(node.get("ResultFormat")),
        )


@dataclass(frozen=True, slots=True)
class Queue:
    """A queue of one kind, or a workflow with its own callback (kind ``workflow``), in one
    bucket. ``raw`` is CI's node for it (a workflow's update sends it back whole)."""

    bucket: str
    region: str
    kind: str
    queue_id: str
    name: str
    state: str | None
    notify: Notify
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # A workflow's queue (its Start node's QueueId) and the Tags of its nodes.
    workflow_queue: str | None = None
    workflow_tags: tuple[str, ...] = ()

    @property
    def events(self) -> tuple[str, ...]:
        """The events this queue can send."""
        return WORKFLOW_EVENTS if self.kind == WORKFLOW else KIND_BY_NAME[self.kind].events


@dataclass(frozen=True, slots=True)
class QueueReport:
    """A queue and where its notifications go."""

    queue: Queue
    verdict: str

    def to_json(self) -> dict[str, Any]:
        q = self.queue
        return {
            "bucket": q.bucket,
            "region": q.region,
            "kind": q.kind,
            "queue_id": q.queue_id,
            "name": q.name,
            "state": q.state,
            "notify": q.notify.state,
            "url": redact_token(q.notify.url),
            "events": list(q.notify.events),
            "format": q.notify.result_format,
            "verdict": self.verdict,
        }


class CiQueues:
    """The queue and workflow APIs of one CI account, through an SDK client per region."""

    def __init__(self, client_for: Callable[[str], CosS3Client]) -> None:
        self.client_for = client_for

    @classmethod
    def from_settings(cls, settings: Settings) -> CiQueues:
        """Raises ``ConfigError`` without the COS keys or with a bad endpoint."""
        return cls(ci_clients(settings, purpose="cicb ci reads CI's queues"))

    def queues(self, bucket: str, region: str) -> Iterator[Queue]:
        """Every queue of every kind in ``bucket``, in any state. Raises CiRefused,
        CiUnavailable."""
        client = self.client_for(region)
        for kind in KINDS:
            call = functools.partial(
                getattr(client, kind.list_call), Bucket=bucket, State="All", PageSize=PAGE_SIZE
            )
            for node in _pages(call, "QueueList"):
                yield Queue(
                    bucket=bucket,
                    region=region,
                    kind=kind.name,
                    queue_id=_text(node.get("QueueId")) or "",
                    name=_text(node.get("Name")) or "",
                    state=_text(node.get("State")),
                    notify=Notify.from_ci(node.get("NotifyConfig")),
                    raw=node,
                )

    def workflows(self, bucket: str, region: str) -> Iterator[Queue]:
        """Every workflow of ``bucket`` (with its own callback or not)."""
        client = self.client_for(region)
        page = functools.partial(client.ci_get_workflow, Bucket=bucket, PageSize=PAGE_SIZE)
        for node in _pages(page, "MediaWorkflowList"):
            nodes = _mapping(_mapping(node.get("Topology")).get("Nodes"))
            start = _mapping(_mapping(nodes.get("Start")).get("Input"))
            tags = (_text(_mapping(n).get("Type")) for name, n in nodes.items() if name != "Start")
            yield Queue(
                bucket=bucket,
                region=region,
                kind=WORKFLOW,
                queue_id=_text(node.get("WorkflowId")) or "",
                name=_text(node.get("Name")) or "",
                state=_text(node.get("State")),
                notify=Notify.from_ci(start.get("NotifyConfig")),
                raw=node,
                workflow_queue=_text(start.get("QueueId")),
                workflow_tags=tuple(sorted({t for t in tags if t and t != "End"})),
            )

    def update(self, queue: Queue, notify: Mapping[str, str]) -> None:
        """Set ``queue``'s ``NotifyConfig`` to ``notify``, keeping its name and state (a
        workflow is sent back whole, with the new config in its Start node)."""
        client = self.client_for(queue.region)
        if queue.kind == WORKFLOW:
            body = {"MediaWorkflow": with_workflow_notify(queue.raw, notify)}
            ci_call(
                lambda: client.ci_update_workflow(
                    Bucket=queue.bucket, WorkflowId=queue.queue_id, Body=body
                )
            )
            return
        request = {
            "Name": queue.name,
            "QueueID": queue.queue_id,
            "State": queue.state or "Active",
            "NotifyConfig": dict(notify),
        }
        call = getattr(client, KIND_BY_NAME[queue.kind].update_call)
        ci_call(lambda: call(Bucket=queue.bucket, QueueId=queue.queue_id, Request=request))


def with_workflow_notify(workflow: Mapping[str, Any], notify: Mapping[str, str]) -> dict[str, Any]:
    """The workflow's update body (Name, State, Topology) with ``notify`` in its Start node."""
    topology = dict(_mapping(workflow.get("Topology")))
    nodes = dict(_mapping(topology.get("Nodes")))
    start = dict(_mapping(nodes.get("Start")))
    start["Input"] = {**_mapping(start.get("Input")), "NotifyConfig": dict(notify)}
    nodes["Start"] = start
    topology["Nodes"] = nodes
    return {"Name": workflow.get("Name"), "State": workflow.get("State"), "Topology": topology}


def queue_reports(settings: Settings, ci: CiQueues | None = None) -> list[QueueReport]:
    """Every queue of ``CICB_CI_BUCKETS`` and every workflow there with its own callback,
    with its verdict. Raises ConfigError (no keys), CiRefused, CiUnavailable."""
    ci = ci or CiQueues.from_settings(settings)
    tokens = settings.accepted_tokens()
    reports = []
    for bucket, region in settings.bucket_regions:
        found = [
            *ci.queues(bucket, region),
            *(w for w in ci.workflows(bucket, region) if w.notify.url),
        ]
        for queue in found:
            reports.append(
                QueueReport(queue, verdict(queue, tokens=tokens, public_url=settings.public_url))
            )
    return reports


def verdict(queue: Queue, *, tokens: tuple[str, ...], public_url: str | None) -> str:
    """Where ``queue``'s notifications go, as this receiver sees it (see the module)."""
    notify = queue.notify
    if (notify.state or "").lower() != "on" or not notify.url:
        return OFF
    if (notify.type or "Url").lower() != "url":
        return ELSEWHERE
    token_ok = any(
        hmac.compare_digest(t.encode(), tok.encode())
        for t in url_tokens(notify.url)
        for tok in tokens
    )
    ours = same_endpoint(notify.url, public_url) if public_url else token_ok
    if not ours:
        looks_like_cicb = urlsplit(notify.url).path.rstrip("/").endswith("/callbacks")
        if public_url is None and looks_like_cicb and url_tokens(notify.url):
            return WRONG_TOKEN
        return ELSEWHERE
    if not token_ok:
        return WRONG_TOKEN
    if not set(queue.events) <= set(notify.events):
        return MISSING_EVENTS
    return CONNECTED


def url_tokens(url: str) -> list[str]:
    return parse_qs(urlsplit(url).query).get("token", [])


def same_endpoint(url: str, public_url: str) -> bool:
    """Whether ``url`` is ``public_url`` (scheme, host, port and path; the query aside)."""
    a, b = urlsplit(url), urlsplit(public_url)
    return (a.scheme.lower(), a.netloc.lower(), a.path.rstrip("/")) == (
        b.scheme.lower(),
        b.netloc.lower(),
        b.path.rstrip("/"),
    )


def redact_token(url: str | None) -> str | None:
    """``url`` with its token's value hidden, for what cicb prints."""
    if not url or "token=" not in url:
        return url
    head, _, query = url.partition("?")
    parts = [p if not p.startswith("token=") else "token=***" for p in query.split("&")]
    return f"{head}?{'&'.join(parts)}"


def _pages(page: Callable[..., Any], key: str) -> Iterator[dict[str, Any]]:
    """Every node under ``key`` of ``page(PageNumber=1)``, 2, ... up to ``TotalCount``."""
    seen = 0
    for number in range(1, MAX_PAGES + 1):
        answer = ci_call(functools.partial(page, PageNumber=number))
        items = as_list(answer.get(key)) if isinstance(answer, Mapping) else []
        yield from items
        seen += len(items)
        total = _text(answer.get("TotalCount")) if isinstance(answer, Mapping) else None
        if (
            not items
            or len(items) < PAGE_SIZE
            or (total and total.isdigit() and seen >= int(total))
        ):
            return


def _mapping(node: Any) -> Mapping[str, Any]:
    return node if isinstance(node, Mapping) else {}


def _text(node: Any) -> str | None:
    return node.strip() or None if isinstance(node, str) else None
