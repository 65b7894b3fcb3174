"""A TCP proxy that delays every chunk, each way: this kernel has no ``netem``.

``python -m tests.cluster.delay_proxy --listen HOST:PORT --to HOST:PORT --delay-ms 200
--jitter-ms 50``: each chunk read from one side is written to the other ``delay`` plus or
minus ``jitter`` later, in the order it was read (a later chunk never overtakes an earlier
one, as on a real link). SIGUSR1 turns the delay on and off (``--off``: off at first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal


class Delay:
    """The delay now: on or off (SIGUSR1 switches it)."""

    def __init__(self, delay_s: float, jitter_s: float, *, on: bool) -> None:
        self.delay_s, self.jitter_s, self.on = delay_s, jitter_s, on

    def switch(self) -> None:
        self.on = not self.on
        print(f"delay {'on' if self.on else 'off'}", flush=True)

    def now(self) -> float:
        return self.delay_s + random.uniform(-self.jitter_s, self.jitter_s) if self.on else 0.0


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay) -> None:
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await chunks.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if data is None:
                break
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    last = 0.0
    try:
        while data := await reader.read(65536):
            last = max(loop.time() + delay.now(), last)
            chunks.put_nowait((last, data))
    except ConnectionError:
        pass
    chunks.put_nowait((last, None))
    with contextlib.suppress(ConnectionError):
        await sender
    writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--delay-ms", type=float, default=200)
    parser.add_argument("--jitter-ms", type=float, default=50)
    parser.add_argument("--off", action="store_true")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    to_host, to_port = args.to.rsplit(":", 1)
    delay = Delay(args.delay_ms / 1000, args.jitter_ms / 1000, on=not args.off)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, delay.switch)

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(to_host, int(to_port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer, delay), pipe(up_reader, writer, delay))

    server = await asyncio.start_server(connected, host, int(port))
    print("proxy ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
