"""Fuzz every RPC method of the embedded node (as its own process) with hostile JSON params: deep
nesting, huge and non-finite numbers, long strings, wrong types.  Each answer must be a JSON-RPC
reply with the HTTP status bitcoind gives it, never a dropped connection or an unexpected Python
exception (the server logs those as ``RPC <method> failed`` with a traceback and answers -1), and the
node must still answer ``getblockcount`` afterwards.

The default run takes a few examples per method; ``-m slow`` runs many more."""

from __future__ import annotations

import http.client
import json
import time
from base64 import b64encode
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devnets.regtest.methods import REGISTRY

#: Left out: they end the node or rewrite its chain (covered by their own tests).
DESTRUCTIVE = {"stop", "devnetreorg"}
#: Long polls: fuzzed with their timeout argument (this position) forced to a few milliseconds.
WAIT_TIMEOUT_AT = {"waitfornewblock": 0, "waitforblock": 1, "waitforblockheight": 1}
#: These mine as many blocks as asked; a fuzzed count is kept small (bitcoind would mine them all too).
MINING_COUNT = {"generatetoaddress", "generatetodescriptor"}
METHODS = sorted(set(REGISTRY) - DESTRUCTIVE)
ADDRESS = "bcrt1qfdes8c308vmyhjgl9wl7nkdsflfc8fupv5e20k"

#: HTTP status bitcoind answers a JSON-RPC 1.0 error with (httprpc.cpp ``JSONErrorReply``).
_V1_STATUS = {-32600: 400, -32601: 404}


