"""A JSON-RPC 1.0 client for bitcoind (and the embedded regtest node, which speaks the same subset).

Auth is user/password or bitcoind's cookie file; the cookie is re-read whenever the
node says 401, because bitcoind writes a fresh one on every restart.  bitcoind's
error codes become the typed errors of ``bridge.core.errors``.  Only reads are retried:
a write such as ``sendrawtransaction`` or ``generatetoaddress`` is sent once, and
the adapter decides what a failure means (see ``BitcoinAdapter.send``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import itertools
import json
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import aiohttp

from bridge.core import jsonsafe
from bridge.core.errors import (
    AlreadyInChain,
    BridgeError,
    ChainUnavailable,
    ConfigError,
    InputError,
    MissingInputs,
    NotFound,
    RpcError,
    TransactionRejected,
)
from bridge.core.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from chains.btc.rpc_errors import (
    RPC_IN_WARMUP,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_ALREADY_IN_UTXO_SET,
    RPC_VERIFY_ERROR,
    RPC_VERIFY_REJECTED,
)
from chains.http import LoopSession

#: Methods that change nothing on the node, so repeating them after a timeout is harmless.
READ_METHODS = frozenset(
    {
        "getbestblockhash",
        "getblock",
        "getblockchaininfo",
        "getblockcount",
        "getblockhash",
        "getblockheader",
        "getchaintips",
        "getdescriptorinfo",
        "getindexinfo",
        "getmempoolentry",
        "getmempoolinfo",
        "getnetworkinfo",
        "getrawmempool",
        "getrawtransaction",
        "gettxout",
        "decoderawtransaction",
        "decodescript",
        "deriveaddresses",
        "estimatesmartfee",
        "scantxoutset",
        "testmempoolaccept",
        "uptime",
        "validateaddress",
    }
)

# -5 and -8 are catch-all codes; only these messages mean "the thing does not exist".
_NOT_FOUND_HINTS = ("not found", "no such", "out of range", "not in main chain")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many acyclic objects (decoded JSON, events).

    Decoding a batch of verbose blocks allocates millions of dicts and lists; the GC
    would rescan them all again and again (a 5x slowdown measured on 100k txs).  No
    await happens inside, so no other coroutine runs with the GC off.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _json_default(value: Any) -> Any:
    # bitcoind accepts amounts as strings, which keeps Decimal exact on the wire.
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot send {type(value).__name__} over JSON-RPC")


def map_rpc_error(error: dict[str, Any], method: str) -> BridgeError:
    """Turn one JSON-RPC ``error`` object from bitcoind into the bridge's typed error."""
    code = error.get("code")
    message = str(error.get("message", "")) or f"RPC error {code}"
    text = f"{method}: {message}"
    if code == RPC_VERIFY_ERROR:
        return MissingInputs(text, code=code, method=method, reason=message)
    if code == RPC_VERIFY_REJECTED:
        return TransactionRejected(text, code=code, method=method, reason=message)
    if code == RPC_VERIFY_ALREADY_IN_UTXO_SET:
        return AlreadyInChain(text, code=code, method=method, reason=message)
    if code == RPC_IN_WARMUP:
        return ChainUnavailable(f"node is warming up ({method}): {message}", code=code, method=method)
    if code in (RPC_INVALID_ADDRESS_OR_KEY, RPC_INVALID_PARAMETER) and any(h in message.lower() for h in _NOT_FOUND_HINTS):
        return NotFound(text, code=code, method=method)
    return RpcError(text, code=code, method=method)


