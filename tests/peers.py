"""Local stand-ins for the services cicb talks to: CI's job APIs (submit, list, query), and
its queue and workflow APIs (``tests.ci_queues``).

``CiServer`` holds what the server answers; ``serve_ci`` runs it on a loopback port for the
real SDK, which ``CosConfig`` sends there (``pipeline.actions.cos.cos_client`` with an
endpoint), naming the bucket in the Host header as for CI itself.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from tests.ci_queues import KIND_OF_PATH, read_request, send_callback

NEW_JOB_ID = "j8d9b7e2a5c3411ed9e4b525400a3c59f"

# What CI answers to POST /jobs: the job as submitted, in State Submitted.
SUBMITTED = f"""<Response><JobsDetail><Code>Success</Code><Message/>
<JobId>{NEW_JOB_ID}</JobId><Tag>Transcode</Tag><State>Submitted</State>
<CreationTime>2022-06-30T19:40:02+0800</CreationTime><StartTime>-</StartTime>
<EndTime>-</EndTime><QueueId>p2242ab62c7c94486915508540933a2c6</QueueId>
<Input><Region>ap-chongqing</Region><Bucket>test-1234567890</Bucket>
<Object>input/demo.mp4</Object></Input>
<Operation><TemplateId>t1460606b9752148c4ab182f55163ba7cd</TemplateId>
<Output><Region>ap-chongqing</Region><Bucket>test-1234567890</Bucket>
<Object>out/demo.${{ext}}</Object></Output><UserData>order-42</UserData>
<JobLevel>0</JobLevel></Operation></JobsDetail></Response>""".encode()


@dataclass
class CiServer:
    """A local stand-in for ``<bucket>.ci.<region>.myqcloud.com``: records each request and
    answers a submitted job with the (status, body) pairs it is given, then with
    ``SUBMITTED``; lists and queries (``serve_ci``) from ``jobs`` and ``runs`` (by bucket),
    or with the error in ``refusals`` (by queue id, workflow id or bucket) every time, or
    those in ``failures`` once each.

    With ``creates_jobs``, a submission CI answers with success creates a job of its own id
    (in ``jobs``, where its list finds it) and is answered with it; the next ``hangups``
    submissions create their job and close the connection without an answer (a timeout
    after sending, as the client sees it)."""

    endpoint: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[int, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    refusals: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    # Answers given once each, before the list is answered (by queue id or workflow id).
    failures: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    creates_jobs: bool = False
    hangups: int = 0
    # Queues by (bucket, kind: media, pic, doc, asr, ai) and workflows by bucket, as
    # tests.ci_queues.ci_queue and ci_workflow make them; updates change them in place.
    queues: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    workflows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def updates(self) -> list[dict[str, Any]]:
        """The queue and workflow updates received (``PUT``)."""
        with self.lock:
            return [r for r in self.requests if r["method"] == "PUT"]

    def finish(self, bucket: str, job: dict[str, Any]) -> int:
        """End ``job`` (added to ``jobs``) and send its callback where its queue's
        NotifyConfig points, as CI does; returns the receiver's status."""
        with self.lock:
            self.jobs.setdefault(bucket, []).append(job)
            config = next(
                q["NotifyConfig"]
                for (b, _), queues in self.queues.items()
                for q in queues
                if b == bucket and q["QueueId"] == job["QueueId"]
            )
        if config.get("State") != "On":
            raise AssertionError(f"queue {job['QueueId']} sends no callback: {config}")
        return send_callback(job, config, job_callback(job))

    def submissions(self) -> list[dict[str, Any]]:
        """The submit-job requests received (``POST /jobs``)."""
        with self.lock:
            return [r for r in self.requests if r["method"] == "POST"]

    def lists(self) -> list[dict[str, Any]]:
        """The list requests received (``GET /jobs`` and ``GET /workflowexecution``)."""
        with self.lock:
            paths = ("/jobs", "/workflowexecution")
            return [r for r in self.requests if r["method"] == "GET" and r["path"] in paths]

    def next_answer(self) -> tuple[int, bytes]:
        with self.lock:
            return self.answers.pop(0) if self.answers else (200, SUBMITTED)

    def submit(self, host: str, body: bytes) -> tuple[int, bytes] | None:
        """Answer a submission (``creates_jobs``): the job created, or None to hang up."""
        request = ElementTree.fromstring(body)
        created = datetime.now(CI_TZ)
        job = {
            "Code": "Success",
            "Message": None,
            "JobId": "j" + uuid.uuid4().hex,
            "Tag": request.findtext("Tag"),
            "State": "Submitted",
            "CreationTime": ci_time(created),
            "StartTime": "-",
            "EndTime": "-",
            "QueueId": request.findtext("QueueId"),
            "Input": {"Object": request.findtext("Input/Object")},
            "Operation": {
                "TemplateId": request.findtext("Operation/TemplateId"),
                "UserData": request.findtext("Operation/UserData"),
            },
        }
        with self.lock:
            if self.answers:
                return self.answers.pop(0)
            self.jobs.setdefault(_bucket_of(host), []).append(job)
            if self.hangups:
                self.hangups -= 1
                return None
        return 200, _response(to_xml("JobsDetail", job))


