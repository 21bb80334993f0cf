"""A minimal Chrome DevTools Protocol driver for Debian's headless chromium (tests only).

Starts `/usr/bin/chromium --headless --remote-debugging-port=0`, opens one page over the
protocol's websocket, records console errors, uncaught exceptions, log errors and every
network request, evaluates JavaScript and takes full-page screenshots.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket  # websocket-client

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--proxy-server=127.0.0.1:9",  # any attempt to reach the network fails
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
]


class Chromium:
    """One headless chromium process with one page attached over CDP."""

    def __init__(self, width: int = 1400, height: int = 900, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="actstore-chromium-")
        self.proc = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ws = None
        self._id = 0
        self.errors: list[str] = []
        self.requests: list[str] = []
        try:
            port = self._devtools_port()
            # keep draining chromium's stderr so a chatty browser never blocks on a full pipe
            threading.Thread(target=self._drain, daemon=True).start()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
            with urllib.request.urlopen(req, timeout=10) as r:
                target = json.load(r)
            self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=timeout,
                                                  suppress_origin=True)
            for domain in ("Runtime", "Log", "Page", "Network"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for _ in self.proc.stderr:
            pass

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + self.timeout
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode} before DevTools started")
            if m := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
                return int(m[1])
        raise TimeoutError("chromium did not print its DevTools address")

    def _on_event(self, msg: dict[str, Any]) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            self.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(p["request"]["url"])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result, handling events that arrive meanwhile."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._on_event(msg)

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluate failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url: str, ready: str, timeout: float | None = None) -> float:
        """Navigate to `url` and wait until JS expression `ready` is truthy; returns seconds taken."""
        start = time.monotonic()
        self.call("Page.navigate", url=url)
        deadline = start + (timeout or self.timeout)
        while time.monotonic() < deadline:
            if self.evaluate(f"Boolean({ready})"):
                return time.monotonic() - start
            time.sleep(0.1)
        raise TimeoutError(f"page {url} not ready ({ready}) after {timeout or self.timeout} s")

    def screenshot(self, path: Path) -> Path:
        """Full-page PNG screenshot."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if self.ws is not None:
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
