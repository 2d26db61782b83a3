"""Raw transaction RPCs: look-up (tx index always on), decoding, broadcast and test acceptance."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from chains.btc import primitives as p
from devnets.regtest.mempool import DEFAULT_MAX_FEERATE, Rejected
from chains.btc.rpc_errors import (
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_VERIFY_ALREADY_IN_UTXO_SET,
    RPC_VERIFY_ERROR,
    RPC_VERIFY_REJECTED,
)
from devnets.regtest.methods import Arg, RpcFailure, json_type, rpc
from devnets.regtest.methods.blockchain import _btc
from devnets.regtest.methods.common import NETWORK, decode_tx, feerate_per_kvb, parse_hash, parse_hex, verbosity

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

NOT_FOUND = "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."


@rpc(
    "getrawtransaction",
    "Rawtransactions",
    "By default, this call only returns a transaction if it is in the mempool. If -txindex is enabled\n"
    "and no blockhash argument is passed, it will return the transaction if it is in the mempool or any block.\n"
    "If a blockhash argument is passed, it will return the transaction if\n"
    "the specified block is available and the transaction is in that block.\n\n"
    "Hint: Use gettransaction for wallet transactions.\n\n"
    "If verbosity is 0 or omitted, returns the serialized transaction as a hex-encoded string.\n"
    "If verbosity is 1, returns a JSON Object with information about the transaction.\n"
    "If verbosity is 2, returns a JSON Object with information about the transaction, including fee and prevout information.",
    [
        Arg("txid", "string", "The transaction id"),
        Arg("verbosity", "any", "0 for hex-encoded data, 1 for a JSON object, and 2 for JSON object with fee and prevout", 0, shown_type="numeric"),
        Arg("blockhash", "string", "The block in which to look for the transaction", None, default_doc=""),
    ],
    result="\"str\"    (string) The serialized transaction as a hex-encoded string for 'txid'",
    examples=['"mytxid"', '"mytxid" 1', '"mytxid" 0 "myblockhash"'],
)
def getrawtransaction(node: "RegtestNode", txid: str, verbose: Any, blockhash: str | None) -> Any:
    t = parse_hash(txid, "parameter 1")
    level = verbosity(verbose, 0)
    chain = node.chain
    if blockhash is not None:
        bh = parse_hash(blockhash, "parameter 3")
        found = chain.block_raw(bh)
        if found is None:
            raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found")
        raw, height = found
        block = p.Block.parse(raw)
        tx = next((x for x in block.txs if x.txid == t), None)
        if tx is None:
            raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "No such transaction found in the provided block. Use gettransaction for wallet transactions.")
        if height == 0:
            raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "The genesis block coinbase is not considered an ordinary transaction and cannot be retrieved")
        return _tx_result(node, tx, level, bh, height, in_active=height is not None)
    if t in node.mempool:
        tx = node.mempool.entries[t].tx
        return _tx_result(node, tx, level, None, None, None)
    loc = chain.store.tx_location(t)
    if loc is None:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, NOT_FOUND)
    block_hash, pos = loc
    height = chain.store.height_of(block_hash)
    if height == 0:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "The genesis block coinbase is not considered an ordinary transaction and cannot be retrieved")
    block = p.Block.parse(chain.store.raw_at(height))
    return _tx_result(node, block.txs[pos], level, block_hash, height, None)


def _tx_result(node: "RegtestNode", tx: p.Tx, level: int, block_hash: str | None, height: int | None, in_active: bool | None) -> Any:
    if level <= 0:
        return tx.serialize().hex()
    from devnets.regtest.decode import SpentOutput, tx_to_json

    out: dict[str, Any] = {}
    if in_active is not None:
        out["in_active_chain"] = in_active
    prevouts = None
    if level >= 2 and block_hash is not None and not tx.is_coinbase:
        # Verbosity 2: fee and prevouts from the block's undo data, as bitcoind reads them.
        block = p.Block.parse(node.chain.block_raw(block_hash)[0])
        pos = next(i for i, t in enumerate(block.txs) if t.txid == tx.txid)
        entry = node.chain.kernel.entry(block_hash)
        coins = node.chain.kernel.spent_outputs(entry)[pos - 1]
        prevouts = [SpentOutput(p.TxOut(c[0], c[1]), c[2], c[3]) for c in coins]
    out.update(tx_to_json(tx, NETWORK, include_hex=True, prevouts=prevouts))
    if block_hash is not None:
        out["blockhash"] = block_hash
        if height is not None:
            tip = node.chain.height
            block_time = node.chain.store.times(height, height)[0]
            out["confirmations"] = tip - height + 1
            out["time"] = block_time
            out["blocktime"] = block_time
        else:
            out["confirmations"] = 0
    return out


@rpc(
    "decoderawtransaction",
    "Rawtransactions",
    "Return a JSON object representing the serialized, hex-encoded transaction.",
    [
        Arg("hexstring", "hex", "The transaction hex string"),
        Arg(
            "iswitness",
            "boolean",
            "Whether the transaction hex is a serialized witness transaction.\nIf iswitness is not present, heuristic tests will be used in decoding.",
            None,
            default_doc="depends on heuristic tests",
        ),
    ],
    result='{\n  "txid" : "hex",  (string) The transaction id\n  ...\n}',
    examples=['"hexstring"'],
)
def decoderawtransaction(node: "RegtestNode", hexstring: str, iswitness: bool | None) -> dict[str, Any]:
    from devnets.regtest.decode import decode_hex_tx, tx_to_json

    try:
        tx = decode_hex_tx(hexstring, try_no_witness=iswitness is not True, try_witness=iswitness is not False)
    except p.DecodeError:
        raise RpcFailure(RPC_DESERIALIZATION_ERROR, "TX decode failed") from None
    return tx_to_json(tx, NETWORK)


@rpc(
    "decodescript",
    "Rawtransactions",
    "Decode a hex-encoded script.",
    [Arg("hexstring", "hex", "the hex-encoded script")],
    result='{\n  "asm" : "str",  (string) Script public key\n  ...\n}',
    examples=['"hexstring"'],
)
def decodescript(node: "RegtestNode", hexstring: str) -> dict[str, Any]:
    from devnets.regtest.decode import script_to_json

    return script_to_json(parse_hex(hexstring, "argument"), NETWORK)


def _max_feerate(value: Any) -> int:
    return DEFAULT_MAX_FEERATE if value is None else feerate_per_kvb(value)


@rpc(
    "sendrawtransaction",
    "Rawtransactions",
    "Submit a raw transaction (serialized, hex-encoded) to local node and network.\n\n"
    "The transaction will be sent unconditionally to all peers, so using sendrawtransaction\n"
    "for manual rebroadcast may degrade privacy by leaking the transaction's origin, as\n"
    "nodes will normally not rebroadcast non-wallet transactions already in their mempool.\n\n"
    "A specific exception, RPC_TRANSACTION_ALREADY_IN_UTXO_SET, may throw if the transaction cannot be added to the mempool.\n\n"
    "Related RPCs: createrawtransaction, signrawtransactionwithkey",
    [
        Arg("hexstring", "hex", "The hex string of the raw transaction"),
        Arg(
            "maxfeerate",
            "amount",
            "Reject transactions whose fee rate is higher than the specified value, expressed in BTC/kvB.\n"
            "Fee rates larger than 1BTC/kvB are rejected.\nSet to 0 to accept any fee rate.",
            None,
            default_doc='"0.10"',
        ),
        Arg(
            "maxburnamount",
            "amount",
            "Reject transactions with provably unspendable outputs (e.g. 'datacarrier' outputs that use the OP_RETURN opcode) greater than the specified value, expressed in BTC.\n"
            "If burning funds through unspendable outputs is desired, increase this value.\n"
            "This check is based on heuristics and does not guarantee spendability of outputs.\n",
            None,
            default_doc='"0.00"',
        ),
    ],
    result='"hex"    (string) The transaction hash in hex',
    examples=['"signedhex"'],
)
def sendrawtransaction(node: "RegtestNode", hexstring: str, maxfeerate: Any, maxburnamount: Any) -> str:
    tx = decode_tx(hexstring)
    max_rate = _max_feerate(maxfeerate)
    if max_rate > p.COIN:
        raise RpcFailure(-8, "Fee rates larger than or equal to 1BTC/kvB are not accepted")
    max_burn = 0 if maxburnamount is None else feerate_per_kvb(maxburnamount)
    for out in tx.vout:
        if (out.script_pubkey[:1] == b"\x6a" or len(out.script_pubkey) > 10_000) and out.value > max_burn:
            raise RpcFailure(RPC_VERIFY_ERROR, "Unspendable output exceeds maximum configured by user (maxburnamount)")
    # A transaction already in the mempool is a success for bitcoind (it only rebroadcasts).
    if tx.txid in node.mempool and node.mempool.entries[tx.txid].tx.wtxid == tx.wtxid:
        return tx.txid
    try:
        node.accept_tx(tx, max_rate)
    except Rejected as r:
        if r.kind == "missing-inputs":
            raise RpcFailure(RPC_VERIFY_ERROR, r.text) from None
        if r.kind == "already-in-utxo-set":
            raise RpcFailure(RPC_VERIFY_ALREADY_IN_UTXO_SET, "Transaction outputs already in utxo set") from None
        if r.kind == "max-fee":
            raise RpcFailure(RPC_VERIFY_ERROR, "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)") from None
        raise RpcFailure(RPC_VERIFY_REJECTED, r.text) from None
    if node.automine is not None:  # ``devnetautomine``
        node.mine(node.automine)
    return tx.txid


@rpc(
    "testmempoolaccept",
    "Rawtransactions",
    "Returns result of mempool acceptance tests indicating if raw transaction(s) (serialized, hex-encoded) would be accepted by mempool.\n\n"
    "If multiple transactions are passed in, parents must come before children and package policies apply: the transactions cannot conflict with any mempool transactions or each other.\n\n"
    "If one transaction fails, other transactions may not be fully validated (the 'allowed' key will be blank).\n\n"
    "The maximum number of transactions allowed is 25.\n\n"
    "This checks if transactions violate the consensus or policy rules.\n\n"
    "See sendrawtransaction call.",
    [
        Arg("rawtxs", "json array", "An array of hex strings of raw transactions."),
        Arg(
            "maxfeerate",
            "amount",
            "Reject transactions whose fee rate is higher than the specified value, expressed in BTC/kvB.\n"
            "Fee rates larger than 1BTC/kvB are rejected.\nSet to 0 to accept any fee rate.",
            None,
            default_doc='"0.10"',
        ),
    ],
    result="[  (json array) The result of the mempool acceptance test for each raw transaction in the input array.\n  ...\n]",
    examples=["'[\"signedhex\"]'"],
)
def testmempoolaccept(node: "RegtestNode", rawtxs: list, maxfeerate: Any) -> list[dict[str, Any]]:
    if not 1 <= len(rawtxs) <= 25:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Array must contain between 1 and 25 transactions.")
    max_rate = _max_feerate(maxfeerate)
    txs = []
    for item in rawtxs:
        if not isinstance(item, str):
            raise RpcFailure(-3, "JSON value of type %s is not of expected type string" % json_type(item))
        try:
            txs.append(p.Tx.parse(bytes.fromhex(item)))
        except (ValueError, p.DecodeError):
            raise RpcFailure(RPC_DESERIALIZATION_ERROR, f"TX decode failed: {item} Make sure the tx has at least one input.") from None
    if len(txs) > 1:
        return _test_package(node, txs, max_rate)
    tx = txs[0]
    result: dict[str, Any] = {"txid": tx.txid, "wtxid": tx.wtxid}
    try:
        entry, _ = node.mempool.check(tx, max_rate)
    except Rejected as r:
        result["allowed"] = False
        if r.kind == "missing-inputs":
            result["reject-reason"] = "missing-inputs"
        elif r.kind == "max-fee":
            result["reject-reason"] = "max-fee-exceeded"
        else:
            result["reject-reason"] = r.reason
            if r.debug:
                result["reject-details"] = r.text
        return [result]
    result.update(
        {
            "allowed": True,
            "vsize": entry.vsize,
            "fees": {"base": _btc(entry.fee), "effective-feerate": _btc(entry.fee * 1000 // entry.vsize), "effective-includes": [tx.wtxid]},
        }
    )
    return [result]


def _test_package(node: "RegtestNode", txs: list[p.Tx], max_rate: int) -> list[dict[str, Any]]:
    """A parent-first package: each is checked on a scratch mempool that holds the ones before it."""
    from devnets.regtest.mempool import Mempool

    scratch = Mempool(node.mempool.chain, node.now)
    # Copies, so linking package children never touches the live mempool's entries.
    scratch.entries = {k: replace(v, parents=set(v.parents), children=set(v.children)) for k, v in node.mempool.entries.items()}
    scratch.spenders = dict(node.mempool.spenders)
    scratch.wtxids = dict(node.mempool.wtxids)
    results: list[dict[str, Any]] = []
    failed = False
    for tx in txs:
        r: dict[str, Any] = {"txid": tx.txid, "wtxid": tx.wtxid}
        if failed:
            r["package-error"] = "package-not-validated"
            results.append(r)
            continue
        try:
            entry, replaced = scratch.check(tx, max_rate)
            if replaced:
                raise Rejected("bip125-replacement-disallowed")
            scratch.add(entry, set())
            r.update(
                {
                    "allowed": True,
                    "vsize": entry.vsize,
                    "fees": {"base": _btc(entry.fee), "effective-feerate": _btc(entry.fee * 1000 // entry.vsize), "effective-includes": [tx.wtxid]},
                }
            )
        except Rejected as rej:
            failed = True
            r["allowed"] = False
            r["reject-reason"] = "missing-inputs" if rej.kind == "missing-inputs" else rej.reason
        results.append(r)
    return results
