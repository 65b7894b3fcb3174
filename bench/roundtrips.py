"""Counting the worker's Redis round trips: a TCP proxy between the worker and Valkey.

A round trip is what the client writes before it reads the answer: a command, a pipeline,
a script, or a BRPOP that waits for a message. The proxy counts one each time the client
writes after the server last answered (or first), on every connection, so it needs no help
from the code it measures. Pushed messages (pub/sub) answer nothing and count nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class RoundTripProxy:
    """Forwards 127.0.0.1:``port`` to ``target_port``, counting round trips."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._count = 0
        self._closed = False

    @property
    def round_trips(self) -> int:
        with self._lock:
            return self._count

    def __enter__(self) -> RoundTripProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # One flag per connection: True once the client wrote and the server has not yet
            # answered.
            waiting = [False]
            threading.Thread(target=self._pump, args=(client, server, waiting, True)).start()
            threading.Thread(target=self._pump, args=(server, client, waiting, False)).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, waiting: list[bool], asks: bool
    ) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    if asks and not waiting[0]:
                        self._count += 1
                    waiting[0] = asks
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
