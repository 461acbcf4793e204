"""A minimal Chrome DevTools Protocol client for tests and benchmarks of the report page.

Starts Debian's chromium headless with the network-quiet flags and talks to it over
``--remote-debugging-pipe`` (file descriptors 3 and 4), so no websocket client is needed.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A minimal DevTools-protocol client over --remote-debugging-pipe."""

    def __init__(self, binary: str, user_data_dir: Path, timeout: float = 30.0):
        def high(fd: int) -> int:  # keep our ends away from fds 3 and 4, which the child uses
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            return new

        cmd_r, self._cmd_w = map(high, os.pipe())
        self._resp_r, resp_w = map(high, os.pipe())
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe", "about:blank"]
        shell = f'exec "$0" "$@" 3<&{cmd_r} 4>&{resp_w} {cmd_r}<&- {resp_w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", shell, binary, *flags],
                                     pass_fds=(cmd_r, resp_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(resp_w)
        self.timeout = timeout
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._resp_r], [], [], left)[0]:
                raise TimeoutError("no reply from chromium")
            chunk = os.read(self._resp_r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg: dict = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read()
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self._read()
            if m.get("method") == method:
                return m
            self.events.append(m)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._resp_r)


class Page:
    def __init__(self, browser: Chromium):
        self.b = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})
        self.session = browser.send("Target.attachToTarget",
                                    {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for m in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.send(m)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1400, "height": 1200, "deviceScaleFactor": 1, "mobile": False})

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.b.send(method, params, self.session)

    def goto(self, url: str) -> None:
        """A full load, even when only the hash differs from the current URL."""
        if url.split("#")[0] == self.js("return location.href.split('#')[0];"):
            self.goto("about:blank")
        self.send("Page.navigate", {"url": url})
        self.b.wait_event("Page.loadEventFired")

    def js(self, body: str):
        """Run an async function body in the page; returns its JSON-able result."""
        r = self.send("Runtime.evaluate", {"expression": f"(async () => {{ {body} }})()",
                                           "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in r:
            raise AssertionError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self) -> list[dict]:
        bad = []
        for e in self.b.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown" or (
                    m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert")) or (
                    m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error"):
                bad.append(e)
        return bad
