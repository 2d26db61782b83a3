"""getblocktemplate turned into a block by our own code and accepted by submitblock; merkle proofs
with gettxoutproof/verifytxoutproof checked byte for byte against the CMerkleBlock format."""

from __future__ import annotations

import pytest
from node_helpers import Coin, NodeError, Rpc, Wallet, mature_coin, spend_p2wpkh

from chains.btc import primitives as p
from devnets.regtest import RegtestNode

BURN = "bcrt1qfdes8c308vmyhjgl9wl7nkdsflfc8fupv5e20k"
SEGWIT = {"rules": ["segwit"]}


@pytest.fixture
async def node(tmp_path):
    n = RegtestNode(tmp_path / "node")
    await n.start()
    yield n
    await n.stop()


async def error_of(rpc: Rpc, method: str, *params) -> tuple[int, str]:
    with pytest.raises(NodeError) as err:
        await rpc(method, *params)
    return err.value.code, err.value.message


async def _parent_and_child(rpc: Rpc, alice: Wallet) -> tuple[p.Tx, p.Tx]:
    coin = await mature_coin(rpc, alice, BURN)
    parent = spend_p2wpkh(alice, [coin], [(alice.script, coin.value - 1_000)])
    child = spend_p2wpkh(alice, [Coin(parent.txid, 0, coin.value - 1_000)], [(alice.script, coin.value - 3_000)])
    for tx in (parent, child):
        await rpc("sendrawtransaction", tx.serialize().hex())
    return parent, child


async def test_block_from_template_is_accepted(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    segwit_error = (-8, 'getblocktemplate must be called with the segwit rule set (call with {"rules": ["segwit"]})')
    assert await error_of(rpc, "getblocktemplate") == segwit_error
    assert await error_of(rpc, "getblocktemplate", {"rules": []}) == segwit_error
    assert await error_of(rpc, "getblocktemplate", {"mode": 5, "rules": ["segwit"]}) == (-8, "Invalid mode")
    assert await error_of(rpc, "getblocktemplate", {"mode": "other", "rules": ["segwit"]}) == (-8, "Invalid mode")

    alice = Wallet.new()
    parent, child = await _parent_and_child(rpc, alice)
    tip = await rpc("getbestblockhash")
    height = await rpc("getblockcount") + 1
    t = await rpc("getblocktemplate", SEGWIT)
    assert t["capabilities"] == ["proposal"] and t["rules"] == ["csv", "!segwit", "taproot"]
    assert t["version"] == 0x20000000 and t["vbavailable"] == {} and t["vbrequired"] == 0  # height < 144
    assert t["previousblockhash"] == tip and t["height"] == height and t["bits"] == "207fffff"
    assert t["target"] == "7fffff" + "0" * 58 and t["noncerange"] == "00000000ffffffff"
    assert (t["sigoplimit"], t["sizelimit"], t["weightlimit"]) == (80_000, 4_000_000, 4_000_000)
    assert t["mutable"] == ["time", "transactions", "prevblock"] and t["coinbaseaux"] == {}
    assert t["longpollid"].startswith(tip)
    mtp = (await rpc("getblockheader", tip))["mediantime"]
    assert t["mintime"] == mtp + 1 and t["curtime"] >= t["mintime"]
    assert t["coinbasevalue"] == p.block_subsidy(height) + 3_000
    assert t["transactions"] == [
        {"data": parent.serialize().hex(), "txid": parent.txid, "hash": parent.wtxid, "depends": [], "fee": 1_000, "sigops": 1, "weight": parent.weight},
        {"data": child.serialize().hex(), "txid": child.txid, "hash": child.wtxid, "depends": [1], "fee": 2_000, "sigops": 1, "weight": child.weight},
    ]

    # Our own block from the template: BIP34 coinbase with the template's commitment, then PoW.
    payout = Wallet.new()
    txs = [p.Tx.parse(bytes.fromhex(x["data"])) for x in t["transactions"]]
    coinbase = p.coinbase_tx(t["height"], payout.script, t["coinbasevalue"], witness_commitment=bytes.fromhex(t["default_witness_commitment"]))
    all_txs = [coinbase, *txs]
    header = p.BlockHeader(
        t["version"],
        bytes.fromhex(t["previousblockhash"])[::-1],
        p.merkle_root([tx.txid_bytes for tx in all_txs]),
        t["curtime"],
        int(t["bits"], 16),
        0,
    )
    block = p.Block(p.solve_regtest(header), all_txs)
    assert await rpc("getblocktemplate", {"mode": "proposal", "data": block.serialize().hex()}) is None
    assert await rpc("submitblock", block.serialize().hex()) is None
    assert await rpc("getbestblockhash") == block.hash and await rpc("getrawmempool") == []
    assert await rpc("getblocktemplate", {"mode": "proposal", "data": block.serialize().hex()}) == "duplicate"
    assert await error_of(rpc, "getblocktemplate", {"mode": "proposal"}) == (-3, "Missing data String key for proposal")
    empty = await rpc("getblocktemplate", SEGWIT)
    assert empty["transactions"] == [] and empty["previousblockhash"] == block.hash


async def test_template_signals_testdummy_from_second_period(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    await rpc("generatetoaddress", 143, BURN)
    t = await rpc("getblocktemplate", SEGWIT)
    assert t["height"] == 144 and t["version"] == 0x30000000 and t["vbavailable"] == {"testdummy": 28}


async def test_txoutproof_round_trip_and_bytes(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    alice = Wallet.new()
    parent, child = await _parent_and_child(rpc, alice)
    assert await error_of(rpc, "gettxoutproof", [child.txid]) == (-5, "Transaction not yet in block")
    [block_hash] = await rpc("generatetoaddress", 1, BURN)
    block = p.Block.parse(bytes.fromhex(await rpc("getblock", block_hash, 0)))
    coinbase = block.txs[0]

    proof = await rpc("gettxoutproof", [child.txid])
    # 3 txs, tree height 2: bits root=1, left=0 (hash of coinbase|parent), right=1, leaf child=1.
    expected = (
        block.header.serialize() + (3).to_bytes(4, "little") + b"\x02" + p.hash256(coinbase.txid_bytes + parent.txid_bytes) + child.txid_bytes + b"\x01\x0d"
    )
    assert proof == expected.hex()
    assert await rpc("verifytxoutproof", proof) == [child.txid]
    assert await rpc("gettxoutproof", [child.txid], block_hash) == proof
    both = await rpc("gettxoutproof", [parent.txid, child.txid])  # parent is spent: found through child's coin
    assert await rpc("verifytxoutproof", both) == [parent.txid, child.txid]

    # A proof whose hashes do not give the header's root proves nothing.
    tampered = bytearray(bytes.fromhex(proof))
    tampered[90] ^= 1
    assert await rpc("verifytxoutproof", tampered.hex()) == []
    assert (await error_of(rpc, "verifytxoutproof", proof[:100]))[0] == -1
    assert await error_of(rpc, "gettxoutproof", []) == (-8, "Parameter 'txids' cannot be empty")
    assert await error_of(rpc, "gettxoutproof", [child.txid, child.txid]) == (-8, f"Invalid parameter, duplicated txid: {child.txid}")
    assert await error_of(rpc, "gettxoutproof", [child.txid], await rpc("getblockhash", 1)) == (
        -5,
        "Not all transactions found in specified or retrieved block",
    )
    assert await error_of(rpc, "gettxoutproof", [child.txid], "00" * 32) == (-5, "Block not found")
    assert await error_of(rpc, "verifytxoutproof", "zz") == (-8, "proof must be hexadecimal string (not 'zz')")
