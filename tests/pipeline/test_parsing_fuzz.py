"""A fuzz run of the parser: mutated sample callbacks and random bytes, for a fixed time.

Whatever it is fed, ``parse`` returns events or raises one of its own ``ParseError``s, never
anything else, and never a ParseError made of an exception it did not expect (its last line of
defence). The budget is ``CICB_FUZZ_SECONDS`` (default 10); the seed is printed so a failure
replays.
"""

from __future__ import annotations

import json
import os
import random
import time

from pipeline.errors import ParseError
from pipeline.parsing.decoding import event_from_dict
from pipeline.parsing.reader import parse
from tests.support import PARSE_CRASH, SAMPLES

# Every sample, the rule samples (tests/samples/rules) and the malformed ones among them too.
CORPUS = [p.read_bytes() for p in sorted(SAMPLES.rglob("*")) if p.is_file()]
TOKENS = [
    b"<",
    b">",
    b"</",
    b"/>",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b":",
    b",",
    b"&",
    b"&amp;",
    b"<!DOCTYPE x>",
    b"<![CDATA[",
    b"\xef\xbb\xbf",
    b"\x00",
    b"\xff\xfe",
    b"null",
    b"<JobsDetail>",
    b'"JobsDetail":',
    b"<EventName>TaskFinish</EventName>",
    b"1e999",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a byte
            buf[min(at, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:  # insert a token
            buf[at:at] = rng.choice(TOKENS)
        elif op == 2:  # delete a run
            del buf[at : at + rng.randint(1, 64)]
        elif op == 3:  # duplicate a run (deeper nesting, repeated nodes)
            end = min(len(buf), at + rng.randint(1, 256))
            buf[at:at] = buf[at:end] * rng.randint(1, 20)
        elif op == 4:  # truncate
            del buf[at:]
        else:  # splice another callback in
            other = rng.choice(CORPUS)
            start = rng.randrange(len(other))
            buf[at:at] = other[start : start + rng.randint(1, 512)]
    return bytes(buf)


def test_parser_survives_a_timed_fuzz_run() -> None:
    seed = int(os.environ.get("CICB_FUZZ_SEED", time.time_ns() % 2**32))
    budget_s = float(os.environ.get("CICB_FUZZ_SECONDS", "10"))
    rng = random.Random(seed)
    runs = parsed = refused = 0
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        if rng.random() < 0.1:
            body = rng.randbytes(rng.randint(0, 2048))
        else:
            body = mutate(rng, rng.choice(CORPUS))
        try:
            events = parse(body)
        except ParseError as exc:
            if exc.reason.startswith(PARSE_CRASH):
                raise AssertionError(f"seed {seed}: {exc} for {body[:300]!r}") from exc
            refused += 1
        except Exception as exc:
            raise AssertionError(f"seed {seed}: {type(exc).__name__} for {body[:300]!r}") from exc
        else:
            assert isinstance(events, list) and events, (seed, body[:300])
            for event in events:
                wire = json.loads(json.dumps(event.to_dict()))
                assert event_from_dict(wire) == event, (seed, body[:300])
            parsed += 1
        runs += 1
    print(f"fuzz: seed={seed} runs={runs} parsed={parsed} refused={refused}")
    assert runs > 100 and parsed > 0 and refused > 0
