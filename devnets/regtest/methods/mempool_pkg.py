"""Mempool relations and packages: ``getmempoolancestors``/``getmempooldescendants``,
``prioritisetransaction``/``getprioritisedtransactions`` (fee deltas the block template and
``getmempoolentry`` honour) and ``submitpackage`` (bitcoind 28's child-with-parents packages)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chains.btc import primitives as p
from chains.btc import script as sc
from chains.btc.rpc_errors import RPC_DESERIALIZATION_ERROR, RPC_INVALID_ADDRESS_OR_KEY, RPC_INVALID_PARAMETER, RPC_MISC_ERROR, RPC_VERIFY_ERROR
from devnets.regtest.mempool import Rejected
from devnets.regtest.methods import REGISTRY, Arg, RpcFailure, json_type, rpc
from devnets.regtest.methods.blockchain import _btc, mempool_entry_json
from devnets.regtest.methods.common import INT64, feerate_per_kvb, int_arg, parse_hash

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

MAX_PACKAGE_COUNT = 25
MAX_PACKAGE_WEIGHT = 404_000
_TOPOLOGY = "package topology disallowed. not child-with-parents or parents depend on each other."


def _relatives(node: "RegtestNode", txid: str, verbose: bool, which: str) -> Any:
    t = parse_hash(txid, "parameter 1")
    pool = node.mempool
    if t not in pool:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
    found = pool.ancestors(t) if which == "ancestors" else pool.descendants(t)
    ordered = pool.topological_subset(found)
    if not verbose:
        return ordered
    return {r: mempool_entry_json(node, r) for r in ordered}


_VERBOSE = Arg("verbose", "boolean", "True for a json object, false for array of transaction ids", False)


@rpc(
    "getmempoolancestors",
    "Blockchain",
    "If txid is in the mempool, returns all in-mempool ancestors.",
    [Arg("txid", "string", "The transaction id (must be in mempool)"), _VERBOSE],
    result='[           (json array)\n  "hex",    (string) The transaction id of an in-mempool ancestor transaction\n  ...\n]\n\nor\n\n'
    '{                  (json object)\n  "transactionid" : {    (json object)\n    ...                   (same as getmempoolentry)\n  },\n  ...\n}',
    examples=['"mytxid"'],
)
def getmempoolancestors(node: "RegtestNode", txid: str, verbose: bool) -> Any:
    return _relatives(node, txid, verbose, "ancestors")


@rpc(
    "getmempooldescendants",
    "Blockchain",
    "If txid is in the mempool, returns all in-mempool descendants.",
    [Arg("txid", "string", "The transaction id (must be in mempool)"), _VERBOSE],
    result='[           (json array)\n  "hex",    (string) The transaction id of an in-mempool descendant transaction\n  ...\n]\n\nor\n\n'
    '{                  (json object)\n  "transactionid" : {    (json object)\n    ...                   (same as getmempoolentry)\n  },\n  ...\n}',
    examples=['"mytxid"'],
)
def getmempooldescendants(node: "RegtestNode", txid: str, verbose: bool) -> Any:
    return _relatives(node, txid, verbose, "descendants")


@rpc(
    "prioritisetransaction",
    "Mining",
    "Accepts the transaction into mined blocks at a higher (or lower) priority",
    [
        Arg("txid", "string", "The transaction id."),
        Arg(
            "dummy",
            "numeric",
            "API-Compatibility for previous API. Must be zero or null.\n"
            "                  DEPRECATED. For forward compatibility use named arguments and omit this parameter.",
            None,
            default_doc="null",
        ),
        Arg(
            "fee_delta",
            "numeric",
            "The fee value (in satoshis) to add (or subtract, if negative).\n"
            "                  Note, that this value is not a fee rate. It is a value to modify absolute fee of the TX.\n"
            "                  The fee is not actually paid, only the algorithm for selecting transactions into a block\n"
            "                  considers the transaction as it would have paid a higher (or lower) fee.",
        ),
    ],
    result="true|false    (boolean) Returns true",
    examples=['"txid" 0.0 10000'],
)
def prioritisetransaction(node: "RegtestNode", txid: str, dummy: Any, fee_delta: Any) -> bool:
    if fee_delta is None:  # positional call without the dummy: bitcoind counts fee_delta as the 3rd
        raise RpcFailure(RPC_MISC_ERROR, REGISTRY["prioritisetransaction"].help_text())
    t = parse_hash(txid, "txid")
    delta = int_arg(fee_delta, INT64)
    if dummy is not None and dummy != 0:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Priority is no longer supported, dummy argument to prioritisetransaction must be 0.")
    deltas = node.mempool.deltas
    total = max(INT64[0], min(INT64[1], deltas.get(t, 0) + delta))  # SaturatingAdd
    if total == 0:
        deltas.pop(t, None)
    else:
        deltas[t] = total
    return True


@rpc(
    "getprioritisedtransactions",
    "Mining",
    "Returns a map of all user-created (see prioritisetransaction) fee deltas by txid, and whether the tx is present in mempool.",
    result="{                                 (json object) prioritisation keyed by txid\n"
    '  "<transactionid>" : {            (json object)\n'
    '    "fee_delta" : n,               (numeric) transaction fee delta in satoshis\n'
    '    "in_mempool" : true|false,     (boolean) whether this transaction is currently in mempool\n'
    '    "modified_fee" : n             (numeric, optional) modified fee in satoshis. Only returned if in_mempool=true\n'
    "  },\n  ...\n}",
)
def getprioritisedtransactions(node: "RegtestNode") -> dict[str, Any]:
    pool = node.mempool
    out: dict[str, Any] = {}
    for t in sorted(pool.deltas, key=lambda h: bytes.fromhex(h)[::-1]):  # uint256 order, as Core's map
        item: dict[str, Any] = {"fee_delta": pool.deltas[t], "in_mempool": t in pool}
        if t in pool:
            item["modified_fee"] = pool.modified_fee(t)
        out[t] = item
    return out


# --- submitpackage -----------------------------------------------------------------------------


def _child_with_parents_tree(txs: list[p.Tx]) -> bool:
    """Core's ``IsChildWithParentsTree``: the last tx spends every other one; no parent spends another."""
    child = txs[-1]
    spent = {txin.prevout.txid_hex for txin in child.vin}
    parents = [tx.txid for tx in txs[:-1]]
    if not all(t in spent for t in parents):
        return False
    parent_set = set(parents)
    return not any(txin.prevout.txid_hex in parent_set for tx in txs[:-1] for txin in tx.vin)


