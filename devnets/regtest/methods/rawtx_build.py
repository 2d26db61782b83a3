"""Building and signing raw transactions without a wallet (Core's ``rpc/rawtransaction.cpp`` and
``rawtransaction_util.cpp``): ``createrawtransaction``, ``signrawtransactionwithkey``,
``combinerawtransaction``, with bitcoind's error codes and texts.

Signing covers the single-key outputs (P2PKH, P2WPKH, P2SH-P2WPKH, P2PK) with SIGHASH_ALL (or
DEFAULT, which is ALL for them); signatures are bitcoind's byte for byte (RFC6979, low R).  Inputs
of other kinds are left as they are and reported in ``errors`` as bitcoind reports a missing key.
``combinerawtransaction`` takes, per input, the first variant that carries a scriptSig or witness
(it does not merge partial multisig signatures)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chains.btc import keys
from chains.btc import primitives as p
from chains.btc.rpc_errors import (
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_TYPE_ERROR,
    RPC_VERIFY_ERROR,
)
from chains.btc.script import disassemble, is_p2pkh, is_p2sh, p2pkh_script, p2wpkh_script
from chains.btc.sighash import SIGHASH_ALL, legacy_sighash, segwit_v0_sighash
from devnets.regtest.methods import Arg, RpcFailure, json_type, rpc
from devnets.regtest.methods.common import (
    INT64,
    MAX_ADDRESS_CHARS,
    NETWORK,
    feerate_per_kvb,
    int_arg,
    parse_hash,
    parse_hex,
)

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

MAX_BIP125_RBF_SEQUENCE = 0xFFFFFFFD
LOCKTIME_MAX = 0xFFFFFFFF
_SIGHASH_NAMES = {"DEFAULT": 0, "ALL": 1, "NONE": 2, "SINGLE": 3, "ALL|ANYONECANPAY": 0x81, "NONE|ANYONECANPAY": 0x82, "SINGLE|ANYONECANPAY": 0x83}


def _obj_hash(obj: dict, key: str) -> str:
    """``ParseHashO``."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(value)} is not of expected type string")
    return parse_hash(value, key)


def _inputs(inputs: list, locktime: int, rbf: bool) -> list[p.TxIn]:
    vin = []
    for item in inputs:
        if not isinstance(item, dict):
            raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(item)} is not of expected type object")
        txid = _obj_hash(item, "txid")
        vout_v = item.get("vout")
        if json_type(vout_v) != "number":
            raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, missing vout key")
        vout = int_arg(vout_v)
        if vout < 0:
            raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, vout cannot be negative")
        if rbf:
            sequence = MAX_BIP125_RBF_SEQUENCE
        elif locktime:
            sequence = 0xFFFFFFFE
        else:
            sequence = 0xFFFFFFFF
        seq_v = item.get("sequence")
        if json_type(seq_v) == "number":
            seq = int_arg(seq_v, INT64)
            if not 0 <= seq <= 0xFFFFFFFF:
                raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, sequence number is out of range")
            sequence = seq
        vin.append(p.TxIn(p.OutPoint.from_hex(txid, vout), b"", sequence, ()))
    return vin


def _outputs(outputs: Any) -> list[p.TxOut]:
    """``NormalizeOutputs`` + ``ParseOutputs``."""
    from devnets.regtest.methods.common import address_script

    if outputs is None:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, output argument must be non-null")
    pairs: list[tuple[str, Any]] = []
    if isinstance(outputs, dict):
        pairs = list(outputs.items())
    elif isinstance(outputs, list):
        for output in outputs:
            if not isinstance(output, dict):
                raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, key-value pair not an object as expected")
            if len(output) != 1:
                raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, key-value pair must contain exactly one key")
            pairs.extend(output.items())
    else:
        raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(outputs)} is not of expected type array")
    vout, seen, has_data = [], set(), False
    for name, value in pairs:
        if name == "data":
            if has_data:
                raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, duplicate key: data")
            has_data = True
            # ParseHexV(getValStr()): a non-string's text is no hex either.
            data = parse_hex(value if isinstance(value, str) else "x", "Data")
            vout.append(p.TxOut(0, b"\x6a" + p.push_data(data)))
            continue
        try:
            script = address_script(name) if len(name) <= MAX_ADDRESS_CHARS else None
        except RpcFailure:
            script = None
        amount = feerate_per_kvb(value)  # AmountFromValue
        if script is None:
            raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, f"Invalid Bitcoin address: {name}")
        if script in seen:
            raise RpcFailure(RPC_INVALID_PARAMETER, f"Invalid parameter, duplicated address: {name}")
        seen.add(script)
        vout.append(p.TxOut(amount, script))
    return vout


