"""A loopback server that speaks the OpenAI Files + Batches wire format, for tests.

Files: upload (multipart, purpose "batch"), list (purpose, order, after, limit), content.
Chat Completions too (online calls), answered like the batch lines.
Batches: create (with metadata), retrieve, cancel, list (newest first, after, limit). Each
retrieve moves a batch one state on: validating -> in_progress -> finalizing -> completed;
on completion every line is answered by ``reply`` (the chat server's marker replies) into
an output file, failed lines into an error file, both in the batch result line format.

Faults: ``fail_validation(lines)`` (the batch fails validation), ``line_error(body)``
(a line fails: ``(status, code, message)``), ``expire(batch)`` (the batch expires with only
its first ``expire_done`` lines answered), ``retrieve_errors`` (that many 500s on retrieve),
``forget`` (batch ids answered 404), and ``hold(kind)``: the server does the work of the next
request of that kind (upload, create, retrieve, content), then waits before answering (the
test kills the client meanwhile).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from oracle_server import completion, default_reply

STATES = ("validating", "in_progress", "finalizing", "completed")


class BatchServer:
    def __init__(self, host: str = "127.0.0.1"):
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []  # batch ids, oldest first
        self.reply: Callable[[dict[str, Any]], str] = default_reply
        self.fail_validation: Callable[[list[dict[str, Any]]], str | None] = lambda lines: None
        self.line_error: Callable[[dict[str, Any]], tuple[int, str, str] | None] = \
            lambda body: None
        self.expire: Callable[[dict[str, Any]], bool] = lambda batch: False
        self.expire_done = 1
        self.retrieve_errors = 0
        self.forget: set[str] = set()
        self.calls: list[str] = []  # "METHOD /path" of every request
        self.online: list[dict[str, Any]] = []  # bodies of chat completions (not batched)
        self.lock = threading.Lock()
        self._hold_kind: str | None = None
        self.held = threading.Event()  # set when a held request has done its work
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                server._route(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                server._route(self, "POST")

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> BatchServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def hold(self, kind: str | None) -> None:
        """Hold the answer to the next ``kind`` request (upload, create, retrieve, content)."""
        self._hold_kind = kind
        self.held.clear()
        self.release.clear()

    # ------------------------------------------------------------ what tests look at
    def submitted_ids(self) -> list[str]:
        """custom_id of every line of every batch created (a line sent twice shows twice)."""
        out = []
        for bid in self.order:
            out += [line["custom_id"] for line in self._lines(self.batches[bid])]
        return out

    def _lines(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        data = self.files[batch["input_file_id"]]["data"]
        return [json.loads(x) for x in data.splitlines() if x.strip()]

    # ------------------------------------------------------------ wire
    def _route(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(h.path)
        path = url.path.removeprefix("/v1")
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(h.headers.get("Content-Length", 0))
        raw = h.rfile.read(length) if length else b""
        with self.lock:
            self.calls.append(f"{method} {path}")
        kind = None
        if method == "POST" and path == "/files":
            kind, status, payload = "upload", *self._upload(h.headers["Content-Type"], raw)
        elif method == "GET" and path == "/files":
            status, payload = 200, self._list(list(reversed(self.files.values())), query)
        elif method == "GET" and (m := re.fullmatch(r"/files/([^/]+)/content", path)):
            kind = "content"
            f = self.files.get(m[1])
            status, payload = (200, f["data"]) if f else (404, _error("no such file"))
        elif method == "POST" and path == "/chat/completions":  # --fallback-online
            body = json.loads(raw)
            with self.lock:
                self.online.append(body)
            status, payload = 200, completion(body, self.reply(body))
        elif method == "POST" and path == "/batches":
            kind, status, payload = "create", *self._create(json.loads(raw))
        elif method == "GET" and path == "/batches":
            newest = [self._public(self.batches[b]) for b in reversed(self.order)]
            status, payload = 200, self._list(newest, query)
        elif m := re.fullmatch(r"/batches/([^/]+)(/cancel)?", path):
            kind = "retrieve" if method == "GET" else "cancel"
            status, payload = self._batch(m[1], cancel=bool(m[2]))
        else:
            status, payload = 404, _error(f"no route {method} {path}")
        if kind is not None and kind == self._hold_kind:
            self._hold_kind = None
            self.held.set()
            self.release.wait(30)
        if kind == "content" and status == 200 and isinstance(payload, bytes):
            self._send(h, status, payload, "application/octet-stream")
        else:
            self._send(h, status, json.dumps(payload).encode(), "application/json")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, ctype: str) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed while the answer was held

    @staticmethod
    def _list(items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
        if "purpose" in query:
            items = [i for i in items if i.get("purpose") == query["purpose"]]
        if "after" in query:
            ids = [i["id"] for i in items]
            items = items[ids.index(query["after"]) + 1:] if query["after"] in ids else []
        limit = int(query.get("limit", 20))
        page = [{k: v for k, v in i.items() if k != "data"} for i in items[:limit]]
        return {"object": "list", "data": page, "has_more": len(items) > limit,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None}

    def _upload(self, ctype: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        boundary = ctype.split("boundary=")[1].strip('"').encode()
        fields: dict[str, Any] = {}
        for part in raw.split(b"--" + boundary)[1:-1]:
            head, _, body = part.strip(b"\r\n").partition(b"\r\n\r\n")
            name = re.search(rb'name="([^"]+)"', head)[1].decode()
            fname = re.search(rb'filename="([^"]+)"', head)
            fields[name] = (fname[1].decode(), body) if fname else body.decode()
        filename, data = fields["file"]
        fid = f"file-{uuid.uuid4().hex[:12]}"
        with self.lock:
            self.files[fid] = {"id": fid, "object": "file", "bytes": len(data),
                               "created_at": int(time.time()), "filename": filename,
                               "purpose": fields["purpose"], "status": "processed",
                               "data": data}
        return 200, {k: v for k, v in self.files[fid].items() if k != "data"}

    def _create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("input_file_id") not in self.files:
            return 400, _error("input_file_id: no such file")
        bid = f"batch_{uuid.uuid4().hex[:12]}"
        batch = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
                 "input_file_id": body["input_file_id"], "completion_window": "24h",
                 "status": "validating", "output_file_id": None, "error_file_id": None,
                 "created_at": int(time.time()), "metadata": body.get("metadata"),
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}}
        with self.lock:
            self.batches[bid] = batch
            self.order.append(bid)
        return 200, self._public(batch)

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        return dict(batch)

    def _batch(self, bid: str, *, cancel: bool) -> tuple[int, dict[str, Any]]:
        if bid in self.forget or bid not in self.batches:
            return 404, _error(f"No batch found with id '{bid}'.")
        if not cancel and self.retrieve_errors > 0:
            self.retrieve_errors -= 1
            return 500, _error("injected 500")
        batch = self.batches[bid]
        with self.lock:
            if cancel and batch["status"] not in ("completed", "failed", "expired"):
                batch["status"] = "cancelling"
            elif not cancel:
                self._advance(batch)
        return 200, self._public(batch)

    def _advance(self, batch: dict[str, Any]) -> None:
        status = batch["status"]
        lines = self._lines(batch)
        if status == "cancelling":
            self._finish(batch, lines, "cancelled", done=0)
        elif status == "validating":
            problem = self.fail_validation(lines)
            if problem:
                batch["status"] = "failed"
                batch["errors"] = {"object": "list", "data": [
                    {"code": "invalid_request", "message": problem, "param": None,
                     "line": 1}]}
            else:
                batch["status"] = "in_progress"
                batch["request_counts"]["total"] = len(lines)
        elif status == "in_progress":
            batch["status"] = "finalizing"
        elif status == "finalizing":
            if self.expire(batch):
                self._finish(batch, lines, "expired", done=self.expire_done)
            else:
                self._finish(batch, lines, "completed", done=len(lines))

    def _finish(self, batch: dict[str, Any], lines: list[dict[str, Any]], status: str,
                done: int) -> None:
        out, err = [], []
        for n, line in enumerate(lines):
            rid = f"batch_req_{uuid.uuid4().hex[:12]}"
            if n >= done:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                err.append({"id": rid, "custom_id": line["custom_id"], "response": None,
                            "error": {"code": code, "message": f"request {code}"}})
                continue
            fault = self.line_error(line["body"])
            if fault:
                status_code, code, message = fault
                err.append({"id": rid, "custom_id": line["custom_id"],
                            "response": {"status_code": status_code, "request_id": rid,
                                         "body": {"error": {"message": message,
                                                            "type": "invalid_request_error",
                                                            "code": code}}},
                            "error": None})
                continue
            body = completion(line["body"], self.reply(line["body"]))
            out.append({"id": rid, "custom_id": line["custom_id"],
                        "response": {"status_code": 200, "request_id": rid, "body": body},
                        "error": None})
        batch["status"] = status
        batch["request_counts"] = {"total": len(lines), "completed": len(out),
                                   "failed": len(err)}
        for kind, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                fid = f"file-{uuid.uuid4().hex[:12]}"
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                self.files[fid] = {"id": fid, "object": "file", "bytes": len(data),
                                   "created_at": int(time.time()), "status": "processed",
                                   "filename": f"{batch['id']}_{kind}.jsonl",
                                   "purpose": "batch_output", "data": data}
                batch[kind] = fid


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}
