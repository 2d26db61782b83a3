"""The shared daemon runner: metrics over HTTP, graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import urllib.request

from bridge.core.testing import wait_until
from devnets.process import free_port

DAEMON = textwrap.dedent(
    """
    import asyncio, sys
    from bridge.core.settings import load_settings
    from relayers.runner import Metrics, run_daemon

    class Ticker:
        name = "ticker"
        def __init__(self):
            self.metrics = Metrics("ticker")
        async def run(self, stop):
            while not stop.is_set():
                self.metrics.inc("ticks")
                try:
                    await asyncio.wait_for(stop.wait(), 0.01)
                except asyncio.TimeoutError:
                    pass
            print("clean shutdown", flush=True)

    sys.exit(run_daemon(Ticker(), load_settings(environ={}), http_port=int(sys.argv[1])))
    """
)


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.read().decode()
    except OSError:
        return None


async def test_daemon_serves_metrics_and_stops_cleanly_on_sigterm():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", DAEMON, str(port)], stdout=subprocess.PIPE, text=True)
    try:

        def ticked():
            body = _get(f"http://127.0.0.1:{port}/metrics")
            return body and any(line.startswith("ticker_ticks_total ") and int(line.split()[1]) > 3 for line in body.splitlines())

        await wait_until(ticked, timeout=20, what="the ticker's counter to show on /metrics")
        assert '"ok": true' in _get(f"http://127.0.0.1:{port}/health")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "clean shutdown" in out
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_cancelling_the_runner_stops_its_daemon():
    from bridge.core.settings import load_settings
    from relayers.runner import Metrics, Runner

    class Forever:
        name = "forever"

        def __init__(self) -> None:
            self.metrics = Metrics("forever")
            self.running = False
            self.cancelled = False

        async def run(self, stop):
            self.running = True
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise

    daemon = Forever()
    task = asyncio.create_task(Runner(daemon, load_settings(environ={})).run())
    await wait_until(lambda: daemon.running, timeout=10, what="the daemon to start")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert daemon.cancelled
