"""The peer: the receiver most people write, Flask under gunicorn calling ``ingest.delay``."""

import hmac
import os

from celery import Celery
from flask import Flask, request

celery = Celery("peer", broker=os.environ["CICB_BROKER_URL"])
app = Flask(__name__)
TOKEN = os.environ["CICB_RECEIVER_TOKEN"].encode()


@celery.task(name="cicb.ingest")
def ingest(body: str) -> None:
    """Declared so ``delay`` can be called; the peer's messages are only counted."""


@app.post("/callbacks")
def callbacks() -> tuple[dict[str, str], int]:
    given = request.headers.get("X-Callback-Token", "").encode()
    if not hmac.compare_digest(given, TOKEN):
        return {"error": "missing or wrong token"}, 401
    ingest.delay(request.get_data().decode("utf-8", "replace"))
    return {"status": "accepted"}, 200