def _well_formed(txs: list[p.Tx]) -> str | None:
    """Core's ``IsWellFormedPackage`` reject reasons (all PCKG_POLICY)."""
    if len(txs) > MAX_PACKAGE_COUNT:
        return "package-too-many-transactions"
    if sum(tx.weight for tx in txs) > MAX_PACKAGE_WEIGHT:
        return "package-too-large"
    if len({tx.txid for tx in txs}) != len(txs):
        return "package-contains-duplicates"
    later = {tx.txid for tx in txs}
    for tx in txs:
        later.discard(tx.txid)
        if any(txin.prevout.txid_hex in later for txin in tx.vin):
            return "package-not-sorted"
    seen: set[tuple[str, int]] = set()
    for tx in txs:
        for txin in tx.vin:
            key = (txin.prevout.txid_hex, txin.prevout.n)
            if key in seen:
                return "conflict-in-package"
            seen.add(key)
    return None


def _fees(base: int, feerate: int | None = None, includes: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"base": _btc(base)}
    if feerate is not None:
        out["effective-feerate"] = _btc(feerate)
        out["effective-includes"] = includes or []
    return out


def _reject_text(r: Rejected) -> str:
    return "max feerate exceeded" if r.kind == "max-fee" else r.text


@rpc(
    "submitpackage",
    "Rawtransactions",
    "Submit a package of raw transactions (serialized, hex-encoded) to local node.\n"
    "The package will be validated according to consensus and mempool policy rules. If any transaction passes, it will be accepted to mempool.\n"
    "This RPC is experimental and the interface may be unstable. Refer to doc/policy/packages.md for documentation on package policies.\n"
    "Warning: successful submission does not mean the transactions will propagate throughout the network.",
    [
        Arg(
            "package",
            "json array",
            "An array of raw transactions.\nThe package must solely consist of a child and its parents. None of the parents may depend on each other.\n"
            "The package must be topologically sorted, with the child being the last element in the array.",
        ),
        Arg(
            "maxfeerate",
            "amount",
            "Reject transactions whose fee rate is higher than the specified value, expressed in BTC/kvB.\nFee rates larger than 1BTC/kvB are rejected.\nSet to 0 to accept any fee rate.",
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
    result="{                                   (json object)\n"
    '  "package_msg" : "str",             (string) The transaction package result message. "success" indicates all transactions were accepted into or are already in the mempool.\n'
    '  "tx-results" : {                   (json object) transaction results keyed by wtxid\n'
    '    "wtxid" : {                      (json object) transaction wtxid\n'
    '      "txid" : "hex",                (string) The transaction hash in hex\n'
    '      "other-wtxid" : "hex",         (string, optional) The wtxid of a different transaction with the same txid but different witness found in the mempool. This means the submitted transaction was ignored.\n'
    '      "vsize" : n,                   (numeric, optional) Sigops-adjusted virtual transaction size.\n'
    '      "fees" : {                     (json object, optional) Transaction fees\n'
    '        "base" : n,                  (numeric) transaction fee in BTC\n'
    '        "effective-feerate" : n,     (numeric, optional) if the transaction was not already in the mempool, the effective feerate in BTC per KvB.\n'
    '        "effective-includes" : [     (json array, optional) the wtxids of the transactions whose fees and vsizes are included in effective-feerate.\n'
    '          "hex",                     (string) transaction wtxid in hex\n          ...\n        ]\n      },\n'
    '      "error" : "str"                (string, optional) The transaction error string, if it was rejected by the mempool\n'
    "    },\n    ...\n  },\n"
    '  "replaced-transactions" : [        (json array, optional) List of txids of replaced transactions\n    "hex",                           (string) The transaction id\n    ...\n  ]\n}',
    examples=['\'["rawtx1", "rawtx2"]\''],
)
def submitpackage(node: "RegtestNode", package: list, maxfeerate: Any, maxburnamount: Any) -> dict[str, Any]:
    if not 2 <= len(package) <= MAX_PACKAGE_COUNT:
        raise RpcFailure(RPC_INVALID_PARAMETER, f"Array must contain between 2 and {MAX_PACKAGE_COUNT} transactions.")
    max_rate = 10_000_000 if maxfeerate is None else feerate_per_kvb(maxfeerate)
    if max_rate > p.COIN:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Fee rates larger than or equal to 1BTC/kvB are not accepted")
    max_burn = 0 if maxburnamount is None else feerate_per_kvb(maxburnamount)
    txs: list[p.Tx] = []
    for item in package:
        if not isinstance(item, str):
            raise RpcFailure(-3, f"JSON value of type {json_type(item)} is not of expected type string")
        try:
            tx = p.Tx.parse(bytes.fromhex(item))
        except (ValueError, p.DecodeError):
            raise RpcFailure(RPC_DESERIALIZATION_ERROR, f"TX decode failed: {item} Make sure the tx has at least one input.") from None
        for out in tx.vout:
            if (sc.is_unspendable(out.script_pubkey) or not sc.has_valid_ops(out.script_pubkey)) and out.value > max_burn:
                raise RpcFailure(RPC_VERIFY_ERROR, "Unspendable output exceeds maximum configured by user (maxburnamount)")
        txs.append(tx)
    if not _child_with_parents_tree(txs):
        raise RpcFailure(RPC_VERIFY_ERROR, _TOPOLOGY)
    results, package_msg, replaced = _accept_package(node, txs, max_rate or None)
    tx_results: dict[str, Any] = {}
    for tx in txs:
        if tx.wtxid in results:  # bitcoind leaves unevaluated transactions out altogether
            tx_results[tx.wtxid] = {"txid": tx.txid, **results[tx.wtxid]}
    if node.automine is not None and any(tx.txid in node.mempool for tx in txs):
        node.mine(node.automine)
    return {"package_msg": package_msg, "tx-results": tx_results, "replaced-transactions": sorted(replaced, key=lambda h: bytes.fromhex(h)[::-1])}


def _accept_package(node: "RegtestNode", txs: list[p.Tx], max_rate: int | None) -> tuple[dict[str, dict], str, set[str]]:
    """Core's ``AcceptPackage``: known ones are reported, each new one is tried alone first; those
    refused only for their feerate (or for a parent so refused) are then judged together by the
    package feerate, all or none."""
    pool = node.mempool
    reason = _well_formed(txs)
    if reason is not None:
        return {}, reason, set()
    package_txids = {tx.txid for tx in txs}
    for txin in txs[-1].vin:
        if txin.prevout.txid_hex not in package_txids and node.chain.store.coin(txin.prevout.txid_hex, txin.prevout.n) is None:
            return {}, "package-not-child-with-unconfirmed-parents", set()
    results: dict[str, dict] = {}
    replaced: set[str] = set()
    deferred: list[p.Tx] = []
    failed = False
    for tx in txs:
        if tx.wtxid in pool.wtxids:
            e = pool.entries[tx.txid]
            results[tx.wtxid] = {"vsize": e.vsize, "fees": _fees(e.fee)}
            continue
        if tx.txid in pool:
            results[tx.wtxid] = {"other-wtxid": pool.entries[tx.txid].tx.wtxid}
            continue
        try:
            entry, gone = pool.check(tx, max_rate)
        except Rejected as r:
            if r.reason == "min relay fee not met" or r.kind == "missing-inputs":
                deferred.append(tx)
            else:
                results[tx.wtxid] = {"error": _reject_text(r)}
                failed = True
            continue
        node.accept_tx(tx, max_rate)
        replaced |= gone
        rate = (entry.fee + pool.deltas.get(tx.txid, 0)) * 1000 // entry.vsize
        results[tx.wtxid] = {"vsize": entry.vsize, "fees": _fees(entry.fee, rate, [tx.wtxid])}
    if failed or not deferred:
        return results, "transaction failed" if failed else "success", replaced
    return _accept_together(node, deferred, max_rate, results, replaced)


def _accept_together(node: "RegtestNode", txs: list[p.Tx], max_rate: int | None, results: dict, replaced: set[str]) -> tuple[dict[str, dict], str, set[str]]:
    from devnets.regtest.mempool import Mempool

    pool = node.mempool
    scratch = Mempool(pool.chain, node.now)
    scratch.entries = {k: _copy_entry(v) for k, v in pool.entries.items()}
    scratch.spenders = dict(pool.spenders)
    scratch.wtxids = dict(pool.wtxids)
    scratch.deltas = dict(pool.deltas)
    entries = []
    for tx in txs:
        try:
            entry, gone = scratch.check(tx, max_rate, check_fee=False)
            if gone:
                raise Rejected("bip125-replacement-disallowed")
        except Rejected as r:
            results[tx.wtxid] = {"error": _reject_text(r)}
            return results, "transaction failed", replaced
        scratch.add(entry, set())
        entries.append(entry)
    fee = sum(e.fee + pool.deltas.get(e.txid, 0) for e in entries)
    vsize = sum(e.vsize for e in entries)
    wtxids = [e.tx.wtxid for e in entries]
    if fee < sc.fee_for_size(sc.DEFAULT_MIN_RELAY_TX_FEE, vsize):
        for e in entries:
            results[e.tx.wtxid] = {"error": f"min relay fee not met, {fee} < {sc.fee_for_size(sc.DEFAULT_MIN_RELAY_TX_FEE, vsize)}"}
        return results, "transaction failed", replaced
    rate = fee * 1000 // vsize
    for e in entries:
        node.accept_tx(e.tx, max_rate, check_fee=False)
        results[e.tx.wtxid] = {"vsize": e.vsize, "fees": _fees(e.fee, rate, wtxids)}
    return results, "success", replaced


def _copy_entry(e):
    from dataclasses import replace

    return replace(e, parents=set(e.parents), children=set(e.children))
