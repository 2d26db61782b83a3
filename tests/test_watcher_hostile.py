"""Hostile input to the watcher and the shared runner, without a chain.

* ``parse_job`` bounds: every malformed field is a ``JobRefused`` (a 400 naming the field),
  never a ``ValueError`` or ``OverflowError`` that would be a 500 or break the job's row.
* The runner's HTTP edge, in process on a free port with a stand-in daemon: bounded body
  reading (413 JSON before the body is read, 400 for nested brackets), aiohttp's own errors
  (404, 405) answered in the JSON error shape, a refusal's own ``http_status`` honoured, and
  a genuine bug still a 500 (JSON).
* The watcher's ``GET /jobs/{id}`` refuses an id it could not have made without a database query.
* ``bridge.watch.handoff.submit_jobs`` (the party's client of the watcher) against a hostile
  watcher: a nested-bracket or oversize answer is a clear ``WatcherRefused``, in its own
  process so a segmentation fault would show as an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.core.errors import InputError
from bridge.core.jsonsafe import MAX_BODY
from bridge.core.settings import Settings
from bridge.core.testing import wait_until
from bridge.watch.jobs import MAX_RUNGS, JobRefused, parse_job
from devnets.process import free_port
from relayers.runner import Metrics, Runner, json_body, json_handler

REPO_ROOT = Path(__file__).resolve().parents[1]
NESTED = b"[" * 100_000 + b"]" * 100_000
SECRET = b"\x01" * 32
HASHLOCK = hashlib.sha256(SECRET).hexdigest()
TXID = "ab" * 32


def btc_job(**changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "kind": "refund",
        "chain": "bitcoin",
        "hashlock": HASHLOCK,
        "payout": "0014" + "22" * 20,
        "htlc": {"script": "00", "outpoint": f"{TXID}:0", "amount": 1000},
        "presigned": [{"feerate": 2, "tx": "00"}],
    }
    for key, value in changes.items():
        target = job
        *path, last = key.split(".")
        for step in path:
            target = target[int(step)] if isinstance(target, list) else target[step]
        target[last] = value
    return job


def evm_job(**changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "kind": "claim",
        "chain": "evm",
        "hashlock": HASHLOCK,
        "payout": "0x" + "22" * 20,
        "secret": SECRET.hex(),
        "htlc": {
            "contract": "0x" + "44" * 20,
            "swap": {
                "sender": "0x" + "55" * 20,
                "recipient": "0x" + "22" * 20,
                "token": "0x" + "00" * 20,
                "amount": 1,
                "hashlock": HASHLOCK,
                "expiry": 10**9,
                "nonce": 0,
            },
        },
    }
    for key, value in changes.items():
        target = job
        *path, last = key.split(".")
        for step in path:
            target = target[step]
        target[last] = value
    return job


@pytest.mark.parametrize(
    "job, field",
    [
        (btc_job(**{"htlc.outpoint": f"{TXID}:²"}), "htlc.outpoint"),  # isdigit() but not int()-able
        (btc_job(**{"htlc.outpoint": f"{TXID}:٣"}), "htlc.outpoint"),  # non-ASCII digit
        (btc_job(**{"htlc.outpoint": f"{TXID}:" + "9" * 5000}), "htlc.outpoint"),  # past int()'s digit limit
        (btc_job(**{"htlc.outpoint": f"{TXID}:4294967296"}), "htlc.outpoint"),  # vout is a uint32
        (btc_job(**{"htlc.outpoint": [TXID, 0]}), "htlc.outpoint"),
        (btc_job(**{"htlc.outpoint": "zz" * 32 + ":0"}), "htlc.outpoint"),
        (btc_job(**{"htlc.amount": 2**63}), "htlc.amount"),  # would overflow the database
        (btc_job(**{"htlc.amount": 21_000_000 * 10**8 + 1}), "htlc.amount"),
        (btc_job(**{"htlc.amount": 1.5}), "htlc.amount"),
        (btc_job(**{"hashlock": 2**200}), "hashlock"),  # a number is not hex, even if its digits are
        (btc_job(**{"hashlock": ["11" * 32]}), "hashlock"),
        (btc_job(**{"htlc.script": {"a": 1}}), "htlc.script"),
        (btc_job(**{"payout": ["00"]}), "payout"),
        (btc_job(**{"presigned": [{"feerate": 2, "tx": "00"}] * (MAX_RUNGS + 1)}), "presigned"),
        (btc_job(**{"presigned": [{"feerate": 2, "tx": 0}]}), "presigned"),
        (evm_job(secret=None, reveal={"chain": "bitcoin", "outpoint": f"{TXID}:1", "from_height": 2**64}), "reveal.from_height"),
        (evm_job(secret=None, reveal={"chain": "bitcoin", "outpoint": f"{TXID}:1", "from_height": -1}), "reveal.from_height"),
        (evm_job(secret=None, reveal={"chain": "bitcoin", "outpoint": f"{TXID}:²"}), "reveal.outpoint"),
        (evm_job(secret=None, reveal={"chain": "evm", "contract": "0x" + "44" * 20, "swap_id": 7}), "reveal.swap_id"),
        (evm_job(secret=2**255), "secret"),
        (evm_job(**{"htlc.swap.expiry": 2**256}), "htlc.swap"),
        (evm_job(**{"htlc.swap.amount": "9" * 5000}), "htlc.swap"),
        (evm_job(**{"htlc.swap.hashlock": [1]}), "htlc.swap"),
        (evm_job(**{"htlc.swap.sender": 12}), "htlc.swap"),
    ],
)
def test_malformed_job_fields_are_refused_naming_the_field(job, field):
    with pytest.raises(JobRefused) as refused:
        parse_job(job)
    assert refused.value.details.get("field") == field, refused.value.message
    assert len(refused.value.message) < 600  # the refusal does not echo a huge value back


@pytest.mark.parametrize("kind", ["x" * 100_000, ["claim"], {"a": 1}, 2**70])
def test_a_huge_or_odd_kind_is_refused_with_a_short_message(kind):
    with pytest.raises(JobRefused) as refused:
        parse_job(btc_job(kind=kind))
    assert refused.value.details["field"] == "kind" and len(refused.value.message) < 300


# --- the runner's HTTP edge -------------------------------------------------------------------


class Tolerant(InputError):
    http_status = 429


class Standin:
    """A daemon with the endpoints a real one has: a JSON body, a refusal with its own status, a bug."""

    name = "standin"

    def __init__(self) -> None:
        self.metrics = Metrics("standin")

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    def routes(self) -> list[web.RouteDef]:
        async def echo(req: web.Request) -> dict[str, Any]:
            return {"got": await json_body(req)}

        async def busy(_req: web.Request) -> dict[str, Any]:
            raise Tolerant("too many open requests")

        async def bug(_req: web.Request) -> dict[str, Any]:
            return {"x": 1 / 0}

        async def raw(_req: web.Request) -> web.Response:  # not wrapped: the middleware answers for it
            raise RuntimeError("unwrapped bug")

        return [web.post("/echo", json_handler(echo)), web.get("/busy", json_handler(busy)), web.get("/bug", json_handler(bug)), web.get("/raw", raw)]


@contextlib.asynccontextmanager
async def running(daemon: Any, routes: list[web.RouteDef]):
    port = free_port()
    task = asyncio.create_task(Runner(daemon, Settings(), http_port=port, extra_routes=routes, shutdown_grace=1).run())
    url = f"http://127.0.0.1:{port}"

    async def up() -> bool:
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{url}/health") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await wait_until(up, 10, what="runner up")
    try:
        yield url
    finally:
        daemons = [t for t in asyncio.all_tasks() if t.get_name() == daemon.name]
        for t in [task, *daemons]:
            t.cancel()
        await asyncio.gather(task, *daemons, return_exceptions=True)


async def call(url: str, method: str, path: str, body: bytes | None = None, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url + path, data=body, **kwargs) as resp:
            assert "application/json" in resp.headers.get("Content-Type", ""), (resp.status, await resp.text())
            return resp.status, await resp.json()


def shaped(answer: tuple[int, dict[str, Any]], status: int) -> dict[str, Any]:
    code, body = answer
    assert code == status, answer
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body
    return body


async def test_runner_bodies_are_bounded_and_every_error_is_json():
    daemon = Standin()
    async with running(daemon, daemon.routes()) as url:
        assert await call(url, "POST", "/echo", b'{"a": [1, "\\u00e9"]}') == (200, {"got": {"a": [1, "é"]}})
        assert "nested deeper" in shaped(await call(url, "POST", "/echo", NESTED), 400)["message"]
        shaped(await call(url, "POST", "/echo", b"[1, 2]"), 400)
        shaped(await call(url, "POST", "/echo", b"\xff\xfe\x00garbage"), 400)
        shaped(await call(url, "POST", "/echo", b'{"a": NaN}'), 400)
        shaped(await call(url, "POST", "/echo", b'{"a": ' + b"9" * 5000 + b"}"), 400)
        big = b'{"a": "' + b"x" * MAX_BODY + b'"}'
        assert shaped(await call(url, "POST", "/echo", big), 413)["error"] == "JsonRefused"

        async def chunks():
            for _ in range(40):
                yield b" " * 65536

        shaped(await call(url, "POST", "/echo", chunks()), 413)  # chunked: no Content-Length to go by
        assert shaped(await call(url, "GET", "/nowhere"), 404)["error"] == "NotFound"
        assert shaped(await call(url, "DELETE", "/echo"), 405)["error"] == "MethodNotAllowed"
        shaped(await call(url, "GET", "/busy"), 429)
        assert shaped(await call(url, "GET", "/bug"), 500)["error"] == "ZeroDivisionError"  # a genuine bug stays a 500
        assert shaped(await call(url, "GET", "/raw"), 500)["error"] == "RuntimeError"
        assert (await call(url, "GET", "/health"))[0] == 200


async def test_watcher_get_job_refuses_ids_it_could_not_have_made(tmp_path):
    from bridge.core.db import make_engine
    from bridge.watch.actions import Watcher
    from bridge.watch.store import WatchStore
    from relayers.watcher import WatcherDaemon

    daemon = WatcherDaemon(Watcher(WatchStore(make_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")), None, None), poll_interval=0.05)
    async with running(daemon, daemon.routes()) as url:
        for job_id in ["%00", "x" * 5000, "%C3%A9" * 16, "0" * 31, "0" * 33, "A" * 32]:
            assert shaped(await call(url, "GET", f"/jobs/{job_id}"), 404)["error"] == "NotFound"
        shaped(await call(url, "GET", "/jobs/" + "0" * 32), 404)  # well-formed, unknown
        assert "nested deeper" in shaped(await call(url, "POST", "/jobs", NESTED), 400)["message"]
        body = shaped(await call(url, "POST", "/jobs", b'{"kind": "claim", "chain": "bitcoin", "hashlock": 5}'), 400)
        assert body["field"] == "hashlock"
        shaped(await call(url, "POST", "/jobs", b"[" + b"0," * MAX_BODY + b"0]"), 413)
        assert daemon.metrics.counters["jobs_refused"] == 3


# --- the party's client of the watcher ---------------------------------------------------------------


SUBMIT_TO_HOSTILE_WATCHER = textwrap.dedent(
    """
    import asyncio, sys
    import web3  # py_ecc raises the recursion limit to 100,000, as in bridgectl
    from aiohttp import web
    from bridge.watch.handoff import submit_jobs

    ANSWERS = {
        "nested": (200, b"[" * 100_000 + b"]" * 100_000),
        "huge": (201, b'{"a": "' + b"x" * (2 << 20) + b'"}'),
        "refused": (400, b'{"error": "JobRefused", "message": "no", "reason": "bad \\\\u001b[31mhashlock"}'),
        "list": (201, b"[1, 2]"),
        "nojob": (201, b'{"id": 1}'),
        "nan": (201, b'{"id": NaN}'),
        "ok": (201, b'{"id": "ab", "kind": "claim", "chain": "evm", "state": "watching"}'),
    }

    async def main():
        assert sys.getrecursionlimit() >= 100_000
        app = web.Application()

        async def jobs(req):
            status, body = ANSWERS[req.match_info["case"]]
            return web.Response(body=body, status=status, content_type="application/json")

        app.add_routes([web.post("/{case}/jobs", jobs)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        for case in ANSWERS:
            try:
                answers = await submit_jobs(f"{base}/{case}", [{"kind": "claim"}], timeout=30)
            except Exception as exc:
                print(f"{case}: {type(exc).__name__}: {exc}", flush=True)
            else:
                print(f"{case}: ok {answers}", flush=True)
        await runner.cleanup()

    asyncio.run(main())
    """
)


def test_submit_jobs_refuses_hostile_watcher_answers_without_crashing():
    proc = subprocess.run(
        [sys.executable, "-c", SUBMIT_TO_HOSTILE_WATCHER],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
    out = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert out["nested"].startswith("WatcherRefused:") and "nested deeper than 64 levels" in out["nested"]
    assert out["huge"].startswith("WatcherRefused:") and "over the limit" in out["huge"]
    assert out["refused"] == "WatcherRefused: watcher refused the claim job: bad ?[31mhashlock"  # no terminal escapes
    assert out["list"].startswith("WatcherRefused:") and "not an object" in out["list"]
    assert out["nojob"].startswith("WatcherRefused:") and "without the job's id" in out["nojob"]
    assert out["nan"].startswith("WatcherRefused:") and "NaN is not a JSON number" in out["nan"]
    assert out["ok"].startswith("ok [{'id': 'ab'")
