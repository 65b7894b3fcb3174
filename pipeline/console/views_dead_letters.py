"""Dead letters: the list, one letter, its body, and replay and purge with their confirmations."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.brokers.deadletters import NotFound
from pipeline.console.auth import log
from pipeline.console.forms import BadInput, Selection
from pipeline.console.queries import pretty_body
from pipeline.console.state import console_of
from pipeline.console.web import (
    bad_input,
    checked_form,
    download,
    extension,
    not_found,
    plain,
    render,
)


def dead_letters(request: Request) -> Response:
    params = dict(request.query_params)
    try:
        selection = Selection.of(params)
    except BadInput:
        selection = Selection(everything=True)
    groups, shown, read, total = console_of(request).queries.dead_letter_view(selection)
    return render(
        request,
        "dead_letters.html",
        groups=groups,
        letters=shown,
        read=read,
        total=total,
        selection=selection,
        filtered=not selection.everything,
        replayed=params.get("replayed"),
        purged=params.get("purged"),
    )


def dead_letter(request: Request) -> Response:
    letter_id = request.path_params["letter_id"]
    try:
        letter = console_of(request).queries.dead_letter(letter_id)
    except NotFound as exc:
        return not_found(request, str(exc))
    envelope = letter.envelope()
    body = pretty_body(envelope.body) if envelope else None
    return render(request, "dead_letter.html", letter=letter, envelope=envelope, body=body)


def dead_letter_body(request: Request) -> Response:
    letter_id = request.path_params["letter_id"]
    try:
        letter = console_of(request).queries.dead_letter(letter_id)
    except NotFound as exc:
        return not_found(request, str(exc))
    envelope = letter.envelope()
    if envelope is None:
        return not_found(request, f"dead letter {letter_id} holds no callback body")
    return download(envelope.body, f"dead-letter-{letter.id}.{extension(envelope.body)}")


def confirm_replay(request: Request) -> Response:
    try:
        selection = Selection.of(dict(request.query_params))
    except BadInput as exc:
        return bad_input(request, exc)
    count = console_of(request).queries.count_dead_letters(selection)
    return render(
        request,
        "confirm.html",
        action="replay",
        what=selection.describe(),
        count=count,
        fields=selection.fields(),
    )


async def replay(request: Request) -> Response:
    form = plain(await checked_form(request))
    try:
        selection = Selection.of(form)
    except BadInput as exc:
        return bad_input(request, exc)
    count = await run_in_threadpool(console_of(request).queries.replay, selection)
    if selection.id is not None and not count:
        return not_found(request, str(NotFound(selection.id)))
    log.info("console.dead_letters_replayed", count=count, selection=selection.fields())
    return RedirectResponse(f"/dead-letters?replayed={count}", status_code=303)


def confirm_purge(request: Request) -> Response:
    _, total = console_of(request).queries.dead_letters.peek(0)
    return render(
        request,
        "confirm.html",
        action="purge",
        what="every dead letter",
        count=total,
        fields={},
    )


async def purge(request: Request) -> Response:
    await checked_form(request)
    count = await run_in_threadpool(console_of(request).queries.purge)
    log.info("console.dead_letters_purged", count=count)
    return RedirectResponse(f"/dead-letters?purged={count}", status_code=303)
