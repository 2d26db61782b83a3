"""Replays of the security review's findings against the embedded node as its own process: each
test sends what the review sent and checks the node answers as bitcoind does, quickly, and keeps
serving everyone else."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from aiohttp import web
from bridge.core.testing import wait_until
from node_helpers import Rpc, Wallet

from chains.btc import primitives as p
from devnets.process import free_port
from devnets.regtest.rpc import MAX_BODY

PARSE_ERROR = {"code": -32700, "message": "Parse error"}
OUT_OF_RANGE = {"code": -1, "message": "JSON integer out of range"}


def _rpc(node) -> Rpc:
    return Rpc(node.rpc_url, node.rpc_auth)


async def _raw(rpc: Rpc, method: str, params_json: str, version: str = "1.0") -> tuple[int, dict, float]:
    """Send params as JSON text (so numbers like 1e300000 or NaN go out verbatim); status, reply, seconds."""
    started = time.monotonic()
    status, text = await rpc.raw(f'{{"jsonrpc":"{version}","id":1,"method":"{method}","params":{params_json}}}')
    return status, json.loads(text), time.monotonic() - started


# --- finding 1: a batched long poll held the node's lock ------------------------------------------


async def _active(rpc, method: str) -> bool:
    """Is a call of ``method`` under way on the node (``getrpcinfo``, which answers while it waits)?"""
    return any(c["method"] == method for c in (await asyncio.wait_for(rpc("getrpcinfo"), 5))["active_commands"])


async def test_batched_long_poll_does_not_block_other_calls(own_regtest) -> None:
    rpc = _rpc(own_regtest)
    burn = Wallet.new()
    batch = json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "waitfornewblock"}])  # no timeout
    waiting = asyncio.create_task(rpc.raw(batch))
    await wait_until(lambda: _active(rpc, "waitfornewblock"), timeout=10, what="the batched long poll under way")
    assert not waiting.done()
    # Other connections are served while the batch waits, mining included, and wake it.
    assert await asyncio.wait_for(rpc("getblockcount"), 5) == 0
    [mined] = await asyncio.wait_for(rpc("generatetoaddress", 1, burn.address), 10)
    status, text = await asyncio.wait_for(waiting, 10)
    assert status == 200 and json.loads(text) == [{"jsonrpc": "2.0", "result": {"hash": mined, "height": 1}, "id": 1}]

    # ``stop`` too: it ends the waiting batches, which answer with the current tip, and the process.
    waits = []
    for method, params in (("waitforblockheight", [100]), ("waitforblock", ["11" * 32])):
        batch = json.dumps([{"jsonrpc": "1.0", "id": 2, "method": "getblockcount"}, {"jsonrpc": "1.0", "id": 3, "method": method, "params": params}])
        waits.append(asyncio.create_task(rpc.raw(batch)))
        await wait_until(lambda m=method: _active(rpc, m), timeout=10, what=f"the batched {method} under way")
        assert not waits[-1].done()
        assert await asyncio.wait_for(rpc("getbestblockhash"), 5) == mined
    assert await asyncio.wait_for(rpc("stop"), 5) == "Bitcoin Core stopping"
    for waiting in waits:
        status, text = await asyncio.wait_for(waiting, 10)
        assert status == 200 and json.loads(text)[1]["result"] == {"hash": mined, "height": 1}


# --- finding 2: numbers converted before they were range-checked ----------------------------------


async def test_huge_numbers_are_range_checked_before_conversion(regtest) -> None:
    rpc = _rpc(regtest)
    tip = await rpc("getbestblockhash")
    block = await rpc("getblock", tip)
    txid = block["tx"][0]
    # UniValue::getInt<int> fails on anything but a plain in-range integer: a std::runtime_error,
    # which bitcoind answers as RPC_MISC_ERROR (HTTP 500 for JSON-RPC 1.0, 200 for 2.0).
    for number in ("1e300000", "1e1000000", "-1e999999999", "1e-300000", "2147483648", "-2147483649", "1.0", "1.5", "9" * 100):
        status, reply, took = await _raw(rpc, "getblockhash", f"[{number}]")
        assert (status, reply["error"]) == (500, OUT_OF_RANGE), number
        assert took < 1, (number, took)
    status, reply, _ = await _raw(rpc, "getblockhash", "[1e300000]", version="2.0")
    assert (status, reply["error"]) == (200, OUT_OF_RANGE)
    # gettxout reads n as uint32_t: 2^64 and -1 are both out of range, not a Python overflow.
    for n in (2**64, 2**32, -1):
        status, reply, _ = await _raw(rpc, "gettxout", json.dumps([txid, n]))
        assert (status, reply["error"]) == (500, OUT_OF_RANGE), n
    assert (await rpc("gettxout", txid, 2**32 - 1)) is None
    # NaN and Infinity are not JSON: UniValue refuses the whole body.
    for token in ("NaN", "Infinity", "-Infinity"):
        for method, params in (("getblockhash", f"[{token}]"), ("gettxout", f'["{txid}", {token}]'), ("sendrawtransaction", f'["00", {token}]')):
            status, reply, _ = await _raw(rpc, method, params)
            assert (status, reply) == (500, {"result": None, "error": PARSE_ERROR, "id": None}), (method, token)
    # A verbosity of the wrong type is UniValue's type_error: RPC_TYPE_ERROR with its own words.
    for method, first in (("getblock", tip), ("getrawtransaction", txid)):
        for bad, kind in (('"abc"', "string"), ("[]", "array"), ("{}", "object")):
            status, reply, _ = await _raw(rpc, method, f'["{first}", {bad}]')
            assert reply["error"] == {"code": -3, "message": f"JSON value of type {kind} is not of expected type number"}
            assert status == 500
        status, reply, _ = await _raw(rpc, method, f'["{first}", 1e300000]')
        assert reply["error"] == OUT_OF_RANGE
    # A request id is echoed as it came, without writing out its digits.
    status, text = await rpc.raw('{"jsonrpc":"2.0","id":1e999999999,"method":"getblockcount"}')
    assert status == 200 and len(text) < 200 and json.loads(text, parse_float=str)["id"] == "1E+999999999"
    assert isinstance(await rpc("getblockcount"), int)


# --- finding 3: strings decoded before they were length-checked ------------------------------------


async def test_long_strings_are_refused_before_decoding(regtest) -> None:
    rpc = _rpc(regtest)
    for address in ("x" * 200_000, "1" * 200_000, "bcrt1" + "q" * 200_000):
        for method, params in (("generatetoaddress", [1, address]), ("devnetautomine", [True, address])):
            started = time.monotonic()
            status, text = await rpc.raw(json.dumps({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}))
            assert (status, json.loads(text)["error"]) == (500, {"code": -5, "message": "Error: Invalid address"})
            assert time.monotonic() - started < 1
    # Descriptors: bounded as a whole, and a key or an address inside is bounded before base58.
    for desc in (
        "raw(" + "51" * 3_000_000 + ")",
        "pk(" + "x" * 100_000 + ")",
        "addr(" + "1" * 90_000 + ")",
        "pkh(" + "z" * 5_000 + ")",
        "addr(" + "2" * 5_000 + ")",
    ):
        for method, params in (("scantxoutset", ["start", [desc]]), ("generatetodescriptor", [1, desc])):
            started = time.monotonic()
            status, text = await rpc.raw(json.dumps({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}))
            assert status == 500 and json.loads(text)["error"]["code"] == -5, (method, desc[:20])
            assert time.monotonic() - started < 1, (method, desc[:20])
    # A body over the limit is refused at once with 413, as bitcoind's HTTP server does.
    started = time.monotonic()
    status, _ = await rpc.raw(json.dumps({"method": "scantxoutset", "params": ["start", ["raw(" + "5" * MAX_BODY + ")"]]}))
    assert status == 413 and time.monotonic() - started < 5
    status, _ = await rpc.raw(json.dumps({"method": "scantxoutset", "params": ["start", ["pk(" + "x" * 10_000_000 + ")"]]}))
    assert status == 413
    assert isinstance(await asyncio.wait_for(rpc("getblockcount"), 2), int)


async def test_scan_with_oversized_descriptor_stops_on_sigterm(own_regtest) -> None:
    rpc = _rpc(own_regtest)
    body = json.dumps({"method": "scantxoutset", "params": ["start", ["pk(" + "x" * (MAX_BODY - 100) + ")"]]})
    status, text = await asyncio.wait_for(rpc.raw(body), 10)
    assert status == 500 and json.loads(text)["error"]["code"] == -5
    started = time.monotonic()
    assert own_regtest.stop()
    assert time.monotonic() - started < 10


# --- finding 4: deep nesting ran the C decoder off the stack ---------------------------------------


async def test_deeply_nested_bodies_do_not_crash_the_node(regtest) -> None:
    rpc = _rpc(regtest)
    for body in (
        "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"method":"getblockcount","params":[' + "[" * 100_000 + "]" * 100_001 + "}",
    ):
        status, text = await rpc.raw(body)
        assert (status, json.loads(text)["error"]) == (500, PARSE_ERROR)
    assert isinstance(await rpc("getblockcount"), int)


@pytest.fixture
async def hostile_server():
    """An HTTP server that answers every request with JSON nested 100,000 deep (a node's answers
    are outside input to the clients)."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text="[" * 100_000 + "]" * 100_000, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_rpc_clients_refuse_deeply_nested_answers(hostile_server) -> None:
    from bridge.core.errors import BridgeError
    from bridge.core.retry import NO_RETRY
    from chains.bitcoin_rpc import BitcoinRpc
    from chains.evm_rpc import EvmRpc
    from devnets import jsonrpc

    async with BitcoinRpc(hostile_server, user="u", password="p", retry=NO_RETRY) as btc:
        with pytest.raises(BridgeError):
            await btc.call("getblockcount")
    evm = EvmRpc(hostile_server)
    try:
        with pytest.raises(BridgeError):
            await evm.call("eth_blockNumber")
    finally:
        await evm.close()
    with pytest.raises(BridgeError):
        await asyncio.to_thread(jsonrpc.call, hostile_server, "getblockcount")


