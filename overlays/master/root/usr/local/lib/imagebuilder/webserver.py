"""The dashboard's HTTP server: read-only, GET only, and every connection ends by itself.

A thread per connection (ThreadingHTTPServer), so a connection must never hold its thread for long: the
request has one deadline and a size cap, each write of the reply a timeout, and each listening address at
most MAX_CONNECTIONS connections. HTTP/1.0: one request per connection. What is served is the caller's:
`serve` takes the function that answers a GET and the function that counts what happened to each
connection (HTTP_EVENTS, shown under "http" in /api/stats).
"""

from __future__ import annotations

import contextlib
import http.server
import io
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, cast

MAX_CONNECTIONS = 64   # per listening address; a browser opens six at most
REQUEST_SECONDS = 5.0  # for the whole request line and headers, however slowly they come
WRITE_SECONDS = 10.0   # for each of the reply's two writes (headers, body): a client that does not read
MAX_REQUEST = 16384    # request line and headers; a GET has no body, and 16 KiB leaves room for cookies
HTTP_EVENTS = ("served", "timeout", "too_large", "evicted", "busy", "broken")
_IP_FREEBIND = 15  # Linux: bind to the LAN address even before the interface has it
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n"


class Refused(Exception):
    """A request we stop reading; the argument is its counter under "http" in /api/stats."""


class _Ended(Exception):
    """The request stopped before its end: the client left, or was evicted. Nothing to answer."""


class _RequestReader(io.RawIOBase):
    """The socket's bytes, within one deadline and one size cap for the whole request.

    A socket timeout alone starts again with every byte, so a client sending one byte every few
    seconds (slowloris) would hold its thread for ever."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = time.monotonic() + REQUEST_SECONDS
        self.left = MAX_REQUEST

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Refused("timeout")
        if self.left <= 0:
            raise Refused("too_large")
        self.sock.settimeout(remaining)
        try:
            count = self.sock.recv_into(buffer, min(len(buffer), self.left))
        except TimeoutError:
            raise Refused("timeout") from None
        if count == 0:
            # Only reached before the request's end (the headers' blank line stops the reading):
            # a cut-short request is not answered, as http.server would with what it has.
            raise _Ended
        self.left -= count
        return count


# A GET's answer from its path (with the query): status, Content-Type, body.
Answer = Callable[[str], tuple[int, str, bytes]]
Note = Callable[[str], None]


def handler_for(answer: Answer, note: Note) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "imagebuilder-collector"

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # replaced: left open, it would keep the socket open after finish()
            self.rfile = io.BufferedReader(_RequestReader(self.connection))

        def handle(self) -> None:
            try:
                super().handle()
            except Refused as e:
                note(str(e))
            except _Ended:
                pass

        def parse_request(self) -> bool:
            ok = super().parse_request()
            # The request is in: the connection is no longer one to evict, and has its reply's timeout.
            cast(_Server, self.server).request_read(self.request)
            self.connection.settimeout(WRITE_SECONDS)
            return ok

        def do_GET(self) -> None:
            self.reply(*answer(self.path))

        def reply(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy",
                             "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
            try:
                self.end_headers()
                self.wfile.write(body)
            except TimeoutError:
                note("timeout")
                raise  # http.server closes the connection
            note("served")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per poll would fill the journal

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    """One listening address, with at most MAX_CONNECTIONS connections.

    When full, a new connection takes the place of the oldest one still sending its request: a real
    client's request follows its connection within milliseconds, a slow attacker's never comes, so
    slow clients cannot keep real ones out. Only when every connection has sent its request (and
    waits for its reply, a bounded time) is a new one turned away, at once, with a 503."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: under attack connections come in bursts

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler], note: Note) -> None:
        self.note = note
        self.guard = threading.Lock()
        self.open: set[socket.socket] = set()
        self.reading: dict[socket.socket, None] = {}  # open and still sending their request, oldest first
        super().__init__(address, handler)

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.guard:
            if len(self.open) >= MAX_CONNECTIONS and not self._evict_oldest_reader():
                self.note("busy")
                self._turn_away(request)
                return
            self.open.add(request)
            self.reading[request] = None
        try:
            super().process_request(request, client_address)  # starts its thread
        except Exception:
            self.forget(request)
            raise

    def _evict_oldest_reader(self) -> bool:
        oldest = next(iter(self.reading), None)
        if oldest is None:
            return False
        self.open.discard(oldest)
        del self.reading[oldest]
        # Its thread wakes from recv with nothing and ends. The socket is not closed yet: its thread
        # takes it off these books, under this lock, before closing it (process_request_thread).
        with contextlib.suppress(OSError):
            oldest.shutdown(socket.SHUT_RDWR)
        self.note("evicted")
        return True

    def _turn_away(self, request: socket.socket) -> None:
        with contextlib.suppress(OSError):
            request.setblocking(False)  # never wait on a client we are refusing
            request.send(_BUSY)
        self.shutdown_request(request)

    def request_read(self, request: socket.socket) -> None:
        with self.guard:
            self.reading.pop(request, None)

    def forget(self, request: socket.socket) -> None:
        with self.guard:
            self.open.discard(request)
            self.reading.pop(request, None)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn's, but off the books before the socket is closed, so that an eviction never
        # shuts down a socket whose descriptor number was given to another.
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.forget(request)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-reply is its own business; anything else is a bug: keep its traceback.
        if isinstance(sys.exc_info()[1], OSError):
            self.note("broken")
        else:
            super().handle_error(request, client_address)


def serve(addresses: list[str], port: int, answer: Answer, note: Note) -> list[_Server]:
    """A server on each address, each in a thread of its own; the servers, so that tests can stop them."""
    servers = []
    for address in addresses:
        server = _Server((address, port), handler_for(answer, note), note)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    return servers
