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
from devnets.regtest.methods import REGISTRY, REQUEST_URI, RpcFailure, call_method
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


#: Methods libevent knows (``HTTPRequest::GetRequestMethod``); any other is UNKNOWN: a bare 405.
_KNOWN_HTTP_METHODS = {"GET", "POST", "HEAD", "PUT", "OPTIONS"}
#: libevent's default type for replies that set none (bare 404/405/401 and text answers).
_DEFAULT_TYPE = {"Content-Type": "text/html; charset=ISO-8859-1"}


class _Request:
    """``JSONRPCRequest::parse`` (bitcoind 28 ``rpc/request.cpp``): the id first, so later errors carry
    it; ``jsonrpc`` absent or "1.0" is legacy 1.x, "2.0" is 2.0, another string or a non-string is
    -32600; then ``method`` and ``params``.  A 2.0 request without ``id`` is a notification."""

    def __init__(self) -> None:
        self.id: Any = None
        self.has_id = True
        self.version2 = False
        self.method = ""
        self.params: list | dict = []

    @property
    def notification(self) -> bool:
        return self.version2 and not self.has_id

    def parse(self, req: Any) -> None:
        if not isinstance(req, dict):
            raise RpcFailure(RPC_INVALID_REQUEST, "Invalid Request object")
        self.has_id = "id" in req
        self.id = req.get("id")
        self.version2 = False
        version = req.get("jsonrpc")
        if version is not None:
            if not isinstance(version, str):
                raise RpcFailure(RPC_INVALID_REQUEST, "jsonrpc field must be a string")
            if version == "2.0":
                self.version2 = True
            elif version != "1.0":
                raise RpcFailure(RPC_INVALID_REQUEST, "JSON-RPC version not supported")
        method = req.get("method")
        if method is None:
            raise RpcFailure(RPC_INVALID_REQUEST, "Missing method")
        if not isinstance(method, str):
            raise RpcFailure(RPC_INVALID_REQUEST, "Method must be a string")
        self.method = method
        params = req.get("params")
        if params is None:
            params = []
        if not isinstance(params, (list, dict)):
            raise RpcFailure(RPC_INVALID_REQUEST, "Params must be an array or object")
        self.params = params

    def error_reply(self, failure: RpcFailure) -> dict:
        return _reply(self.version2, None, {"code": failure.code, "message": failure.message}, self.id)


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
        """``http_request_cb``: unknown HTTP methods 405; then the first handler whose path matches
        (``/`` exactly, ``/wallet/`` and, with ``-rest``, the REST prefixes as prefixes; the URI
        includes its query string); nothing matched is a bare 404."""
        if request.method not in _KNOWN_HTTP_METHODS:
            return web.Response(status=405, headers=_DEFAULT_TYPE)
        uri = request.raw_path
        if uri == "/" or uri.startswith("/wallet/"):
            return await self._jsonrpc(request, uri)
        if self.node.rest:
            from devnets.regtest import rest

            found = rest.route(uri)
            if found is not None:
                handler, part = found
                async with self._lock:
                    return handler(self.node, request, part)
        return web.Response(status=404, headers=_DEFAULT_TYPE)

    async def _jsonrpc(self, request: web.Request, uri: str) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, text="JSONRPC server handles only POST requests", headers=_DEFAULT_TYPE)
        header = request.headers.get("Authorization")
        if header is None:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="jsonrpc"', **_DEFAULT_TYPE})
        if not self._authorized(header):
            log.warning("ThreadRPCServer incorrect password attempt from %s", request.remote)
            # bitcoind answers 401 with an empty body and slows down password guessing.
            await asyncio.sleep(0.25)
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="jsonrpc"', **_DEFAULT_TYPE})
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
        token = REQUEST_URI.set(uri)
        try:
            return await self._dispatch(payload)
        finally:
            REQUEST_URI.reset(token)

    async def _dispatch(self, payload: Any) -> web.StreamResponse:
        state = _Request()
        if isinstance(payload, list):
            # bitcoind runs a batch's calls in turn, errors caught into the reply; each takes the
            # lock alone, so a long poll in a batch waits without it.  Its one JSONRPCRequest is
            # reused: an item that is no object keeps the id and version of the item before it.
            replies = []
            for item in payload:
                try:
                    state.parse(item)
                    reply = await self._run(state, catch_errors=True)
                except RpcFailure as failure:
                    reply = state.error_reply(failure)
                if not state.notification:
                    replies.append(reply)
            # An all-notification batch gets no answer; an empty one gets ``[]`` (legacy clients).
            if not replies and payload:
                return web.Response(status=204)
            return self._json(200, replies)
        if not isinstance(payload, dict):
            return self._json(500, _reply(False, None, {"code": RPC_PARSE_ERROR, "message": "Top-level object parse error"}, None))
        try:
            state.parse(payload)
            # JSON-RPC 1.x: a failed call is an HTTP error too; 2.0: HTTP 200 with the RPC error.
            reply = await self._run(state, catch_errors=state.version2)
        except RpcFailure as failure:
            status = {RPC_INVALID_REQUEST: 400, RPC_METHOD_NOT_FOUND: 404}.get(failure.code, 500)
            return self._json(status, state.error_reply(failure))
        if state.notification:
            # Notifications run, but get no answer (even when they fail).
            return web.Response(status=204)
        return self._json(200, reply)

    async def _run(self, req: "_Request", catch_errors: bool) -> dict:
        """One call.  A long poll runs outside the lock: it only reads the tip once woken, and
        holding the lock while it waits would stop the very calls (mining, ``stop``) it waits for."""
        if req.method in WAITING_METHODS:
            return await self._one(req, catch_errors)
        async with self._lock:
            try:
                return await self._one(req, catch_errors)
            finally:
                # Before answering: whatever the call put in the mempool is on disk.
                if self.node.chain is not None:
                    self.node.flush_mempool()

    async def _one(self, req: "_Request", catch_errors: bool) -> dict:
        try:
            if req.method not in REGISTRY:
                raise RpcFailure(RPC_METHOD_NOT_FOUND, "Method not found")
            result = await call_method(self.node, req.method, req.params)
        except RpcFailure as failure:
            if not catch_errors:
                raise
            return req.error_reply(failure)
        except Exception as exc:  # an internal bug must not kill the server; bitcoind says -1 too
            log.exception("RPC %s failed", req.method)
            failure = RpcFailure(-1, str(exc))
            if not catch_errors:
                raise failure from None
            return req.error_reply(failure)
        return _reply(req.version2, result, None, req.id)

    @staticmethod
    def _json(status: int, obj: Any) -> web.Response:
        # Exactly bitcoind's header: clients built on AuthServiceProxy refuse "application/json; charset=utf-8".
        return web.Response(status=status, body=(dumps(obj) + "\n").encode(), headers={"Content-Type": "application/json"})