# --- finding 5: a second node on a datadir in use -------------------------------------------------


def test_second_node_on_a_datadir_in_use_exits_like_bitcoind(own_regtest) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "devnets.regtest", "--datadir", str(own_regtest.data_dir), "--rpcport", str(free_port())],
        check=False,
        cwd=own_regtest.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    netdir = own_regtest.data_dir / "regtest"
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"Error: Cannot obtain a lock on data directory {netdir}. Bitcoin Core is probably already running.")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert (netdir / ".lock").exists()
    # The running node is untouched and still serving.
    assert own_regtest.rpc("getblockcount") == 0
    own_regtest.stop()
    # Its lock went with it: the datadir can be opened again.
    own_regtest.start()
    assert own_regtest.rpc("getblockcount") == 0


# --- finding 6: a mutated copy marked the real block invalid --------------------------------------


def _without_witness(block: p.Block) -> p.Block:
    txs = [p.Tx(tx.version, [txin._replace(witness=()) for txin in tx.vin], tx.vout, tx.locktime) for tx in block.txs]
    return p.Block(block.header, txs)


async def test_mutated_block_does_not_mark_the_real_block_invalid(own_regtest) -> None:
    rpc = _rpc(own_regtest)
    burn = Wallet.new()
    await rpc("generatetoaddress", 1, burn.address)
    built = await rpc("generateblock", burn.address, [], False)
    block = p.Block.parse(bytes.fromhex(built["hex"]))
    stripped = _without_witness(block)
    assert stripped.hash == block.hash and stripped.serialize() != block.serialize()
    # Core's BLOCK_MUTATED: the coinbase's witness reserved value is gone.
    assert await rpc("submitblock", stripped.serialize().hex()) == "bad-witness-nonce-size"
    assert await rpc("getbestblockhash") != block.hash
    assert await rpc("submitblock", built["hex"]) is None
    assert await rpc("getbestblockhash") == block.hash
    assert await rpc("submitblock", built["hex"]) == "duplicate"
    # The mutated copy of a block the node already has is a duplicate as well (same hash).
    assert await rpc("submitblock", stripped.serialize().hex()) == "duplicate"

    # A block that is invalid itself stays "duplicate-invalid".
    built = await rpc("generateblock", burn.address, [], False)
    bad = p.Block.parse(bytes.fromhex(built["hex"]))
    cb = bad.txs[0]
    cb = p.Tx(cb.version, cb.vin, [cb.vout[0]._replace(value=cb.vout[0].value + 1), *cb.vout[1:]], cb.locktime)
    header = bad.header._replace(merkle_root=p.merkle_root([t.txid_bytes for t in [cb, *bad.txs[1:]]]), nonce=0)
    bad = p.Block(p.solve_regtest(header), [cb, *bad.txs[1:]])
    assert await rpc("submitblock", bad.serialize().hex()) == "bad-cb-amount"
    assert await rpc("submitblock", bad.serialize().hex()) == "duplicate-invalid"