@rpc(
    "createrawtransaction",
    "Rawtransactions",
    "Create a transaction spending the given inputs and creating new outputs.\nOutputs can be addresses or data.\n"
    "Returns hex-encoded raw transaction.\nNote that the transaction's inputs are not signed, and\n"
    "it is not stored in the wallet or transmitted to the network.",
    [
        Arg("inputs", "json array", "The inputs"),
        Arg(
            "outputs",
            "any",
            "The outputs specified as key-value pairs.\nEach key may only appear once, i.e. there can only be one 'data' output, and "
            "no address may be duplicated.\n"
            "At least one output of either type must be specified.\nFor compatibility reasons, a dictionary, which holds the key-value pairs directly, is also\n"
            "                             accepted as second parameter.",
            shown_type="json array",
        ),
        Arg("locktime", "numeric", "Raw locktime. Non-0 value also locktime-activates inputs", 0),
        Arg(
            "replaceable",
            "boolean",
            "Marks this transaction as BIP125-replaceable.\nAllows this transaction to be replaced by a transaction with "
            "higher fees. If provided, it is an error if explicit sequence numbers are incompatible.",
            True,
        ),
    ],
    result='"hex"    (string) hex string of the transaction',
    examples=['"[{\\"txid\\":\\"myid\\",\\"vout\\":0}]" "[{\\"address\\":0.01}]"', '"[{\\"txid\\":\\"myid\\",\\"vout\\":0}]" "[{\\"data\\":\\"00010203\\"}]"'],
)
def createrawtransaction(node: "RegtestNode", inputs: list, outputs: Any, locktime: Any, replaceable: bool) -> str:
    lock = int_arg(locktime, INT64)
    if not 0 <= lock <= LOCKTIME_MAX:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, locktime out of range")
    vin = _inputs(inputs, lock, replaceable)
    vout = _outputs(outputs)
    return p.Tx(2, vin, vout, lock).serialize().hex()


def _coin(node: "RegtestNode", txid: str, vout: int) -> tuple[int, bytes] | None:
    mem = node.mempool.mempool_coin(txid, vout)
    if mem is not None:
        return mem[0], mem[1]
    coin = node.chain.store.coin(txid, vout)
    return (coin.value, coin.script) if coin is not None else None


def _parse_prevtxs(prevtxs: list | None, coins: dict[tuple[str, int], tuple[int, bytes]]) -> None:
    """``ParsePrevouts``: given outputs override/extend what the node knows."""
    for item in prevtxs or []:
        if not isinstance(item, dict):
            raise RpcFailure(RPC_DESERIALIZATION_ERROR, 'expected object with {"txid\'","vout","scriptPubKey"}')
        for key, want in (("txid", "string"), ("vout", "number"), ("scriptPubKey", "string")):
            if item.get(key) is None:
                raise RpcFailure(RPC_TYPE_ERROR, f"Missing {key}")
            if json_type(item[key]) != want:
                raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(item[key])} for field {key} is not of expected type {want}")
        txid = parse_hash(item["txid"], "txid")
        vout = int_arg(item["vout"])
        if vout < 0:
            raise RpcFailure(RPC_DESERIALIZATION_ERROR, "vout cannot be negative")
        script = parse_hex(item["scriptPubKey"], "scriptPubKey")
        known = coins.get((txid, vout))
        if known is not None and known[1] != script:
            raise RpcFailure(RPC_DESERIALIZATION_ERROR, f"Previous output scriptPubKey mismatch:\n{disassemble(known[1])}\nvs:\n{disassemble(script)}")
        amount = feerate_per_kvb(item["amount"]) if "amount" in item else p.MAX_MONEY
        coins[(txid, vout)] = (amount, script)


def _input_error(txin: p.TxIn, error: str) -> dict[str, Any]:
    return {
        "txid": txin.prevout.txid_hex,
        "vout": txin.prevout.n,
        "witness": [w.hex() for w in txin.witness],
        "scriptSig": txin.script_sig.hex(),
        "sequence": txin.sequence,
        "error": error,
    }


_NO_KEY = "Unable to sign input, invalid stack size (possibly missing key)"
_EMPTY_WITNESS = "Witness program was passed an empty witness"