# -- CI's list and query APIs ---------------------------------------------------------------

CI_TIME = "%Y-%m-%dT%H:%M:%S%z"
CI_TZ = timezone(timedelta(hours=8))
MAX_PAGE_SIZE = 100


def ci_time(moment: datetime) -> str:
    return moment.astimezone(CI_TZ).strftime(CI_TIME)


def ci_error(status: int, code: str, message: str) -> tuple[int, bytes]:
    """An answer as CI words its errors: no ``<Resource>``, unlike COS."""
    body = (
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
        "<RequestId>NjJiZDYwYTFfNjUzYTYyNjRfZjEwZl8xMmZhYzY5</RequestId></Error>"
    )
    return status, body.encode()


def to_xml(name: str, value: Any) -> str:
    """A node as the SDK reads it back: a list is the element repeated, None is empty."""
    if isinstance(value, list):
        return "".join(to_xml(name, item) for item in value)
    if isinstance(value, dict):
        return f"<{name}>{''.join(to_xml(k, v) for k, v in value.items())}</{name}>"
    if value is None:
        return f"<{name}/>"
    return f"<{name}>{escape(str(value))}</{name}>"


def ci_job(
    job_id: str,
    *,
    bucket: str,
    region: str,
    queue_id: str,
    tag: str,
    state: str,
    created: datetime,
    ended: datetime | None,
    code: str | None = None,
) -> dict[str, Any]:
    """A job as CI's job list and query answer it (``EndTime`` is ``-`` while it runs)."""
    failed = state == "Failed"
    return {
        "Code": code or ("InternalError" if failed else "Success"),
        "Message": "transcode worker lost" if failed else None,
        "JobId": job_id,
        "Tag": tag,
        "State": state,
        "CreationTime": ci_time(created),
        "StartTime": ci_time(created + timedelta(seconds=1)),
        "EndTime": ci_time(ended) if ended else "-",
        "QueueId": queue_id,
        "QueueType": "Common",
        "Input": {"Region": region, "Bucket": bucket, "Object": f"in/{job_id}.mp4"},
        "Operation": {
            "TemplateId": "t0123456789abcdef0123456789abcdef",
            "Output": {"Region": region, "Bucket": bucket, "Object": f"out/{job_id}.mp4"},
            "UserData": f"order-{job_id}",
            "JobLevel": "0",
        },
    }


def job_callback(job: dict[str, Any]) -> bytes:
    """The TaskFinish callback CI would have sent for ``job``."""
    return _response("<EventName>TaskFinish</EventName>" + to_xml("JobsDetail", job))


def _created(node: dict[str, Any]) -> datetime:
    return datetime.strptime(node.get("CreationTime") or node["CreateTime"], CI_TIME)


def _bucket_of(host: str) -> str:
    return host.split(".ci.", 1)[0]


