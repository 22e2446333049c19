"""A delaying, counting HTTP proxy in front of an S3 endpoint, and the server processes of the
benchmark (a moto S3 server and the proxy, each in its own process, on 127.0.0.1 only).

The proxy forwards every request (method, path, query, headers, body) to the upstream server
unchanged, sleeps a fixed delay once per request (an S3 round trip in the same region is about
20 ms; moto on loopback answers in about a millisecond), keeps client connections alive
(HTTP/1.1) for the client's connection pool, and counts requests by kind:

========== ===========================================================
``LIST``   ``GET /bucket?list-type=2...`` (ListObjectsV2)
``GET-range`` ``GET /bucket/key`` with a ``Range`` header
``GET``    ``GET /bucket/key`` without one
``PUT``    ``PUT /bucket/key`` (PutObject)
``COPY``   ``PUT /bucket/key`` with ``x-amz-copy-source`` (CopyObject)
``HEAD``   ``HEAD`` of an object or bucket
``other``  anything else (bucket creation, deletes, POSTs, ListObjects v1)
========== ===========================================================

and by subject, from the object key (the copy source for a copy): ``image`` (``*.dcm`` files
and ``*-metadata/`` JSON), ``clinical`` (``*.json`` below a ``data`` folder), ``catalogue``
(the image catalogue's parts, ``catalogue/``, and their listing) or ``other`` (listings,
``config.json``, run reports).

Two paths are the proxy's own and are neither delayed nor forwarded nor counted:
``GET /__counts`` returns the counts as JSON and ``POST /__reset`` sets them to zero.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import socket
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

KINDS = ("LIST", "GET-range", "GET", "PUT", "COPY", "HEAD", "other")
SUBJECTS = ("image", "clinical", "catalogue", "other")
COUNTS_PATH = "/__counts"
RESET_PATH = "/__reset"

#: Hop-by-hop headers (RFC 9110 section 7.6.1) and ``Expect``, which the proxy answers itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)


def subject_of(key: str) -> str:
    """What an object key is about: ``image``, ``clinical`` or ``other``.

    Parameters
    ----------
    key : str
        Object key, without the bucket.

    Returns
    -------
    str
        ``catalogue`` for the catalogue's parts (``catalogue/``), ``image`` for DICOM files and
        metadata JSON (``*-metadata/`` folders), ``clinical`` for JSON files below a ``data``
        folder (raw uploads and the warehouse's copies), ``other`` for everything else.
    """
    lowered = key.lower()
    if key.startswith("catalogue/"):
        return "catalogue"
    if lowered.endswith(".dcm") or "-metadata/" in lowered:
        return "image"
    parts = key.split("/")
    if lowered.endswith(".json") and "data" in parts[:-1]:
        return "clinical"
    return "other"


def classify(method: str, target: str, headers) -> tuple[str, str]:
    """Kind and subject of one S3 request (path-style addressing).

    Parameters
    ----------
    method : str
        HTTP method.
    target : str
        Request target: path and query (``/bucket/key?x=y``).
    headers : Mapping
        Request headers (case-insensitive lookups, as `email.message.Message` gives).

    Returns
    -------
    tuple of str
        ``(kind, subject)``; see the module docstring for the kinds.
    """
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    _, _, key = parts.path.lstrip("/").partition("/")
    key = unquote(key)
    method = method.upper()
    if method == "GET":
        if not key:
            if "list-type" not in query:
                return "other", "other"
            prefix = query.get("prefix", [""])[0]
            return "LIST", "catalogue" if prefix.startswith("catalogue/") else "other"
        return ("GET-range" if headers.get("Range") else "GET"), subject_of(key)
    if method == "PUT":
        if not key:
            return "other", "other"
        source = headers.get("x-amz-copy-source")
        if source:
            source_key = unquote(source.split("?", 1)[0]).lstrip("/").partition("/")[2]
            return "COPY", subject_of(source_key)
        return "PUT", subject_of(key)
    if method == "HEAD":
        return "HEAD", subject_of(key) if key else "other"
    return "other", subject_of(key) if key else "other"


class RequestCounts:
    """Thread-safe counts of requests by kind, by subject and kind, and by response status,
    and of the client connections accepted (few connections means they were kept alive)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self._kinds: Counter[str] = Counter()
        self._subjects: dict[str, Counter[str]] = {s: Counter() for s in SUBJECTS}
        self._status: Counter[str] = Counter()
        self._connections = 0

    def reset(self) -> None:
        """Set every count to zero."""
        with self._lock:
            self._clear()

    def add(self, kind: str, subject: str) -> None:
        """Count one request."""
        with self._lock:
            self._kinds[kind] += 1
            self._subjects[subject][kind] += 1

    def answered(self, status: int) -> None:
        """Count one response status, by class (``2xx``...; ``failed`` when there was none)."""
        with self._lock:
            self._status[f"{status // 100}xx" if status else "failed"] += 1

    def connected(self) -> None:
        """Count one accepted client connection."""
        with self._lock:
            self._connections += 1

    def snapshot(self) -> dict:
        """The counts as a JSON-ready dict: ``total``, ``kinds``, ``subjects``, ``status`` and
        ``connections``."""
        with self._lock:
            return {
                "total": sum(self._kinds.values()),
                "kinds": {kind: self._kinds[kind] for kind in KINDS},
                "subjects": {
                    subject: {kind: n for kind, n in counts.items() if n}
                    for subject, counts in self._subjects.items()
                },
                "status": dict(self._status),
                "connections": self._connections,
            }


class DelayProxy(ThreadingHTTPServer):
    """The proxy server: one thread per client connection, connections kept alive.

    Parameters
    ----------
    upstream : str
        URL of the server to forward to (``http://127.0.0.1:port``).
    delay : float
        Seconds to sleep once per forwarded request.
    port : int
        Port to listen on, on 127.0.0.1 (0 picks a free one).
    sleep : callable
        How the delay is waited (``time.sleep``; tests give their own, to see it asked for).
    """

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, upstream: str, delay: float, port: int = 0, sleep=time.sleep):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.delay = delay
        self.sleep = sleep
        self.counts = RequestCounts()
        super().__init__(("127.0.0.1", port), _ProxyHandler)

    @property
    def url(self) -> str:
        """The proxy's own URL."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: DelayProxy

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._upstream: http.client.HTTPConnection | None = None
        self.server.counts.connected()

    def finish(self):
        super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_GET(self):
        if self.path == COUNTS_PATH:
            self._reply(200, json.dumps(self.server.counts.snapshot()).encode())
        else:
            self._forward()

    def do_POST(self):
        if self.path == RESET_PATH:
            self._read_body()
            self.server.counts.reset()
            self._reply(200, b"{}")
        else:
            self._forward()

    def do_PUT(self):
        self._forward()

    def do_HEAD(self):
        self._forward()

    def do_DELETE(self):
        self._forward()

    def _reply(self, status: int, body: bytes) -> None:
        head = (
            f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.wfile.write(head.encode("latin-1") + body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_upstream(self, body: bytes) -> http.client.HTTPResponse:
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.server.upstream, timeout=120)
                self._upstream.connect()
                self._upstream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._upstream.putrequest(
                    self.command, self.path, skip_host=True, skip_accept_encoding=True
                )
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self._upstream.putheader(name, value)
                if body or self.command in ("PUT", "POST"):
                    self._upstream.putheader("Content-Length", str(len(body)))
                self._upstream.endheaders(body or None)
                return self._upstream.getresponse()
            except (ConnectionError, http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _forward(self) -> None:
        counts = self.server.counts
        counts.add(*classify(self.command, self.path, self.headers))
        body = self._read_body()
        self.server.sleep(self.server.delay)
        try:
            response = self._send_upstream(body)
            payload = response.read()
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            counts.answered(0)
            message = f"proxy: upstream failed: {exc}".encode()
            self.close_connection = True
            self._raw_reply(502, "Bad Gateway", [("Content-Type", "text/plain")], message)
            return
        if response.will_close and self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        counts.answered(response.status)
        headers = [
            (name, value)
            for name, value in response.getheaders()
            if name.lower() not in _HOP_BY_HOP
            and (self.command == "HEAD" or name.lower() != "content-length")
        ]
        self._raw_reply(response.status, response.reason, headers, payload)

    def _raw_reply(self, status: int, reason: str, headers, payload: bytes) -> None:
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if self.command != "HEAD":
            lines.append(f"Content-Length: {len(payload)}")
            data = payload
        else:
            data = b""
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + data)


def read_counts(proxy_url: str) -> dict:
    """The proxy's request counts (see `RequestCounts.snapshot`)."""
    with urllib.request.urlopen(proxy_url + COUNTS_PATH, timeout=30) as response:
        return json.loads(response.read())


