"""Unit tests of BitcoinRpc's protocol handling against a small aiohttp server.

The server plays bitcoind at the HTTP edge only (status codes, JSON-RPC bodies,
auth); everything above it is the real client.  Integration against the real
regtest node is in test_bitcoin_integration.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from decimal import Decimal
from typing import Any, Callable

import pytest
from aiohttp import web

from bridge.core.errors import (
    AlreadyInChain,
    ChainUnavailable,
    ConfigError,
    InputError,
    MissingInputs,
    NotFound,
    RpcError,
    TransactionRejected,
)
from bridge.core.retry import RetryPolicy
from chains.bitcoin import BitcoinAdapter
from chains.bitcoin_rpc import BitcoinRpc
from chains.bitcoin_wallet import BtcKey, Utxo, build_payment
from devnets.process import free_port

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)


def _dumps(obj: Any) -> str:
    # bitcoind writes amounts as bare JSON numbers with 8 decimals; so does the fake.
    marked = json.dumps(obj, default=lambda d: f"@@{d:.8f}@@")
    return marked.replace('"@@', "").replace('@@"', "")


class FakeNode:
    """Answers JSON-RPC like bitcoind: HTTP 500 + JSON error body, batches as arrays, basic auth."""

    def __init__(self) -> None:
        self.password = "pw1"
        self.calls: list[str] = []
        self.handlers: dict[str, Callable[[list[Any]], Any]] = {}
        self.raw_response: tuple[int, bytes] | None = None
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        expected = "Basic " + base64.b64encode(f"__cookie__:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, text="")
        if self.raw_response is not None:
            status, body = self.raw_response
            return web.Response(status=status, body=body)
        body = json.loads(await request.read(), parse_float=Decimal)
        if isinstance(body, list):
            return web.Response(status=200, text=_dumps([self.one(r) for r in body]))
        reply = self.one(body)
        return web.Response(status=500 if reply["error"] else 200, text=_dumps(reply))

    def one(self, req: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(req["method"])
        handler = self.handlers.get(req["method"])
        if handler is None:
            return {"result": None, "error": {"code": -32601, "message": "Method not found"}, "id": req["id"]}
        try:
            return {"result": handler(req["params"]), "error": None, "id": req["id"]}
        except RpcFault as fault:
            return {"result": None, "error": {"code": fault.code, "message": fault.message}, "id": req["id"]}


class RpcFault(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code, self.message = code, message


def failing(code: int, message: str) -> Callable[[list[Any]], Any]:
    def handler(params: list[Any]) -> Any:
        raise RpcFault(code, message)

    return handler


@pytest.fixture
async def node():
    fake = FakeNode()
    app = web.Application()
    app.router.add_post("/", fake.handle)
    fake.runner = web.AppRunner(app)
    await fake.runner.setup()
    port = free_port()
    await web.TCPSite(fake.runner, "127.0.0.1", port).start()
    fake.url = f"http://127.0.0.1:{port}/"
    yield fake
    await fake.runner.cleanup()


@pytest.fixture
def cookie(tmp_path):
    path = tmp_path / ".cookie"
    path.write_text("__cookie__:pw1")
    return path


@pytest.fixture
async def rpc(node, cookie):
    client = BitcoinRpc(node.url, cookie_file=cookie, retry=FAST_RETRY)
    yield client
    await client.close()


async def test_call_returns_result_with_decimal_amounts(node, rpc):
    node.handlers["getblockcount"] = lambda p: 101
    node.handlers["gettxout"] = lambda p: {"value": Decimal("0.12345678"), "n": p[1]}
    assert await rpc.call("getblockcount") == 101
    out = await rpc.call("gettxout", "ab" * 32, 1, True)
    assert out["value"] == Decimal("0.12345678") and isinstance(out["value"], Decimal)


async def test_named_params_go_as_an_object(node, rpc):
    node.handlers["getblock"] = lambda p: p
    assert await rpc.call("getblock", blockhash="00" * 32, verbosity=2) == {"blockhash": "00" * 32, "verbosity": 2}
    with pytest.raises(InputError):
        await rpc.call("getblock", "00", verbosity=2)


@pytest.mark.parametrize(
    ("code", "message", "error_type"),
    [
        (-25, "bad-txns-inputs-missingorspent", MissingInputs),
        (-26, "min relay fee not met, 100 < 141", TransactionRejected),
        (-27, "Transaction outputs already in utxo set", AlreadyInChain),
        (-28, "Loading block index…", ChainUnavailable),
        (-5, "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.", NotFound),
        (-5, "Block not found", NotFound),
        (-8, "Block height out of range", NotFound),
        (-8, "verbosity must be in range 0..3", RpcError),
        (-5, "Invalid address", RpcError),
        (-32601, "Method not found", RpcError),
    ],
)
async def test_error_codes_map_to_typed_errors(node, rpc, code, message, error_type):
    node.handlers["m"] = failing(code, message)
    with pytest.raises(error_type) as info:
        await rpc.call("m")
    err = info.value
    assert type(err) is error_type
    assert err.details["code"] == code
    if isinstance(err, TransactionRejected):
        assert err.reason == message


async def test_rejected_reason_is_the_nodes(node, rpc):
    reason = "mandatory-script-verify-flag-failed (Signature must be zero for failed CHECK(MULTI)SIG operation)"
    node.handlers["sendrawtransaction"] = failing(-26, reason)
    with pytest.raises(TransactionRejected) as info:
        await rpc.call("sendrawtransaction", "00")
    assert info.value.reason.startswith("mandatory-script-verify-flag-failed")
    assert node.calls == ["sendrawtransaction"]


async def test_batch_returns_results_in_call_order(node, rpc):
    node.handlers["getblockhash"] = lambda p: f"hash{p[0]}"
    assert await rpc.batch([("getblockhash", [h]) for h in range(5)]) == [f"hash{h}" for h in range(5)]
    assert await rpc.batch([]) == []
    assert node.calls == ["getblockhash"] * 5  # one HTTP request carried all five


async def test_batch_raises_the_first_failed_calls_typed_error(node, rpc):
    def height(params):
        if params[0] > 2:
            raise RpcFault(-8, "Block height out of range")
        return f"hash{params[0]}"

    node.handlers["getblockhash"] = height
    with pytest.raises(NotFound, match="out of range"):
        await rpc.batch([("getblockhash", [h]) for h in range(5)])


async def test_cookie_is_reread_when_the_node_restarts(node, rpc, cookie):
    node.handlers["getblockcount"] = lambda p: 1
    assert await rpc.call("getblockcount") == 1
    # bitcoind writes a new cookie on restart; the client's cached one is now stale.
    node.password = "pw2"
    cookie.write_text("__cookie__:pw2")
    assert await rpc.call("getblockcount") == 1


async def test_wrong_credentials_are_a_config_error(node, rpc, cookie):
    node.password = "other"
    with pytest.raises(ConfigError, match="401"):
        await rpc.call("getblockcount")


async def test_missing_cookie_means_node_not_up(node, tmp_path):
    client = BitcoinRpc(node.url, cookie_file=tmp_path / "nope", retry=FAST_RETRY)
    with pytest.raises(ChainUnavailable, match="cookie"):
        await client.call("getblockcount")
    await client.close()


async def test_user_and_password_auth(node):
    node.handlers["getblockcount"] = lambda p: 7
    async with BitcoinRpc(node.url, user="__cookie__", password="pw1", retry=FAST_RETRY) as client:
        assert await client.call("getblockcount") == 7
    with pytest.raises(ConfigError):
        BitcoinRpc(node.url, user="only-user")


async def test_reads_are_retried_after_warmup(node, rpc):
    attempts = []

    def warming(params):
        attempts.append(1)
        if len(attempts) < 3:
            raise RpcFault(-28, "Verifying blocks…")
        return 5

    node.handlers["getblockcount"] = warming
    assert await rpc.call("getblockcount") == 5
    assert len(attempts) == 3


async def test_writes_are_never_retried(node, rpc):
    node.handlers["sendrawtransaction"] = failing(-28, "Loading block index…")
    node.handlers["generatetoaddress"] = failing(-28, "Loading block index…")
    with pytest.raises(ChainUnavailable):
        await rpc.call("sendrawtransaction", "00")
    with pytest.raises(ChainUnavailable):
        await rpc.call("generatetoaddress", 1, "bcrt1q")
    assert node.calls == ["sendrawtransaction", "generatetoaddress"]


async def test_batch_with_a_write_is_not_retried(node, rpc):
    node.handlers["getblockcount"] = failing(-28, "warming up")
    node.handlers["generatetoaddress"] = failing(-28, "warming up")
    with pytest.raises(ChainUnavailable):
        await rpc.batch([("getblockcount", []), ("generatetoaddress", [1, "x"])])
    assert node.calls == ["getblockcount", "generatetoaddress"]
    node.calls.clear()
    with pytest.raises(ChainUnavailable):
        await rpc.batch([("getblockcount", []), ("getblockcount", [])])
    assert len(node.calls) == 2 * FAST_RETRY.attempts


async def test_5xx_without_json_is_unavailable_and_retried_for_reads(node, rpc):
    node.raw_response = (503, b"Work queue depth exceeded")
    with pytest.raises(ChainUnavailable, match="503"):
        await rpc.call("getblockcount")


async def test_connection_refused_is_unavailable(cookie):
    client = BitcoinRpc(f"http://127.0.0.1:{free_port()}/", cookie_file=cookie, retry=FAST_RETRY)
    with pytest.raises(ChainUnavailable, match="did not answer"):
        await client.call("getblockcount")
    await client.close()


async def test_timeout_is_unavailable(cookie):
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="{}")

    app = web.Application()
    app.router.add_post("/", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = BitcoinRpc(f"http://127.0.0.1:{port}/", cookie_file=cookie, timeout=0.2, retry=RetryPolicy(attempts=1))
    try:
        with pytest.raises(ChainUnavailable, match="did not answer"):
            await client.call("getblockcount")
    finally:
        release.set()
        await client.close()
        await runner.cleanup()


# --- adapter behaviour that the real node cannot be made to show on demand ---------------


async def test_utxo_scan_waits_out_a_scan_already_in_progress(node, rpc):
    key = BtcKey.generate()
    busy = [True, True]

    def scan(params):
        if busy:
            busy.pop()
            raise RpcFault(-8, 'Scan already in progress, use action "abort" or "status"')
        return {"success": True, "unspents": [{"txid": "aa" * 32, "vout": 1, "scriptPubKey": key.p2wpkh_script.hex(), "amount": Decimal("1.5"), "height": 7}]}

    node.handlers["scantxoutset"] = scan
    node.handlers["gettxout"] = lambda p: {"confirmations": 3, "coinbase": False}
    coins = await BitcoinAdapter(rpc).utxos([key.p2wpkh_address()])
    assert coins == [Utxo("aa" * 32, 1, 150_000_000, key.p2wpkh_script, 7)]
    assert node.calls.count("scantxoutset") == 3


async def test_send_after_a_lost_reply_checks_the_chain_before_failing(node, rpc):
    key = BtcKey.generate()
    signed = build_payment([key], [Utxo("bb" * 32, 0, 100_000, key.p2wpkh_script, 1)], [(key.p2wpkh_address(), 50_000)], feerate=2)
    landed = {"yes": False}

    def send(params):
        # The first broadcast lands but its reply is lost as the node goes into warm-up.
        landed["yes"] = True
        raise RpcFault(-28, "Loading block index…")

    def getraw(params):
        if landed["yes"] and params[0] == signed.txid:
            return "00"
        raise RpcFault(-5, "No such mempool or blockchain transaction")

    node.handlers["sendrawtransaction"] = send
    node.handlers["getrawtransaction"] = getraw
    node.handlers["gettxout"] = lambda p: None
    adapter = BitcoinAdapter(rpc)
    assert await adapter.send(signed.raw_hex) == signed.txid
    assert node.calls.count("sendrawtransaction") == 1

    landed["yes"] = False
    node.handlers["sendrawtransaction"] = failing(-28, "warming up")
    with pytest.raises(ChainUnavailable):
        await adapter.send(signed.raw_hex)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"feerate": Decimal("0.00012345"), "blocks": 2}, 13),  # 12.345 sat/vB, rounded up
        ({"feerate": Decimal("0.00001000"), "blocks": 2}, 1),
        ({"errors": ["Insufficient data or no feerate found"], "blocks": 0}, 7),
    ],
)
async def test_feerate_estimate_in_sat_per_vbyte_with_fallback(node, rpc, reply, expected):
    node.handlers["estimatesmartfee"] = lambda p: reply
    assert await BitcoinAdapter(rpc, fallback_feerate=7).estimate_feerate(2) == expected


async def test_batch_can_return_errors_in_place(node, rpc):
    def height(params):
        if params[0] == 1:
            raise RpcFault(-8, "Block height out of range")
        return f"hash{params[0]}"

    node.handlers["getblockhash"] = height
    results = await rpc.batch([("getblockhash", [h]) for h in range(3)], return_exceptions=True)
    assert results[0] == "hash0" and results[2] == "hash2"
    assert isinstance(results[1], NotFound)


async def test_txout_is_typed_and_the_mempool_spender_found_without_gettxspendingprevout(node, rpc):
    """``txout``: sats, script and depth of an unspent output; ``mempool_spender``: one
    ``gettxspendingprevout``, or on a node without it (bitcoind < 24) a look through the mempool."""
    from chains.bitcoin import TxOut

    node.handlers["gettxout"] = lambda p: (
        {"value": Decimal("0.00012345"), "scriptPubKey": {"hex": "0014" + "ab" * 20}, "confirmations": 2} if p[1] == 1 else None
    )
    adapter = BitcoinAdapter(rpc)
    assert await adapter.txout("aa" * 32, 1) == TxOut(12_345, bytes.fromhex("0014" + "ab" * 20), 2, False)
    assert await adapter.txout("aa" * 32, 0) is None

    spender = {"txid": "cc" * 32, "vin": [{"txid": "aa" * 32, "vout": 1}]}
    other = {"txid": "dd" * 32, "vin": [{"txid": "aa" * 32, "vout": 0}]}
    node.handlers["getrawtransaction"] = lambda p: {"cc" * 32: spender, "dd" * 32: other}[p[0]]
    node.handlers["gettxspendingprevout"] = lambda p: [{**p[0][0], "spendingtxid": "cc" * 32} if p[0][0]["vout"] == 1 else p[0][0]]
    assert await adapter.mempool_spender(("aa" * 32, 1)) == spender
    assert await adapter.mempool_spender(("aa" * 32, 2)) is None
    assert "getrawmempool" not in node.calls

    node.handlers["gettxspendingprevout"] = failing(-32601, "Method not found")
    node.handlers["getrawmempool"] = lambda p: ["dd" * 32, "cc" * 32]
    assert await adapter.mempool_spender(("aa" * 32, 1)) == spender
    assert await adapter.mempool_spender(("aa" * 32, 2)) is None