class CiApi:
    """The list and query APIs of ``CiServer``, answering from its ``jobs`` and ``runs``."""

    def __init__(self, ci: CiServer) -> None:
        self.ci = ci

    def get(self, host: str, path: str, query: dict[str, str]) -> tuple[int, bytes]:
        bucket = _bucket_of(host)
        if path == "/jobs":
            return self.list_jobs(bucket, query)
        if path.startswith("/jobs/"):
            ids = path.removeprefix("/jobs/").split(",")
            found = [j for j in self.ci.jobs.get(bucket, []) if j["JobId"] in ids]
            missing = [i for i in ids if i not in {j["JobId"] for j in found}]
            return 200, _response(to_xml("JobsDetail", found) + to_xml("NonExistJobIds", missing))
        if path == "/workflowexecution":
            return self.list_runs(bucket, query)
        if path.lstrip("/") in KIND_OF_PATH or path == "/workflow":
            refusal = self.refusal("", bucket)
            if refusal is not None:
                return refusal
        if path.lstrip("/") in KIND_OF_PATH:
            found = self.ci.queues.get((bucket, KIND_OF_PATH[path.lstrip("/")]), [])
            return self._numbered(found, query, "QueueList")
        if path == "/workflow":
            return self._numbered(self.ci.workflows.get(bucket, []), query, "MediaWorkflowList")
        if path.startswith("/workflowexecution/"):
            run_id = path.rsplit("/", 1)[1]
            runs = [r for r in self.ci.runs.get(bucket, []) if r["RunId"] == run_id]
            return 200, _response(to_xml("WorkflowExecution", runs))
        return ci_error(404, "NoSuchResource", f"no {path}")

    def put(self, host: str, path: str, body: bytes) -> tuple[int, bytes]:
        """Update a queue (``PUT /<kind path>/<id>``) or a workflow (``PUT /workflow/<id>``)."""
        bucket = _bucket_of(host)
        refusal = self.refusal("", bucket)
        if refusal is not None:
            return refusal
        kind_path, _, ident = path.strip("/").partition("/")
        request = read_request(body)
        if kind_path == "workflow":
            workflow = request.get("MediaWorkflow") or {}
            for node in self.ci.workflows.get(bucket, []):
                if node["WorkflowId"] == ident:
                    node.update(workflow)
                    return 200, _response(to_xml("MediaWorkflow", node))
            return ci_error(404, "NoSuchWorkflow", f"no workflow {ident}")
        if kind_path not in KIND_OF_PATH:
            return ci_error(404, "NoSuchResource", f"no {path}")
        config = request.get("NotifyConfig") or {}
        if not request.get("Name") or not request.get("State"):
            return ci_error(400, "InvalidParameter", "Name and State are required")
        if config.get("State") == "On" and not all(config.get(k) for k in ("Url", "Type", "Event")):
            return ci_error(400, "InvalidParameter", "Url, Type and Event are required when On")
        for node in self.ci.queues.get((bucket, KIND_OF_PATH[kind_path]), []):
            if node["QueueId"] == ident:
                node.update(Name=request["Name"], State=request["State"], NotifyConfig=config)
                return 200, _response(to_xml("Queue", node))
        return ci_error(404, "NoSuchQueue", f"no queue {ident}")

    def _numbered(
        self, nodes: list[dict[str, Any]], query: dict[str, str], name: str
    ) -> tuple[int, bytes]:
        """A page by ``pageNumber`` and ``pageSize`` (at most 100), with ``TotalCount``."""
        number, size = int(query.get("pageNumber") or 1), int(query.get("pageSize") or 10)
        if not 1 <= size <= MAX_PAGE_SIZE:
            return ci_error(400, "InvalidParameter", f"pageSize must be 1 to {MAX_PAGE_SIZE}")
        page = nodes[(number - 1) * size : number * size]
        counts = {"TotalCount": len(nodes), "PageNumber": number, "PageSize": size}
        return 200, _response(to_xml(name, page) + "".join(to_xml(k, v) for k, v in counts.items()))

    def list_jobs(self, bucket: str, query: dict[str, str]) -> tuple[int, bytes]:
        if "tag" not in query:
            return ci_error(400, "InvalidParameter", "tag is required")
        queue = query.get("queueId")
        refusal = self.refusal(queue or "", bucket)
        if refusal is not None:
            return refusal
        jobs = [
            j
            for j in self.ci.jobs.get(bucket, [])
            if j["Tag"] == query["tag"] and (queue is None or j["QueueId"] == queue)
        ]
        return self._page(jobs, query, "JobsDetail", lambda j: j)

    def list_runs(self, bucket: str, query: dict[str, str]) -> tuple[int, bytes]:
        workflow = query.get("workflowId", "")
        refusal = self.refusal(workflow, bucket)
        if refusal is not None:
            return refusal
        runs = [r for r in self.ci.runs.get(bucket, []) if r["WorkflowId"] == workflow]

        def entry(run: dict[str, Any]) -> dict[str, Any]:
            # The list gives each run's summary, with CreationTime, and no nodes.
            keys = ("RunId", "WorkflowId", "State", "Object")
            return {**{k: run[k] for k in keys if k in run}, "CreationTime": run["CreateTime"]}

        return self._page(runs, query, "WorkflowExecutionList", entry)

    def refusal(self, name: str, bucket: str) -> tuple[int, bytes] | None:
        if self.ci.failures.get(name):
            return self.ci.failures[name].pop(0)
        return self.ci.refusals.get(name) or self.ci.refusals.get(bucket)

    def _page(
        self,
        nodes: list[dict[str, Any]],
        query: dict[str, str],
        name: str,
        shown: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> tuple[int, bytes]:
        size = int(query.get("size") or 10)
        if not 1 <= size <= MAX_PAGE_SIZE:
            return ci_error(400, "InvalidParameter", f"size must be 1 to {MAX_PAGE_SIZE}")
        states = query.get("states") or "All"
        if states != "All":
            nodes = [n for n in nodes if n["State"] in states.split(",")]
        start: datetime | None
        end: datetime | None
        try:
            start = datetime.strptime(query["startCreationTime"], CI_TIME)
            end = datetime.strptime(query["endCreationTime"], CI_TIME)
        except KeyError:
            start = end = None
        except ValueError:
            return ci_error(400, "InvalidParameter", "bad creation time")
        if start is not None and end is not None:
            nodes = [n for n in nodes if start <= _created(n) <= end]
        nodes = sorted(nodes, key=_created, reverse=query.get("orderByTime") != "Asc")
        offset = int(query.get("nextToken") or 0)
        page = nodes[offset : offset + size]
        more = offset + size < len(nodes)
        token = to_xml("NextToken", str(offset + size) if more else None)
        return 200, _response(to_xml(name, [shown(n) for n in page]) + token)


def _response(inner: str) -> bytes:
    return f"<Response>{inner}</Response>".encode()


@contextmanager
def serve_ci(
    ci: CiServer | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[CiServer]:
    """A ``CiServer`` on ``host:port`` (a free loopback port by default) answering the
    submit-job API (``POST /jobs``, with its ``answers``) and the list and query APIs (from
    its ``jobs`` and ``runs``)."""
    server = ThreadingHTTPServer((host, port), BaseHTTPRequestHandler)
    ci = CiServer(endpoint="") if ci is None else ci
    ci.endpoint = f"{host}:{server.server_address[1]}"
    api = CiApi(ci)
    served: CiServer = ci

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = dict(parse_qsl(url.query, keep_blank_values=True))
            host = self.headers.get("Host", "")
            with served.lock:
                served.requests.append(
                    {"method": "GET", "path": url.path, "query": query, "host": host}
                )
                status, answer = api.get(host, url.path, query)
            self.answer(status, answer)

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            host = self.headers.get("Host", "")
            with served.lock:
                served.requests.append(
                    {"method": "PUT", "path": self.path, "host": host, "body": body}
                )
                status, answer = api.put(host, urlsplit(self.path).path, body)
            self.answer(status, answer)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with served.lock:
                served.requests.append(
                    {"method": "POST", "path": self.path, "headers": self.headers, "body": body}
                )
            if not served.creates_jobs:
                self.answer(*served.next_answer())
                return
            answer = served.submit(self.headers.get("Host", ""), body)
            if answer is None:
                self.close_connection = True  # no answer at all
                return
            self.answer(*answer)

        def answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-ci-request-id", "NjJiZDYwYTFfNjUzYTYyNjRfZjEwZl8xMmZhYzY5")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
