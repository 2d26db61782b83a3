"""One synchronous JSON-RPC call over HTTP, for devnet tooling (start-up probes, funding, status).

The product's clients are the async ``chains.*_rpc`` modules; this is for code that runs before an
event loop exists or from plain test helpers.  bitcoind answers errors with an HTTP error status
*and* a JSON body, so the body is read either way.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any, Sequence

from bridge.core import jsonsafe
from bridge.core.errors import DevnetError, RpcError

#: Answers are outside input (parsed with bounded depth and number length); none of ours is near this.
MAX_REPLY = 256 << 20


def call(url: str, method: str, params: Sequence[Any] = (), *, auth: tuple[str, str] | None = None, timeout: float = 30.0, version: str = "2.0") -> Any:
    """The call's ``result``; a JSON-RPC error raises ``RpcError`` with the node's code and message."""
    body = json.dumps({"jsonrpc": version, "id": 1, "method": method, "params": list(params)}).encode()
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            reply = jsonsafe.loads(resp.read(), max_bytes=MAX_REPLY)
    except urllib.error.HTTPError as exc:
        try:
            reply = jsonsafe.loads(exc.read(), max_bytes=MAX_REPLY)
        except jsonsafe.JsonRefused:
            raise DevnetError(f"{url} {method}: HTTP {exc.code}", url=url, method=method) from None
    error = reply.get("error")
    if error:
        raise RpcError(error.get("message", str(error)), code=error.get("code"), method=method)
    return reply["result"]