class Raw:
    """JSON text sent verbatim (what a Python value cannot express: NaN, 1e300000, deep nesting)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}{'...' if len(self.text) > 40 else ''} len={len(self.text)})"


def to_json(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


_numbers = st.one_of(
    st.integers(min_value=-5, max_value=300),
    st.integers(),
    st.sampled_from([2**31 - 1, 2**31, -(2**31) - 1, 2**32 - 1, 2**32, 2**63, 2**64, -(2**64), 10**99]),
    st.sampled_from(
        [
            "1e300000",
            "1e1000000",
            "-1e999999999",
            "1e-300000",
            "1.0",
            "1.5",
            "-0",
            "0.00000001",
            "21000001",
            "1E+2",
            "9" * 100,
            "9" * 101,
            "NaN",
            "Infinity",
            "-Infinity",
        ]
    ).map(Raw),
    st.decimals(allow_nan=False, allow_infinity=False, places=8).map(lambda d: Raw(str(d))),
)
_strings = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "",
            "abc",
            "00",
            "zz",
            "start",
            "abort",
            "status",
            "txindex",
            "economical",
            ADDRESS,
            "11" * 32,
            "00" * 32,
            "0" * 63,
            "raw(51)",
            f"addr({ADDRESS})",
            "pk(" + "02" + "11" * 32 + ")",
            "combo(x)",
            "sh(wsh(multi(1," + "02" + "11" * 32 + ")))",
            "wsh(" * 50 + ")" * 50,
            "\x1fN1\x1f",
        ]
    ),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "1", "q", "0", "5", "(", "[", "\\", '"']), st.sampled_from([64, 91, 5_000, 100_001, 1_000_000])),
    st.binary(max_size=200).map(bytes.hex),
)
_nested = st.builds(
    lambda n, open_, close: Raw(open_ * n + ("1" if open_ == '{"a":' else "") + close * n),
    st.sampled_from([10, 63, 64, 65, 1_000, 100_000]),
    st.sampled_from(["["]),
    st.sampled_from(["]"]),
) | st.sampled_from([10, 64, 100_000]).map(lambda n: Raw('{"a":' * n + "1" + "}" * n))
_scalars = st.one_of(st.none(), st.booleans(), _numbers, _strings, _nested)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["txid", "vout", "desc", "a", ""]), inner, max_size=3),
    ),
    max_leaves=8,
)


@st.composite
def calls(draw, method: str) -> dict[str, Any]:
    """One request: positional or named params of fuzzed values, JSON-RPC 1.0 or 2.0, maybe batched."""
    names = [a.name for a in REGISTRY[method].args]
    if names and draw(st.integers(0, 4)) == 0:
        params: Any = {name: draw(_values) for name in draw(st.lists(st.sampled_from(names + ["bogus"]), max_size=3))}
    else:
        params = draw(st.lists(_values, max_size=max(len(names) + 1, 1)))
    if method in WAIT_TIMEOUT_AT:
        at = WAIT_TIMEOUT_AT[method]
        params = list(params.values()) if isinstance(params, dict) else params
        params = (params + [None] * (at + 1))[: max(len(params), at + 1)]
        params[at] = draw(st.integers(1, 20))
    if (
        method in MINING_COUNT
        and isinstance(params, list)
        and params
        and isinstance(params[0], int)
        and not isinstance(params[0], bool)
        and 3 < params[0] < 2**31
    ):
        params[0] = 1
    return {"version": draw(st.sampled_from(["1.0", "2.0"])), "batch": draw(st.booleans()), "params": params}


class NodeClient:
    """Raw HTTP, so a dropped connection or a non-JSON answer shows as such."""

    def __init__(self, node) -> None:
        self.node = node
        user, password = node.rpc_auth
        self.auth = "Basic " + b64encode(f"{user}:{password}".encode()).decode()
        self.log_offset = 0

    def post(self, body: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.node.host, self.node.port, timeout=60)
        try:
            conn.request("POST", "/", body=body.encode(), headers={"Authorization": self.auth, "Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def call(self, method: str, *params: Any) -> Any:
        _, body = self.post(json.dumps({"jsonrpc": "1.0", "id": 0, "method": method, "params": list(params)}))
        reply = json.loads(body)
        assert reply["error"] is None, reply
        return reply["result"]

    def new_log(self) -> str:
        with open(self.node.log_file, "rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        self.log_offset += len(data)
        return data.decode(errors="replace")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from devnets.bitcoin_node import BitcoinNode

    node = BitcoinNode(tmp_path_factory.mktemp("fuzz-regtest"))
    node.start()
    c = NodeClient(node)
    c.call("generatetoaddress", 3, ADDRESS)
    c.new_log()
    yield c
    node.stop()


def _check_reply(method: str, reply: Any, version: str) -> None:
    """1.0: ``result``, ``error`` and ``id`` always; 2.0: ``result`` or ``error`` (bitcoind 28)."""
    assert isinstance(reply, dict), reply
    if version == "2.0":
        assert reply.get("jsonrpc") == "2.0" and len({"result", "error"} & set(reply)) == 1 and "id" in reply, reply
    else:
        assert {"result", "error", "id"} == set(reply), reply
    error = reply.get("error")
    if error is None:
        return
    assert isinstance(error, dict) and isinstance(error.get("code"), int) and isinstance(error.get("message"), str), reply
    assert reply.get("result") is None


def _fuzz_one(client: NodeClient, method: str, call: dict[str, Any]) -> None:
    version = call["version"]
    request = f'{{"jsonrpc":"{version}","id":7,"method":"{method}","params":{to_json(call["params"])}}}'
    body = f"[{request}]" if call["batch"] else request
    started = time.monotonic()
    status, raw = client.post(body)  # a dropped connection raises here
    took = time.monotonic() - started
    reply = json.loads(raw)
    if isinstance(reply, dict) and reply.get("error") == {"code": -32700, "message": "Parse error"}:
        # The whole body refused (NaN, too deep, a number too long): UniValue's answer, HTTP 500.
        assert status == 500 and reply["id"] is None
    elif call["batch"]:
        assert status == 200 and isinstance(reply, list) and len(reply) == 1, (status, reply)
        _check_reply(method, reply[0], version)
    else:
        _check_reply(method, reply, version)
        error = reply.get("error")
        if version == "2.0" or error is None:
            assert status == 200, (status, reply)
        else:
            assert status == _V1_STATUS.get(error["code"], 500), (status, reply)
    log = client.new_log()
    assert "Traceback" not in log and " failed" not in log.replace("block not accepted", ""), log[-3000:]
    assert took < 10, (method, took)
    # Undo what a fuzzed call may leave behind for the next one.
    if method == "setmocktime":
        client.call("setmocktime", 0)
    if method == "devnetautomine":
        client.call("devnetautomine", False)
    assert isinstance(client.call("getblockcount"), int)


def test_fuzz_covers_every_method_help_lists(client) -> None:
    listing = client.call("help")
    listed = {line.split()[0] for line in listing.splitlines() if line and not line.startswith("==")}
    assert listed - DESTRUCTIVE <= set(METHODS) and listed <= set(REGISTRY)


_SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=8, deadline=None, suppress_health_check=_SUPPRESS, database=None)
@given(data=st.data())
def test_fuzz_method(client, method: str, data) -> None:
    _fuzz_one(client, method, data.draw(calls(method), label="call"))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=300, deadline=None, suppress_health_check=_SUPPRESS, database=None)
@given(data=st.data())
def test_fuzz_method_long(client, method: str, data) -> None:
    _fuzz_one(client, method, data.draw(calls(method), label="call"))
