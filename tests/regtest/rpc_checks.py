"""RPC checks that hold for bitcoind -regtest and for the embedded node alike.

Each check talks to a backend only through its RPC URL and credentials, so the same functions run
against the embedded node and against a real bitcoind (both in test_rpc_compat_checks.py)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from node_helpers import Coin, NodeError, Rpc, Wallet, fund, spend_p2wpkh

from chains.btc import primitives as p

FEE = 1_000
MAX_BODY = 0x02000000


async def check_blocks_and_headers(rpc: Rpc) -> None:
    burn = Wallet.new()
    start = await rpc("getblockcount")
    hashes = await rpc("generatetoaddress", 3, burn.address)
    assert len(hashes) == 3 and await rpc("getblockcount") == start + 3
    assert await rpc("getbestblockhash") == hashes[-1]
    assert await rpc("getblockhash", start + 3) == hashes[-1]
    info = await rpc("getblockchaininfo")
    assert info["chain"] == "regtest" and info["blocks"] == start + 3 and info["bestblockhash"] == hashes[-1]
    header = await rpc("getblockheader", hashes[1])
    assert header["height"] == start + 2 and header["confirmations"] == 2
    assert header["previousblockhash"] == hashes[0] and header["nextblockhash"] == hashes[2]
    assert header["bits"] == "207fffff" and header["nTx"] == 1
    assert len(await rpc("getblockheader", hashes[1], False)) == 160
    block = await rpc("getblock", hashes[1])
    assert block["tx"] and block["height"] == start + 2 and block["weight"] > 0
    assert {
        "hash",
        "confirmations",
        "size",
        "strippedsize",
        "weight",
        "height",
        "version",
        "versionHex",
        "merkleroot",
        "tx",
        "time",
        "mediantime",
        "nonce",
        "bits",
        "difficulty",
        "chainwork",
        "nTx",
    } <= set(block)
    full = await rpc("getblock", hashes[1], 2)
    coinbase = full["tx"][0]
    assert "coinbase" in coinbase["vin"][0] and coinbase["vout"][0]["scriptPubKey"]["address"] == burn.address
    assert isinstance(coinbase["vout"][0]["value"], Decimal)
    raw = await rpc("getblock", hashes[1], 0)
    assert p.Block.parse(bytes.fromhex(raw)).hash == hashes[1]


async def check_spend_lookups_and_mempool(rpc: Rpc) -> None:
    alice, bob, burn = Wallet.new(), Wallet.new(), Wallet.new()
    coin = await fund(rpc, alice, burn.address)
    tx = spend_p2wpkh(alice, [coin], [(bob.script, 100_000), (alice.script, coin.value - 100_000 - FEE)])
    hex_ = tx.serialize().hex()
    [test] = await rpc("testmempoolaccept", [hex_])
    assert test["allowed"] is True and test["txid"] == tx.txid and test["vsize"] == tx.vsize
    assert test["fees"]["base"] == Decimal("0.00001000")
    assert await rpc("sendrawtransaction", hex_) == tx.txid
    entry = await rpc("getmempoolentry", tx.txid)
    assert entry["vsize"] == tx.vsize and entry["fees"]["base"] == Decimal("0.00001000") and entry["depends"] == []
    decoded = await rpc("decoderawtransaction", hex_)
    assert (decoded["txid"], decoded["hash"], decoded["vsize"], decoded["weight"]) == (tx.txid, tx.wtxid, tx.vsize, tx.weight)
    assert decoded["vout"][0]["value"] == Decimal("0.00100000")
    assert decoded["vout"][0]["scriptPubKey"]["type"] == "witness_v0_keyhash"
    script = await rpc("decodescript", bob.script.hex())
    assert script["type"] == "witness_v0_keyhash" and script["address"] == bob.address
    mem = await rpc("getrawtransaction", tx.txid, True)
    assert mem["hex"] == hex_ and "blockhash" not in mem
    [block_hash] = await rpc("generatetoaddress", 1, burn.address)
    got = await rpc("getrawtransaction", tx.txid, True)
    assert got["blockhash"] == block_hash and got["confirmations"] == 1 and got["blocktime"] == got["time"]
    assert await rpc("getrawtransaction", tx.txid, False, block_hash) == hex_
    out = await rpc("gettxout", tx.txid, 0)
    assert out["value"] == Decimal("0.00100000") and out["confirmations"] == 1 and out["coinbase"] is False
    assert out["scriptPubKey"]["address"] == bob.address and out["bestblock"] == block_hash
    scan = await rpc("scantxoutset", "start", [f"addr({bob.address})", {"desc": f"raw({alice.script.hex()})"}])
    assert scan["success"] is True
    assert {(u["txid"], u["vout"]) for u in scan["unspents"]} == {(tx.txid, 0), (tx.txid, 1)}
    assert scan["total_amount"] == Decimal(coin.value - FEE).scaleb(-8)

    # Spending it again: missing inputs (-25); sending the confirmed tx again: outputs in the UTXO set (-27).
    again = spend_p2wpkh(alice, [coin], [(alice.script, coin.value - 2 * FEE)])
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", again.serialize().hex())
    assert (err.value.code, err.value.message) == (-25, "bad-txns-inputs-missingorspent")
    [rejected] = await rpc("testmempoolaccept", [again.serialize().hex()])
    assert rejected["allowed"] is False and rejected["reject-reason"] == "missing-inputs"
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", hex_)
    assert (err.value.code, err.value.message) == (-27, "Transaction outputs already in utxo set")


async def check_policy_rejections(rpc: Rpc) -> None:
    alice, burn = Wallet.new(), Wallet.new()
    coin = await fund(rpc, alice, burn.address)
    low_fee = spend_p2wpkh(alice, [coin], [(alice.script, coin.value - 100)])
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", low_fee.serialize().hex())
    assert (err.value.code, err.value.message) == (-26, f"min relay fee not met, 100 < {low_fee.vsize}")
    dust = spend_p2wpkh(alice, [coin], [(alice.script, 293), (alice.script, coin.value - 293 - FEE)])
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", dust.serialize().hex())
    assert (err.value.code, err.value.message) == (-26, "dust")
    greedy = spend_p2wpkh(alice, [coin], [(alice.script, 1_000_000)])
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", greedy.serialize().hex())
    assert (err.value.code, err.value.message) == (-25, "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)")
    # Immature coinbase.
    [fresh] = await rpc("generatetoaddress", 1, alice.address)
    cb = p.Block.parse(bytes.fromhex(await rpc("getblock", fresh, 0))).txs[0]
    await rpc("generatetoaddress", 49, burn.address)
    early = spend_p2wpkh(alice, [Coin(cb.txid, 0, cb.vout[0].value)], [(alice.script, cb.vout[0].value - FEE)])
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", early.serialize().hex())
    assert (err.value.code, err.value.message) == (-26, "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth 50")


async def check_errors_keep_the_node_serving(rpc: Rpc) -> None:
    async def fails(method: str, *params) -> tuple[int, str]:
        with pytest.raises(NodeError) as err:
            await rpc(method, *params)
        return err.value.code, err.value.message

    assert await fails("sendrawtransaction", "zz") == (-22, "TX decode failed")
    assert await fails("sendrawtransaction", "0200") == (-22, "TX decode failed")
    assert await fails("decoderawtransaction", "00") == (-22, "TX decode failed")
    assert await fails("getblockhash", "1") == (
        -3,
        'Wrong type passed:\n{\n    "Position 1 (height)": "JSON value of type string is not of expected type number"\n}',
    )
    assert await fails("getblockhash", -1) == (-8, "Block height out of range")
    assert await fails("getblock", "abc") == (-8, "blockhash must be of length 64 (not 3, for 'abc')")
    assert await fails("getblock", "00" * 32) == (-5, "Block not found")
    assert (await fails("getrawtransaction", "11" * 32))[0] == -5
    assert await fails("getmempoolentry", "11" * 32) == (-5, "Transaction not in mempool")
    assert (await fails("getbalance"))[0] == -18

    status, text = await rpc.raw(json.dumps({"jsonrpc": "1.0", "id": 7, "method": "nosuchmethod", "params": []}))
    assert status == 404 and json.loads(text) == {"result": None, "error": {"code": -32601, "message": "Method not found"}, "id": 7}
    status, text = await rpc.raw(json.dumps({"jsonrpc": "2.0", "id": 8, "method": "nosuchmethod", "params": []}))
    assert status == 200 and json.loads(text) == {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 8}
    status, text = await rpc.raw("{not json")
    assert status == 500 and json.loads(text)["error"] == {"code": -32700, "message": "Parse error"}
    status, text = await rpc.raw(json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "getblockcount"}, {"jsonrpc": "2.0", "id": 2, "method": "nosuchmethod"}]))
    replies = json.loads(text)
    assert status == 200 and [r["id"] for r in replies] == [1, 2]
    assert isinstance(replies[0]["result"], int) and replies[1]["error"]["code"] == -32601
    status, text = await rpc.raw(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "getblockhash", "params": {"height": 0}}))
    assert status == 200 and len(json.loads(text)["result"]) == 64

    bad_auth = dict(rpc.headers, Authorization="Basic " + "d3Jvbmc6d3Jvbmc=")
    status, text = await rpc.raw(json.dumps({"method": "getblockcount"}), headers=bad_auth)
    assert (status, text) == (401, "")
    status, text = await rpc.raw(json.dumps({"method": "getblockcount"}), headers={"Content-Type": "application/json"})
    assert (status, text) == (401, "")
    status, _ = await rpc.raw(b"[" + b" " * MAX_BODY + b"]")
    assert status == 413

    assert isinstance(await rpc("getblockcount"), int)


def _resolve(block: p.Block, coinbase_value_delta: int = 0) -> p.Block:
    cb = block.txs[0]
    if coinbase_value_delta:
        cb = p.Tx(cb.version, cb.vin, [cb.vout[0]._replace(value=cb.vout[0].value + coinbase_value_delta), *cb.vout[1:]], cb.locktime)
    txs = [cb, *block.txs[1:]]
    header = block.header._replace(merkle_root=p.merkle_root([t.txid_bytes for t in txs]), nonce=0)
    return p.Block(p.solve_regtest(header), txs)


async def check_mining_rpcs(rpc: Rpc) -> None:
    alice, burn = Wallet.new(), Wallet.new()
    coin = await fund(rpc, alice, burn.address)
    tx = spend_p2wpkh(alice, [coin], [(alice.script, coin.value - FEE)])
    await rpc("sendrawtransaction", tx.serialize().hex())

    # generateblock: explicit txids, not submitted, then submitblock by hand.
    built = await rpc("generateblock", burn.address, [tx.txid], False)
    block = p.Block.parse(bytes.fromhex(built["hex"]))
    assert block.hash == built["hash"] and [t.txid for t in block.txs[1:]] == [tx.txid]
    assert await rpc("getbestblockhash") != built["hash"]

    bad_amount = _resolve(block, coinbase_value_delta=1)
    assert await rpc("submitblock", bad_amount.serialize().hex()) == "bad-cb-amount"
    high = block.header
    while int.from_bytes(p.hash256(high.serialize()), "little") <= p.bits_to_target(high.bits):
        high = high._replace(nonce=high.nonce + 1)
    assert await rpc("submitblock", p.Block(high, block.txs).serialize().hex()) == "high-hash"
    assert await rpc("submitblock", built["hex"]) is None
    assert await rpc("getbestblockhash") == built["hash"]
    assert await rpc("submitblock", built["hex"]) == "duplicate"
    assert await rpc("getrawmempool") == []
    with pytest.raises(NodeError) as err:
        await rpc("submitblock", "00")
    assert (err.value.code, err.value.message) == (-22, "Block decode failed")

    # generatetodescriptor and generateblock with a descriptor output.
    [h] = await rpc("generatetodescriptor", 1, f"addr({alice.address})")
    cb = (await rpc("getblock", h, 2))["tx"][0]
    assert cb["vout"][0]["scriptPubKey"]["hex"] == alice.script.hex()
    made = await rpc("generateblock", f"raw({alice.script.hex()})", [])
    assert await rpc("getbestblockhash") == made["hash"] and "hex" not in made
    with pytest.raises(NodeError) as err:
        await rpc("generatetoaddress", 1, "notanaddress")
    assert (err.value.code, err.value.message) == (-5, "Error: Invalid address")
    with pytest.raises(NodeError) as err:
        await rpc("generateblock", burn.address, ["11" * 32])
    assert (err.value.code, err.value.message) == (-5, f"Transaction {'11' * 32} not in mempool.")
    info = await rpc("getmininginfo")
    assert info["chain"] == "regtest" and info["blocks"] == await rpc("getblockcount")
    fee = await rpc("estimatesmartfee", 6)
    assert "feerate" in fee or fee["errors"]


async def check_block_waits(rpc: Rpc) -> None:
    """The long polls (hidden RPCs in bitcoind) answer as soon as the chain gets there, while other
    calls go on being served, and return the current tip when their timeout passes first."""
    import asyncio
    import time

    burn = Wallet.new()
    height = await rpc("getblockcount")
    tip = await rpc("getbestblockhash")
    started = time.monotonic()
    assert await rpc("waitforblockheight", height, 10_000) == {"hash": tip, "height": height}  # already there
    assert await rpc("waitfornewblock", 200) == {"hash": tip, "height": height}  # times out on the tip
    assert await rpc("waitfornewblock", 200, tip) == {"hash": tip, "height": height}
    assert time.monotonic() - started < 5

    by_height = asyncio.create_task(rpc("waitforblockheight", height + 2, 20_000))
    any_new = asyncio.create_task(rpc("waitfornewblock", 20_000, tip))
    (first,) = await rpc("generatetoaddress", 1, burn.address)  # served while both wait
    assert (await asyncio.wait_for(any_new, 10)) == {"hash": first, "height": height + 1}
    assert not by_height.done()
    (second,) = await rpc("generatetoaddress", 1, burn.address)
    assert (await asyncio.wait_for(by_height, 10)) == {"hash": second, "height": height + 2}
    assert await rpc("waitforblock", second, 10_000) == {"hash": second, "height": height + 2}
    with pytest.raises(NodeError) as bad:
        await rpc("waitforblockheight", height, -1)
    assert bad.value.code == -8
