"""A loopback server that speaks the OpenAI Chat Completions wire format, for tests and
benchmarks: scripted replies, injected faults, request counting.

    with OracleServer() as server:
        server.script(lambda body: "[Better Answer] hi [End]")
        ...  # point the client at server.url

Run standalone (benchmarks): ``python tests/oracle_server.py --port 8011 --latency exp:0.2``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    """An injected failure instead of (or before) a normal reply."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # raw body to send (garbage)
    delay: float = 0.0  # seconds to wait before answering (past the client's timeout)
    cut: bool = False  # promise more bytes than are sent, then close
    text: str | None = None  # after the delay, reply normally with this text
    echo_headers: bool = False  # the error message repeats the request's headers (a proxy's
    # debug page does this), the Authorization header with its key included


Reply = str | Fault
Script = Callable[[dict[str, Any]], Reply]


def default_reply(body: dict[str, Any]) -> str:
    """Answers every rtune prompt in the marker format, derived from the user's text."""
    user = body["messages"][-1]["content"]
    digest = hashlib.sha1(user.encode()).hexdigest()[:8]
    if "[Merged Instruction]" in user:
        return f"[Merged Instruction] merged task {digest} [End]"
    if "[New Instruction]" in user:
        return (f"Critique: too easy.\n[New Instruction] harder task {digest} [End]\n"
                f"[New Answer] detailed answer {digest} [End]")
    if "[Better Answer]" in user:
        return f"The answer lacks detail.\n[Better Answer] better answer {digest} [End]"
    return f"reply {digest}"


def request_key(body: dict[str, Any]) -> str:
    """The same content hash rtune uses for its call cache."""
    payload = {k: body.get(k) for k in ("messages", "model", "temperature", "top_p",
                                        "max_tokens")}
    if body.get("stop") is not None:
        payload["stop"] = body["stop"]
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class OracleServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 latency: Callable[[], float] | None = None, slots: int | None = None):
        self._script: Script = default_reply
        self.latency = latency
        # like a served model's batch slots: at most ``slots`` requests in their latency at
        # once, the rest queue (None: no limit)
        self.slots = threading.Semaphore(slots) if slots else None
        self.requests: list[dict[str, Any]] = []
        self.completed: list[str] = []  # keys of requests answered with a full 200 reply
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body are two writes: with Nagle on, the body waits for the client's
            # delayed ACK (~40 ms), a latency no real API server adds
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if len(raw) < length:  # the client died mid-request: nothing arrived to answer
                    self.close_connection = True
                    return
                body = json.loads(raw or b"{}")
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found"}})
                    return
                with server.lock:
                    server.requests.append(body)
                    script = server._script
                if server.latency is not None:
                    if server.slots is not None:
                        with server.slots:
                            time.sleep(server.latency())
                    else:
                        time.sleep(server.latency())
                reply = script(body)
                if isinstance(reply, Fault):
                    if reply.delay:
                        time.sleep(reply.delay)
                    if reply.cut:
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", "5000")
                        self.end_headers()
                        self.wfile.write(b'{"id": "chatcmpl-1", "choices": [{"mess')
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if reply.body is not None:
                        self._send(reply.status, reply.body, reply.headers)
                        return
                    if reply.status != 200:
                        message = f"injected {reply.status}"
                        if reply.echo_headers:  # Authorization first, as such pages do
                            headers = sorted(self.headers.items(),
                                             key=lambda kv: kv[0].lower() != "authorization")
                            message += "; request headers: " + "; ".join(
                                f"{k}: {v}" for k, v in headers)
                        error = {"error": {"message": message,
                                           "type": "server_error", "code": None}}
                        self._send(reply.status, error, reply.headers)
                        return
                    reply = reply.text or ""
                self._send(200, completion(body, reply))
                with server.lock:
                    server.completed.append(request_key(body))

            def _send(self, status: int, payload: Any, headers: dict | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 512
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def script(self, fn: Script) -> None:
        with self.lock:
            self._script = fn

    def script_sequence(self, replies: list[Reply], then: Script | None = None) -> None:
        """Reply with ``replies`` in order (one per request), then with ``then``."""
        queue = list(replies)
        fallback = then or default_reply

        def fn(body: dict[str, Any]) -> Reply:
            with self.lock:
                if queue:
                    return queue.pop(0)
            return fallback(body)

        self._script = fn

    def start(self) -> OracleServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> OracleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    prompt_tokens = sum(len(m.get("content", "").split()) for m in body.get("messages", []))
    completion_tokens = len(text.split())
    return {
        "id": f"chatcmpl-{random.randrange(10**9)}", "object": "chat.completion",
        "created": int(time.time()), "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def parse_latency(spec: str) -> Callable[[], float] | None:
    """``fixed:0.2`` or ``exp:0.2`` (exponential with that mean) or ``none``."""
    if spec in ("", "none"):
        return None
    kind, _, value = spec.partition(":")
    mean = float(value)
    if kind == "fixed":
        return lambda: mean
    if kind == "exp":
        return lambda: random.expovariate(1.0 / mean)
    raise ValueError(f"unknown latency {spec!r}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", default="none")
    ap.add_argument("--slots", type=int, default=None)
    a = ap.parse_args()
    srv = OracleServer(port=a.port, latency=parse_latency(a.latency), slots=a.slots)
    print(srv.url, flush=True)
    srv.httpd.serve_forever()
