"""Local stand-ins for the services cicb's actions talk to: CI's /jobs API and S3."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

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
    answers with the (status, body) pairs it is given, then with ``SUBMITTED``."""

    endpoint: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[int, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self) -> tuple[int, bytes]:
        with self.lock:
            return self.answers.pop(0) if self.answers else (200, SUBMITTED)
