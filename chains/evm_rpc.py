"""Raw JSON-RPC to an EVM node over AsyncWeb3's HTTP provider, with typed errors.

The adapter talks to the provider directly (``make_request`` / ``make_batch_request``)
rather than through ``w3.eth``: results stay as the node's JSON (hex strings), which
skips web3's per-field formatters (the log indexer moves ~10^5 logs a second) and
lets errors be mapped once, here, onto the bridge's exception tree.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import re
from typing import Any, Callable, Sequence

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ProviderConnectionError

from bridge.core import jsonsafe
from bridge.core.errors import (
    BridgeError,
    ChainUnavailable,
    ContractReverted,
    InsufficientFunds,
    NonceConflict,
    RpcError,
    TransactionRejected,
    Unsupported,
)
from chains.evm_revert import describe_revert
from chains.http import LoopSession

# Node wording differs (geth, reth, anvil, erigon); match loosely, case-insensitively.
_NONCE_LOW = re.compile(r"nonce too low|nonce has already been used|old nonce|invalid nonce", re.I)
_UNDERPRICED = re.compile(r"replacement transaction underpriced|replacement.*(fee|price).*too low", re.I)
_KNOWN = re.compile(r"already known|already imported|known transaction|already exists", re.I)
_FUNDS = re.compile(r"insufficient funds", re.I)
_REVERTED = re.compile(r"revert", re.I)
#: A refusal of a transaction whose fees are too low for the coming blocks.
_PRICED_OUT = re.compile(r"less than (the )?(block )?base fee|fee cap .*too low|underpriced", re.I)
_TOO_MANY_LOGS = re.compile(
    r"more than \d+ results|too many (results|logs|blocks)|range (is )?too (large|wide|big)|exceed(s|ed)? (the )?max"
    r"|limit exceeded|response size|block range|query timeout|log response size",
    re.I,
)
_METHOD_MISSING = -32601

#: HTTP statuses that mean "the node (or a proxy in front of it) is not serving right now".
_UNAVAILABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
_JSON_HEADERS = {"Content-Type": "application/json"}
#: A node's answers are outside input: parsed with bounded depth and number length, and a size
#: far above any eth_getLogs page the indexer asks for.
MAX_REPLY = 256 << 20
_loads = functools.partial(jsonsafe.loads, max_bytes=MAX_REPLY)


class LogRangeTooLarge(RpcError):
    """``eth_getLogs`` refused the range or the result size; the caller halves the range."""


def _is_revert(code: int | None, message: str) -> bool:
    return code == 3 or bool(_REVERTED.search(message))


def map_rpc_error(method: str, error: dict[str, Any]) -> BridgeError:
    """The bridge error for a JSON-RPC ``error`` object returned by the node."""
    code = error.get("code")
    message = str(error.get("message", ""))
    data = error.get("data")
    if _is_revert(code, message):
        revert_data = data if isinstance(data, str) and data.startswith("0x") else None
        return ContractReverted(
            f"{method}: {describe_revert(revert_data) if revert_data else message}",
            reason=describe_revert(revert_data) if revert_data else message,
            data=revert_data,
            method=method,
        )
    if code == _METHOD_MISSING:
        return Unsupported(f"the node does not offer {method}", code=code, method=method)
    if method == "eth_getLogs" and _TOO_MANY_LOGS.search(message):
        return LogRangeTooLarge(f"eth_getLogs: {message}", code=code, method=method)
    if _NONCE_LOW.search(message) or _UNDERPRICED.search(message) or _KNOWN.search(message):
        return NonceConflict(f"{method}: {message}", code=code, method=method, reason=message)
    if _FUNDS.search(message):
        return InsufficientFunds(f"{method}: {message}", code=code, method=method)
    if method == "eth_sendRawTransaction":
        return TransactionRejected(f"{method}: {message}", code=code, method=method, reason=message)
    return RpcError(f"{method}: {message} (code {code})", code=code, method=method)


def is_already_known(exc: BaseException) -> bool:
    """The node already holds this very transaction (pending or mined)."""
    return isinstance(exc, NonceConflict) and bool(_KNOWN.search(str(exc.details.get("reason", ""))))


def is_nonce_too_low(exc: BaseException) -> bool:
    return isinstance(exc, NonceConflict) and bool(_NONCE_LOW.search(str(exc.details.get("reason", ""))))


def is_priced_out(exc: TransactionRejected) -> bool:
    """The node refused a transaction priced under today's base fee (a node may drop it, Anvil
    refuses it): for its sender the same as stuck in the pool, which a fee bump resolves."""
    return bool(_PRICED_OUT.search(exc.reason or exc.message))


class EvmRpc:
    """JSON-RPC calls to one node; every failure comes out as a ``BridgeError``.

    The transport is a plain keep-alive aiohttp session.  web3's ``AsyncHTTPProvider`` is not
    used for requests: it takes a class-wide ``threading.Lock`` through a thread pool on every
    request, and a request cancelled while waiting for that lock leaves it held for good (every
    later request in the process then hangs).  ``w3`` is kept for ABI encoding only.
    """

    def __init__(self, url: str, timeout: float = 30.0, max_connections: int = 16) -> None:
        self.url = url
        self.timeout = timeout
        self.w3 = AsyncWeb3(AsyncHTTPProvider(url, exception_retry_configuration=None))
        self._http = LoopSession(timeout, max_connections)
        self._ids = itertools.count(1)

    async def _post(self, payload: Any, method: str) -> Any:
        try:
            async with self._http.get().post(self.url, data=json.dumps(payload), headers=_JSON_HEADERS) as resp:
                if resp.status >= 400:
                    resp.raise_for_status()
                body = await resp.read()
            return _loads(body)
        except BaseException as exc:  # noqa: BLE001 - re-raised typed just below
            raise self._transport_error(method, exc) from exc

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        reply = await self._post({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}, method)
        if not isinstance(reply, dict):
            raise ChainUnavailable(f"{self.url} sent a malformed reply to {method}: {reply!r:.200}", method=method)
        if reply.get("error"):
            raise map_rpc_error(method, reply["error"])  # type: ignore[arg-type]
        return reply.get("result")

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in one HTTP request; results in the order of ``calls``.

        Any call failing fails the batch (the first error is raised), so a caller
        never sees a partial answer it could mistake for a complete one.
        """
        if not calls:
            return []
        requests = [{"jsonrpc": "2.0", "id": next(self._ids), "method": m, "params": list(p)} for m, p in calls]
        replies = await self._post(requests, calls[0][0])
        if isinstance(replies, dict):  # the node rejected the batch as a whole
            raise map_rpc_error(calls[0][0], replies.get("error") or {"message": str(replies)})
        by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
        results = []
        for request in requests:
            reply = by_id.get(request["id"])
            if reply is None:
                raise RpcError(f"{request['method']}: no reply in the batch", method=request["method"])
            if reply.get("error"):
                raise map_rpc_error(request["method"], reply["error"])  # type: ignore[arg-type]
            results.append(reply.get("result"))
        return results

    def _transport_error(self, method: str, exc: BaseException) -> BaseException:
        if isinstance(exc, (asyncio.CancelledError, BridgeError)):
            return exc
        if isinstance(exc, aiohttp.ClientResponseError):
            if exc.status in _UNAVAILABLE_STATUS:
                return ChainUnavailable(f"{self.url} answered HTTP {exc.status} to {method}", method=method, status=exc.status)
            return RpcError(f"{self.url} answered HTTP {exc.status} to {method}: {exc.message}", code=exc.status, method=method)
        if isinstance(exc, (aiohttp.ClientError, OSError, asyncio.TimeoutError, ProviderConnectionError)):
            return ChainUnavailable(f"{self.url} did not answer {method}: {type(exc).__name__}: {exc}", method=method)
        if isinstance(exc, (ValueError, jsonsafe.JsonRefused)):  # not JSON: a proxy error page or a non-RPC server
            return ChainUnavailable(f"{self.url} sent a malformed reply to {method}: {exc}", method=method)
        return exc

    async def close(self) -> None:
        await self._http.close()