class BitcoinRpc:
    """``await rpc.call("getblockcount")``; ``await rpc.batch([("getblockhash", [1]), ...])``."""

    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        cookie_file: str | Path | None = None,
        timeout: float = 30,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if (user is None) != (password is None):
            raise ConfigError("bitcoin RPC auth needs both user and password (or a cookie file)")
        self.url = url
        self._static_auth = (user, password) if user is not None else None
        self.cookie_file = Path(cookie_file) if cookie_file is not None else None
        self.timeout = timeout
        self.retry = retry
        self._auth_header: str | None = None
        self._http = LoopSession(timeout, max_connections=8)
        self._ids = itertools.count(1)

    # --- auth -------------------------------------------------------------------

    def _load_auth(self) -> str | None:
        if self._static_auth is not None:
            user, password = self._static_auth
        elif self.cookie_file is not None:
            try:
                user, _, password = self.cookie_file.read_text().strip().partition(":")
            except FileNotFoundError:
                # bitcoind writes the cookie only once it is up: a missing file means "not yet".
                raise ChainUnavailable(f"cookie file {self.cookie_file} does not exist (node not started?)") from None
        else:
            return None
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return f"Basic {token}"

    # --- transport --------------------------------------------------------------

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> "BitcoinRpc":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _post(self, payload: bytes, what: str) -> Any:
        """One HTTP exchange; returns the decoded JSON body (an error body included)."""
        if self._auth_header is None:
            self._auth_header = self._load_auth()
        for attempt in (1, 2):
            headers = {"Content-Type": "application/json"}
            if self._auth_header:
                headers["Authorization"] = self._auth_header
            try:
                async with self._http.get().post(self.url, data=payload, headers=headers) as resp:
                    body = await resp.read()
                    status = resp.status
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError) as exc:
                raise ChainUnavailable(f"bitcoin node at {self.url} did not answer {what}: {exc!r}") from exc
            if status == 401:
                if attempt == 1 and self.cookie_file is not None and self._static_auth is None:
                    self._auth_header = self._load_auth()
                    continue
                raise ConfigError(f"bitcoin node at {self.url} refused the RPC credentials (HTTP 401)")
            break
        try:
            with gc_paused():
                # A node's answer is outside input: bounded depth (the C decoder would otherwise
                # recurse off the stack) and number length; no size bound, a batch of blocks is large.
                return jsonsafe.loads(body, parse_float=Decimal, max_bytes=None)
        except jsonsafe.JsonRefused:
            if status >= 500 or status == 0:
                raise ChainUnavailable(f"bitcoin node at {self.url} answered HTTP {status} to {what}: {body[:200]!r}") from None
            raise RpcError(f"bitcoin node at {self.url} answered HTTP {status} without JSON to {what}: {body[:200]!r}", method=what) from None

    # --- calls ------------------------------------------------------------------

    def _request(self, method: str, params: Sequence[Any] | dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": params}

    def _policy(self, methods: Iterable[str]) -> RetryPolicy:
        return self.retry if all(m in READ_METHODS for m in methods) else NO_RETRY

    async def call(self, method: str, *params: Any, **named: Any) -> Any:
        """Call one method with positional or named params (bitcoind does not mix them)."""
        if params and named:
            raise InputError(f"{method}: pass params either positionally or by name, not both")
        request = self._request(method, named if named else list(params))
        payload = json.dumps(request, default=_json_default).encode()

        async def once() -> Any:
            reply = await self._post(payload, method)
            if not isinstance(reply, dict):
                raise RpcError(f"{method}: malformed JSON-RPC reply {reply!r:.200}", method=method)
            if reply.get("error"):
                raise map_rpc_error(reply["error"], method)
            return reply.get("result")

        return await self._policy([method]).run(once, what=method)

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any] | dict[str, Any]]], return_exceptions: bool = False) -> list[Any]:
        """Send many calls in one HTTP request; results in call order.

        A failed call raises its typed error (the first one in call order), or with
        ``return_exceptions`` stands in the result list as that error.  The whole
        batch is retried only when every call in it is a read.
        """
        if not calls:
            return []
        requests = [self._request(method, list(p) if not isinstance(p, dict) else p) for method, p in calls]
        payload = json.dumps(requests, default=_json_default).encode()
        what = f"batch of {len(calls)} ({calls[0][0]}, ...)"

        async def once() -> list[Any]:
            replies = await self._post(payload, what)
            if not isinstance(replies, list):
                # A batch-level error (e.g. a parse error) comes back as one object.
                if isinstance(replies, dict) and replies.get("error"):
                    raise map_rpc_error(replies["error"], what)
                raise RpcError(f"{what}: malformed JSON-RPC batch reply", method=calls[0][0])
            by_id = {r.get("id"): r for r in replies}
            results = []
            for req in requests:
                reply = by_id.get(req["id"])
                if reply is None:
                    raise RpcError(f"{req['method']}: no reply in batch", method=req["method"])
                if reply.get("error"):
                    error = map_rpc_error(reply["error"], req["method"])
                    if not return_exceptions:
                        raise error
                    results.append(error)
                else:
                    results.append(reply.get("result"))
            return results

        return await self._policy(m for m, _ in calls).run(once, what=what)
