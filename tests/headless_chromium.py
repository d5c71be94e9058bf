"""Headless Chromium driven over the DevTools protocol on a pipe, for tests that look at the UI.

The Dagster UI is a single-page app that fetches its data after the page loads, and it shows a
long markdown value (a report with pictures) only in a dialog opened by a click, so a plain
``chromium --screenshot`` or ``--dump-dom`` sees neither. ``--remote-debugging-pipe`` gives the
DevTools protocol on file descriptors 3 (commands in) and 4 (replies and events out), messages
ended by NUL: no port, no websocket library, nothing beyond the standard library. The browser
leads a session of its own, so :func:`dagster_process.stop` takes it down with its helpers.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import dagster_process

#: Debian's package names its binary ``chromium``; others ship ``chromium-browser``
BINARIES = ("chromium", "chromium-browser", "google-chrome")


def binary() -> str | None:
    """The Chromium on PATH, if any."""
    return next((found for name in BINARIES if (found := shutil.which(name))), None)


class Chromium:
    """One headless browser with one page of ``width`` x ``height`` CSS pixels."""

    def __init__(self, executable: str, profile: Path, log: Path, *,
                 width: int = 1600, height: int = 1000):
        commands_out, commands_in = os.pipe()     # we write, the browser reads on fd 3
        events_out, events_in = os.pipe()         # the browser writes on fd 4, we read

        def as_fds_3_and_4() -> None:
            # fresh copies first, so that neither dup2 below overwrites the other's source
            read, write = os.dup(commands_out), os.dup(events_in)
            os.dup2(read, 3)
            os.dup2(write, 4)

        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [executable, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
                 "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--hide-scrollbars", f"--user-data-dir={profile}",
                 f"--window-size={width},{height}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                pass_fds=(3, 4), preexec_fn=as_fds_3_and_4, start_new_session=True)
        os.close(commands_out)
        os.close(events_in)
        self._write, self._read = commands_in, events_out
        self._buffer, self._ids = b"", itertools.count(1)
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target,
                                  flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width,
                  height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, *, session: bool = False, timeout: float = 60,
             **params) -> dict:
        """Send one command (to the page when ``session``) and return its result."""
        message_id = next(self._ids)
        message = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next_message(deadline - time.monotonic())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _next_message(self, timeout: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._read], [], [], max(timeout, 0))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited with {self.process.poll()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str | None = None):
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.5)
        raise AssertionError(f"not within {timeout} s: {what or expression}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)

    def screenshot(self, path: Path) -> bytes:
        """The visible page as PNG, written to ``path``."""
        png = base64.b64decode(self.call("Page.captureScreenshot", session=True,
                                         format="png")["data"])
        path.write_bytes(png)
        return png

    def close(self) -> None:
        os.close(self._write)
        os.close(self._read)
        dagster_process.stop(self.process)