def sign_inputs(tx: p.Tx, secrets: dict[bytes, keys.Secret], coins: dict[tuple[str, int], tuple[int, bytes]]) -> tuple[p.Tx, bool, list[dict]]:
    """Sign what the keys can; returns the transaction, whether every input is signed, and
    bitcoind's per-input errors."""
    vin = list(tx.vin)
    errors: list[dict] = []
    by_hash = {keys.pubkey_hash(k.pubkey): k for k in secrets.values()}
    for i, txin in enumerate(tx.vin):
        coin = coins.get((txin.prevout.txid_hex, txin.prevout.n))
        if coin is None:
            errors.append(_input_error(txin, "Input not found or already spent"))
            continue
        amount, spk = coin
        if txin.script_sig or txin.witness:
            continue  # already signed: kept (bitcoind re-verifies it)
        signed = None
        segwit = spk[:2] in (b"\x00\x14", b"\x00\x20") or spk[:2] == b"\x51\x20"
        if spk[:2] == b"\x00\x14" and len(spk) == 22 and spk[2:] in by_hash:
            key = by_hash[spk[2:]]
            if amount == p.MAX_MONEY:
                raise RpcFailure(RPC_TYPE_ERROR, f"Missing amount for CTxOut(nValue={amount // p.COIN}.{amount % p.COIN:08d}, scriptPubKey={spk.hex()[:30]})")
            digest = segwit_v0_sighash(p.Tx(tx.version, vin, tx.vout, tx.locktime), i, p2pkh_script(spk[2:]), amount)
            signed = txin._replace(witness=(keys.sign_ecdsa(key.secret, digest) + bytes((SIGHASH_ALL,)), key.pubkey))
        elif is_p2pkh(spk) and spk[3:23] in by_hash:
            key = by_hash[spk[3:23]]
            digest = legacy_sighash(p.Tx(tx.version, vin, tx.vout, tx.locktime), i, spk)
            sig = keys.sign_ecdsa(key.secret, digest) + bytes((SIGHASH_ALL,))
            signed = txin._replace(script_sig=p.push_data(sig) + p.push_data(key.pubkey))
        elif is_p2sh(spk):
            wrapped = next((k for h, k in by_hash.items() if p.hash160(p2wpkh_script(h)) == spk[2:22] and k.compressed), None)
            if wrapped is not None:
                if amount == p.MAX_MONEY:
                    raise RpcFailure(
                        RPC_TYPE_ERROR, f"Missing amount for CTxOut(nValue={amount // p.COIN}.{amount % p.COIN:08d}, scriptPubKey={spk.hex()[:30]})"
                    )
                h = p.hash160(wrapped.pubkey)
                digest = segwit_v0_sighash(p.Tx(tx.version, vin, tx.vout, tx.locktime), i, p2pkh_script(h), amount)
                sig = keys.sign_ecdsa(wrapped.secret, digest) + bytes((SIGHASH_ALL,))
                signed = txin._replace(script_sig=p.push_data(p2wpkh_script(h)), witness=(sig, wrapped.pubkey))
        elif len(spk) in (35, 67) and spk[-1] == 0xAC and spk[0] == len(spk) - 2:
            key = next((k for k in secrets.values() if k.pubkey == spk[1:-1]), None)
            if key is not None:
                digest = legacy_sighash(p.Tx(tx.version, vin, tx.vout, tx.locktime), i, spk)
                signed = txin._replace(script_sig=p.push_data(keys.sign_ecdsa(key.secret, digest) + bytes((SIGHASH_ALL,))))
        if signed is None:
            errors.append(_input_error(txin, _EMPTY_WITNESS if segwit else _NO_KEY))
            continue
        vin[i] = signed
    return p.Tx(tx.version, vin, tx.vout, tx.locktime), not errors, errors


def parse_sighash(value: str | None) -> None:
    if value is None:
        return
    if value not in _SIGHASH_NAMES:
        raise RpcFailure(RPC_INVALID_PARAMETER, f"'{value}' is not a valid sighash parameter.")
    if _SIGHASH_NAMES[value] not in (0, 1):
        raise RpcFailure(RPC_INVALID_PARAMETER, f"sighash type '{value}' is not supported by the embedded regtest node (ALL and DEFAULT are)")


