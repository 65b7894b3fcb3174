"""A step waiting for its retry, run now: the confirmation, then the send (with the CSRF
token), as ``cicb attempts retry-now``."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.attempts import NotWaiting, job_of
from pipeline.console.auth import log
from pipeline.console.state import console_of
from pipeline.console.web import checked_form, not_found, render


def confirm_retry_now(request: Request) -> Response:
    task_id = request.path_params["task_id"]
    try:
        waiting = console_of(request).queries.waiting(task_id)
    except (NotWaiting, LookupError) as exc:
        return not_found(request, str(exc))
    return render(request, "retry_now.html", waiting=waiting, job_id=job_of(waiting.args))


async def retry_now(request: Request) -> Response:
    await checked_form(request)
    task_id = request.path_params["task_id"]
    try:
        waiting = await run_in_threadpool(console_of(request).queries.retry_now, task_id)
    except (NotWaiting, LookupError) as exc:
        return not_found(request, str(exc))
    log.info("console.step_retried_now", task=waiting.task, task_id=task_id)
    job_id = job_of(waiting.args)
    where = f"/jobs/{quote(job_id, safe='')}" if job_id else "/"
    query = urlencode({"sent": waiting.task})
    return RedirectResponse(f"{where}?{query}", status_code=303)
