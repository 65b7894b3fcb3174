"""Read Redis from a test host: ``python -m tests.cluster.probe URL COMMAND [ARG...]`` prints
the answer as JSON (a ``sentinel://`` URL is followed to the primary, as cicb does)."""

from __future__ import annotations

import json
import sys

from pipeline.endpoints import RedisEndpoint


def main() -> None:
    url, *command = sys.argv[1:]
    client = RedisEndpoint.parse(url).client(timeout_s=5)
    answer = client.execute_command(*command)

    def plain(value: object) -> object:
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    print(json.dumps(plain(answer)))


if __name__ == "__main__":
    main()