@rpc(
    "signrawtransactionwithkey",
    "Rawtransactions",
    "Sign inputs for raw transaction (serialized, hex-encoded).\nThe second argument is an array of base58-encoded private\n"
    "keys that will be the only keys used to sign the transaction.\nThe third optional argument (may be null) is an array of previous transaction "
    "outputs that\n"
    "this transaction depends on but may not yet be in the block chain.",
    [
        Arg("hexstring", "string", "The transaction hex string"),
        Arg("privkeys", "json array", "The base58-encoded private keys for signing"),
        Arg("prevtxs", "json array", "The previous dependent transaction outputs", None, default_doc=""),
        Arg(
            "sighashtype",
            "string",
            'The signature hash type. Must be one of:\n       "DEFAULT"\n       "ALL"\n       "NONE"\n       "SINGLE"\n'
            '       "ALL|ANYONECANPAY"\n       "NONE|ANYONECANPAY"\n       "SINGLE|ANYONECANPAY"',
            "DEFAULT",
        ),
    ],
    result='{\n  "hex" : "hex",  (string) The hex-encoded raw transaction with signature(s)\n  "complete" : true|false,  '
    "(boolean) If the transaction has a complete set of signatures\n  "
    '"errors" : [  (json array, optional) Script verification errors (if there are any)\n  ...\n}',
    examples=['"myhex" "[\\"key1\\",\\"key2\\"]"'],
)
def signrawtransactionwithkey(node: "RegtestNode", hexstring: str, privkeys: list, prevtxs: list | None, sighashtype: str) -> dict[str, Any]:
    from devnets.regtest.decode import decode_hex_tx

    try:
        tx = decode_hex_tx(hexstring)
    except p.DecodeError:
        tx = None
    if tx is None or not tx.vin:
        raise RpcFailure(RPC_DESERIALIZATION_ERROR, "TX decode failed. Make sure the tx has at least one input.")
    secrets: dict[bytes, keys.Secret] = {}
    for item in privkeys:
        if not isinstance(item, str):
            raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(item)} is not of expected type string")
        try:
            key = keys.decode_wif(item, NETWORK)
        except keys.InvalidKey:
            raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Invalid private key") from None
        secrets[key.pubkey] = key
    coins: dict[tuple[str, int], tuple[int, bytes]] = {}
    for txin in tx.vin:
        found = _coin(node, txin.prevout.txid_hex, txin.prevout.n)
        if found is not None:
            coins[(txin.prevout.txid_hex, txin.prevout.n)] = found
    _parse_prevtxs(prevtxs, coins)
    parse_sighash(sighashtype)
    signed, complete, errors = sign_inputs(tx, secrets, coins)
    result: dict[str, Any] = {"hex": signed.serialize().hex(), "complete": complete}
    if errors:
        result["errors"] = errors
    return result


@rpc(
    "combinerawtransaction",
    "Rawtransactions",
    "Combine multiple partially signed transactions into one transaction.\nThe combined transaction may be another partially\n"
    "signed transaction or a fully signed transaction.",
    [Arg("txs", "json array", "The hex strings of partially signed transactions")],
    result='"str"    (string) The hex-encoded raw transaction with signature(s)',
    examples=['"[\\"myhex1\\", \\"myhex2\\", \\"myhex3\\"]"'],
)
def combinerawtransaction(node: "RegtestNode", txs: list) -> str:
    from devnets.regtest.decode import decode_hex_tx

    variants = []
    for idx, item in enumerate(txs):
        if not isinstance(item, str):
            raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(item)} is not of expected type string")
        try:
            tx = decode_hex_tx(item)
        except p.DecodeError:
            tx = None
        if tx is None or not tx.vin:
            raise RpcFailure(RPC_DESERIALIZATION_ERROR, f"TX decode failed for tx {idx}. Make sure the tx has at least one input.")
        variants.append(tx)
    if not variants:
        raise RpcFailure(RPC_DESERIALIZATION_ERROR, "Missing transactions")
    merged = variants[0]
    vin = list(merged.vin)
    for i, txin in enumerate(merged.vin):
        if _coin(node, txin.prevout.txid_hex, txin.prevout.n) is None:
            raise RpcFailure(RPC_VERIFY_ERROR, "Input not found or already spent")
        for variant in variants:
            if len(variant.vin) > i and (variant.vin[i].script_sig or variant.vin[i].witness):
                vin[i] = txin._replace(script_sig=variant.vin[i].script_sig, witness=variant.vin[i].witness)
                break
    return p.Tx(merged.version, vin, merged.vout, merged.locktime).serialize().hex()