def reset_counts(proxy_url: str) -> None:
    """Set the proxy's request counts to zero."""
    request = urllib.request.Request(proxy_url + RESET_PATH, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


class ServerProcess:
    """A server running in a child process (its own interpreter and GIL) on 127.0.0.1.

    Use `start_moto` or `start_proxy`; stop it with `stop` or a ``with`` block.

    Attributes
    ----------
    url : str
        The server's URL.
    process : multiprocessing.Process
        The child process.
    """

    def __init__(self, target, *args, name: str):
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.process.start()
        child.close()
        self._pipe = parent
        if not parent.poll(60):
            self.stop()
            raise RuntimeError(f"{name} did not start within 60 s")
        self.url = parent.recv()

    def stop(self) -> None:
        """Tell the child to stop (closing the pipe), then wait for it; terminate it if needed."""
        self._pipe.close()
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_for_parent(pipe) -> None:
    # Returns when the parent says stop or goes away (the pipe's other end closes).
    with contextlib.suppress(EOFError):
        pipe.recv()


def _serve_moto(pipe) -> None:
    import logging

    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    # moto's S3 application alone: its multi-service dispatcher tries hundreds of host
    # patterns under one lock for every request, which would make it the bottleneck.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server(
        "127.0.0.1", 0, create_backend_app("s3"), True, request_handler=MotoRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="moto", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    pipe.send(f"http://{host}:{port}")
    _wait_for_parent(pipe)
    server.shutdown()


def _serve_proxy(pipe, upstream: str, delay: float) -> None:
    proxy = DelayProxy(upstream, delay)
    thread = threading.Thread(target=proxy.serve_forever, name="proxy", daemon=True)
    thread.start()
    pipe.send(proxy.url)
    _wait_for_parent(pipe)
    proxy.shutdown()
    proxy.server_close()


def start_moto() -> ServerProcess:
    """Start a moto S3 server on 127.0.0.1 in its own process.

    It serves moto's S3 application with werkzeug's threaded server, as ``ThreadedMotoServer``
    does, but without moto's multi-service dispatcher: that one matches every request against
    hundreds of host patterns under a single lock and would be the benchmark's bottleneck.
    """
    return ServerProcess(_serve_moto, name="moto-server")


def start_proxy(upstream: str, delay_ms: float) -> ServerProcess:
    """Start a `DelayProxy` in front of ``upstream`` in its own process.

    Parameters
    ----------
    upstream : str
        URL of the server to forward to.
    delay_ms : float
        Delay added to every request, in milliseconds.
    """
    return ServerProcess(_serve_proxy, upstream, delay_ms / 1000.0, name="delay-proxy")
