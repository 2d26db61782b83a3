"""bitcoind's JSON-RPC over HTTP: basic auth, JSON-RPC 1.0 / 2.0, batches, bitcoind's error shapes
and HTTP status codes (``httprpc.cpp``), amounts as raw JSON numbers with 8 decimals.

Bodies are parsed by ``bridge.core.jsonsafe`` (bounded size, depth and number length; no NaN), so no
request can crash the process or make a number conversion run for minutes."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge.core import jsonsafe
from chains.btc.rpc_errors import RPC_INVALID_REQUEST, RPC_METHOD_NOT_FOUND, RPC_PARSE_ERROR
from devnets.regtest.methods import REGISTRY, RpcFailure, call_method
from devnets.regtest.methods.blockchain import WAITING_METHODS

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

log = logging.getLogger("devnets.regtest.rpc")

#: bitcoind refuses bodies over MAX_SIZE (32 MiB) with 413.  Ours is smaller: parsing runs on the
#: event loop and a hostile 32 MiB body (millions of tiny arrays or escapes) holds it for ~10 s; 8 MiB
#: still carries a full 4M-weight block as hex (8,000,000 characters) in one ``submitblock``.
MAX_BODY = 1 << 23

_NUM_TOKEN = re.compile(r'"(?:\x1f|\\u001f)N([-+0-9.eE]+)(?:\x1f|\\u001f)"')


def _raw_numbers(value: Any) -> Any:
    """Decimals (amounts) keep their 8 decimals and floats get UniValue's 16 significant digits;
    json cannot emit a number's text itself, so both travel as marked strings swapped back after."""
    if isinstance(value, float):
        return f"\x1fN{value:.16g}\x1f"
    if isinstance(value, Decimal):
        # Amounts have 8 decimals; a request id such as 1e999999999 goes back in exponent form
        # (``:f`` would write a billion digits).
        return f"\x1fN{value:f}\x1f" if -100 <= value.as_tuple().exponent <= 0 else f"\x1fN{value}\x1f"
    if isinstance(value, dict):
        return {k: _raw_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_raw_numbers(v) for v in value]
    return value


def dumps(value: Any) -> str:
    text = json.dumps(_raw_numbers(value), separators=(",", ":"), ensure_ascii=False)
    return _NUM_TOKEN.sub(r"\1", text) if "N" in text else text


def _reply(version2: bool, result: Any, error: dict | None, req_id: Any) -> dict:
    if version2:
        out: dict[str, Any] = {"jsonrpc": "2.0"}
        if error is None:
            out["result"] = result
        else:
            out["error"] = error
        out["id"] = req_id
        return out
    return {"result": result, "error": error, "id": req_id}


class RpcServer:
    def __init__(self, node: "RegtestNode") -> None:
        self.node = node
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()

    async def start(self, host: str, port: int) -> int:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        return sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user_pass = base64.b64decode(header[6:].strip()).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        expected = f"{self.node.rpc_auth[0]}:{self.node.rpc_auth[1]}"
        return hmac.compare_digest(user_pass.encode(), expected.encode())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, text="JSONRPC server handles only POST requests")
        if not self._authorized(request.headers.get("Authorization")):
            log.warning("ThreadRPCServer incorrect password attempt from %s", request.remote)
            # bitcoind answers 401 with an empty body and slows down password guessing.
            await asyncio.sleep(0.25)
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="jsonrpc"'})
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.Response(status=413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413)
        try:
            payload = jsonsafe.loads(body, parse_float=Decimal, max_bytes=MAX_BODY)
        except jsonsafe.JsonRefused as refused:
            if refused.status == 413:
                return web.Response(status=413)
            # UniValue refuses what jsonsafe refuses (NaN, Infinity, malformed text) the same way;
            # it nests deeper (512) and takes longer numbers, but those are no requests of ours.
            return self._json(500, _reply(False, None, {"code": RPC_PARSE_ERROR, "message": "Parse error"}, None))
        if isinstance(payload, list):
            # bitcoind runs a batch's calls in turn; each takes the lock alone, so a long poll in
            # a batch waits without it and every other connection goes on being served.
            replies = [r for r in [await self._run(item, batch=True) for item in payload] if r is not None]
            return self._json(200, [r[1] for r in replies])
        if not isinstance(payload, dict):
            return self._json(500, _reply(False, None, {"code": RPC_PARSE_ERROR, "message": "Top-level object parse error"}, None))
        reply = await self._run(payload, batch=False)
        if reply is None:
            return web.Response(status=204)
        status, obj = reply
        return self._json(status, obj)

    async def _run(self, req: Any, batch: bool) -> tuple[int, dict] | None:
        """One call.  A long poll runs outside the lock: it only reads the tip once woken, and
        holding the lock while it waits would stop the very calls (mining, ``stop``) it waits for."""
        if isinstance(req, dict) and req.get("method") in WAITING_METHODS:
            return await self._one(req, batch)
        async with self._lock:
            try:
                return await self._one(req, batch)
            finally:
                # Before answering: whatever the call put in the mempool is on disk.
                if self.node.chain is not None:
                    self.node.flush_mempool()

    async def _one(self, req: Any, batch: bool) -> tuple[int, dict] | None:
        if not isinstance(req, dict):
            return 400, _reply(False, None, {"code": RPC_INVALID_REQUEST, "message": "Invalid Request object"}, None)
        version2 = req.get("jsonrpc") == "2.0"
        req_id = req.get("id")
        notification = version2 and "id" not in req
        try:
            method = req.get("method")
            if method is None:
                raise RpcFailure(RPC_INVALID_REQUEST, "Missing method")
            if not isinstance(method, str):
                raise RpcFailure(RPC_INVALID_REQUEST, "Method must be a string")
            params = req.get("params", [])
            if params is None:
                params = []
            if not isinstance(params, (list, dict)):
                raise RpcFailure(RPC_INVALID_REQUEST, "Params must be an array or object")
            if method not in REGISTRY:
                raise RpcFailure(RPC_METHOD_NOT_FOUND, "Method not found")
            result = await call_method(self.node, method, params)
        except RpcFailure as failure:
            if notification:
                return None
            error = {"code": failure.code, "message": failure.message}
            if version2 or batch:
                status = 200
            elif failure.code == RPC_INVALID_REQUEST:
                status = 400
            elif failure.code == RPC_METHOD_NOT_FOUND:
                status = 404
            else:
                status = 500
            return status, _reply(version2, None, error, req_id)
        except Exception as exc:  # an internal bug must not kill the server; bitcoind says -1 too
            log.exception("RPC %s failed", req.get("method"))
            if notification:
                return None
            return (200 if version2 or batch else 500), _reply(version2, None, {"code": -1, "message": str(exc)}, req_id)
        if notification:
            return None
        return 200, _reply(version2, result, None, req_id)

    @staticmethod
    def _json(status: int, obj: Any) -> web.Response:
        # Exactly bitcoind's header: clients built on AuthServiceProxy refuse "application/json; charset=utf-8".
        return web.Response(status=status, body=(dumps(obj) + "\n").encode(), headers={"Content-Type": "application/json"})