def ws_url_for(rpc_url: str) -> str:
    """The websocket URL of a node whose JSON-RPC is at ``rpc_url`` (Anvil, geth and reth serve
    both on one port when ws is on)."""
    if rpc_url.startswith(("ws://", "wss://")):
        return rpc_url
    return "ws" + rpc_url.removeprefix("http") if rpc_url.startswith("http") else rpc_url


async def follow_new_heads(ws_url: str, publish: Callable[[dict], None], timeout: float = 10.0) -> None:
    """Subscribe to ``newHeads`` on the node's websocket and ``publish`` each head's header (the
    current one first) until the connection ends.  A node without subscriptions raises ``Unsupported``."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url, heartbeat=30.0, timeout=aiohttp.ClientWSTimeout(ws_close=timeout)) as ws:
            await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]})
            reply = await ws.receive_json(loads=_loads, timeout=timeout)
            if reply.get("error"):
                error = map_rpc_error("eth_subscribe", reply["error"])
                if isinstance(error, Unsupported) or "not supported" in str(reply["error"].get("message", "")).lower():
                    raise Unsupported(f"{ws_url} does not offer eth_subscribe newHeads: {error.message}")
                raise error
            # The subscription announces the next heads only: ask for the current one too.
            await ws.send_json({"jsonrpc": "2.0", "id": 2, "method": "eth_getBlockByNumber", "params": ["latest", False]})
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break  # closed or failed: the follower reconnects
                data = _loads(message.data)
                if data.get("method") == "eth_subscription":
                    header = data["params"]["result"]
                elif data.get("id") == 2 and isinstance(data.get("result"), dict):
                    header = data["result"]
                else:
                    continue
                publish(header)
