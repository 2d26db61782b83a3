"""Raw JSON-RPC to an EVM node over AsyncWeb3's HTTP provider, with typed errors.

The adapter talks to the provider directly (``make_request`` / ``make_batch_request``)
rather than through ``w3.eth``: results stay as the node's JSON (hex strings), which
skips web3's per-field formatters (the log indexer moves ~10^5 logs a second) and
lets errors be mapped once, here, onto the bridge's exception tree.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Sequence

import aiohttp
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ProviderConnectionError

from bridge.errors import (
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

# Node wording differs (geth, reth, anvil, erigon); match loosely, case-insensitively.
_NONCE_LOW = re.compile(r"nonce too low|nonce has already been used|old nonce|invalid nonce", re.I)
_UNDERPRICED = re.compile(r"replacement transaction underpriced|replacement.*(fee|price).*too low", re.I)
_KNOWN = re.compile(r"already known|already imported|known transaction|already exists", re.I)
_FUNDS = re.compile(r"insufficient funds", re.I)
_REVERTED = re.compile(r"revert", re.I)
_TOO_MANY_LOGS = re.compile(
    r"more than \d+ results|too many (results|logs|blocks)|range (is )?too (large|wide|big)|exceed(s|ed)? (the )?max"
    r"|limit exceeded|response size|block range|query timeout|log response size",
    re.I,
)
_METHOD_MISSING = -32601

#: HTTP statuses that mean "the node (or a proxy in front of it) is not serving right now".
_UNAVAILABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


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


class EvmRpc:
    """JSON-RPC calls to one node; every failure comes out as a ``BridgeError``."""

    def __init__(self, url: str, timeout: float = 30.0, max_connections: int = 16) -> None:
        self.url = url
        self.timeout = timeout
        self._max_connections = max_connections
        # web3's own retry of transport errors is off: the bridge's typed policy decides.
        self.provider = AsyncHTTPProvider(url, exception_retry_configuration=None)
        self.w3 = AsyncWeb3(self.provider)
        self._session: aiohttp.ClientSession | None = None
        self._session_lock = asyncio.Lock()

    async def _ensure_session(self) -> None:
        # web3's default session closes the connection after every request; the
        # indexer and concurrent senders want keep-alive.
        if self._session is not None and not self._session.closed:
            return
        async with self._session_lock:
            if self._session is None or self._session.closed:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=self._max_connections),
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                )
                await self.provider.cache_async_session(self._session)

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        await self._ensure_session()
        try:
            reply = await self.provider.make_request(method, list(params))  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - re-raised typed just below
            raise self._transport_error(method, exc) from exc
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
        await self._ensure_session()
        try:
            replies = await self.provider.make_batch_request([(m, list(p)) for m, p in calls])  # type: ignore[misc]
        except BaseException as exc:  # noqa: BLE001
            raise self._transport_error(calls[0][0], exc) from exc
        if isinstance(replies, dict):  # the node rejected the batch as a whole
            raise map_rpc_error(calls[0][0], replies.get("error") or {"message": str(replies)})
        results = []
        for (method, _), reply in zip(calls, replies, strict=True):
            if reply.get("error"):
                raise map_rpc_error(method, reply["error"])  # type: ignore[arg-type]
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
        if isinstance(exc, ValueError):  # not JSON: a proxy error page or a non-RPC server
            return ChainUnavailable(f"{self.url} sent a malformed reply to {method}: {exc}", method=method)
        return exc

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
