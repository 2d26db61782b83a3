"""bitcoind's JSON shapes for transactions, scripts, addresses and amounts.

Key order follows Core's ``TxToUniv`` / ``ScriptToUniv`` / ``decodescript`` /
``validateaddress`` so that output compares equal to bitcoind's, field by field.
Amounts are ``Decimal`` with exactly 8 places; the RPC layer writes them as raw
JSON numbers.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, NamedTuple, Sequence

from bridge.core.errors import InputError
from chains.btc.address import Network, decode_destination, network, script_to_address
from devnets.regtest.descriptors import descsum_create, infer_descriptor
from chains.btc.primitives import (
    MAX_MONEY,
    DecodeError,
    Tx,
    TxOut,
    hash160,
    parse_hex,
    sha256,
)
from chains.btc.script import (
    MAX_SCRIPT_SIZE,
    classify,
    disassemble,
    has_valid_ops,
    is_unspendable,
    multisig_params,
    parse_script,
    witness_program,
)

_SATOSHI = Decimal("0.00000001")


class InvalidAmount(InputError):
    """An amount bitcoind would refuse; ``message`` is its text, ``code`` its RPC error code (-3)."""

    code = -3


class SpentOutput(NamedTuple):
    """What getblock verbosity 3 shows as an input's ``prevout``."""

    txout: TxOut
    height: int
    coinbase: bool


# --- amounts -------------------------------------------------------------------


class BtcAmount(Decimal):
    """A BTC amount whose text is always fixed-point with 8 decimals (``str`` of a plain Decimal
    gives ``1E-8``), so a JSON encoder that writes ``str(value)`` prints what bitcoind prints."""

    def __str__(self) -> str:
        return format(self, "f")

    __repr__ = __str__


def amount_to_btc(sats: int) -> BtcAmount:
    """Core's ``ValueFromAmount``: satoshis as BTC with exactly 8 decimals."""
    return BtcAmount(Decimal(sats).scaleb(-8).quantize(_SATOSHI))


_FIXED_POINT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def btc_to_sats(value: Any) -> int:
    """Core's ``AmountFromValue``: a JSON number (int, Decimal, float) or a string of BTC -> satoshis.

    Like bitcoind: "Amount is not a number or string", "Invalid amount" (bad syntax, more than 8
    decimals), "Amount out of range" (negative or above 21 million BTC)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise InvalidAmount("Amount is not a number or string", value=repr(value))
    text = repr(value) if isinstance(value, float) else str(value)
    if _FIXED_POINT.fullmatch(text) is None:
        raise InvalidAmount("Invalid amount", value=text)
    try:
        sats = Decimal(text).scaleb(8)
        if sats != sats.to_integral_value() or abs(sats) > 10**18 - 1:
            raise InvalidAmount("Invalid amount", value=text)
    except InvalidOperation:
        raise InvalidAmount("Invalid amount", value=text) from None
    result = int(sats)
    if not 0 <= result <= MAX_MONEY:
        raise InvalidAmount("Amount out of range", value=text)
    return result


# --- transactions ----------------------------------------------------------------


def _scripts_sane(tx: Tx) -> bool:
    """Core's ``CheckTxScriptsSanity``, used to choose between the witness and legacy readings."""
    if not tx.is_coinbase:
        for txin in tx.vin:
            if len(txin.script_sig) > MAX_SCRIPT_SIZE or not has_valid_ops(txin.script_sig):
                return False
    return all(len(o.script_pubkey) <= MAX_SCRIPT_SIZE and has_valid_ops(o.script_pubkey) for o in tx.vout)


def decode_hex_tx(hex_str: str, try_no_witness: bool = True, try_witness: bool = True) -> Tx:
    """Core's ``DecodeHexTx``: try the witness and legacy serializations and keep the plausible one
    (``decoderawtransaction``'s ``iswitness`` picks one).  Raises ``DecodeError("TX decode failed")``."""
    raw = parse_hex(hex_str)
    extended = legacy = None
    if try_witness:
        try:
            extended = Tx.parse(raw)
        except DecodeError:
            pass
        if extended is not None and _scripts_sane(extended):
            return extended
    if try_no_witness:
        try:
            legacy = Tx.parse(raw, allow_witness=False)
        except DecodeError:
            pass
        if legacy is not None and _scripts_sane(legacy):
            return legacy
    if extended is not None:
        return extended
    if legacy is not None:
        return legacy
    raise DecodeError("TX decode failed", reason="not a transaction in either serialization")


def script_pubkey_json(script: bytes, net: str | Network = "regtest", include_hex: bool = True) -> dict[str, Any]:
    """Core's ``ScriptToUniv`` with addresses: asm, desc, hex?, address?, type."""
    return dict(_script_pubkey_items(script, network(net), include_hex))


@lru_cache(maxsize=16384)
def _script_pubkey_items(script: bytes, net: Network, include_hex: bool) -> tuple[tuple[str, str], ...]:
    # Cached: the same output scripts (addresses) recur across a block, and the descriptor
    # checksum and bech32 encoding are the slow part of a transaction's JSON.
    out: dict[str, str] = {"asm": disassemble(script), "desc": infer_descriptor(script, net)}
    if include_hex:
        out["hex"] = script.hex()
    kind = classify(script)
    if kind != "pubkey":
        address = script_to_address(script, net)
        if address is not None:
            out["address"] = address
    out["type"] = kind
    return tuple(out.items())


def tx_to_json(
    tx: Tx,
    net: str | Network = "regtest",
    *,
    include_hex: bool = False,
    block_hash: str | None = None,
    prevouts: Sequence[SpentOutput] | None = None,
    include_prevout: bool = True,
    fee: int | None = None,
) -> dict[str, Any]:
    """Core's ``TxToUniv``: ``decoderawtransaction`` / ``getblock`` 2-3 transaction objects.

    ``prevouts`` (one per input, from undo data) adds ``fee`` and, with ``include_prevout``
    (getblock verbosity 3), each input's ``prevout``; without them an explicit ``fee`` (sats) may
    be given.  ``block_hash`` goes before ``hex`` as in TxToUniv; getrawtransaction appends its
    own ``blockhash``/``confirmations``/``time``/``blocktime`` after ``hex`` instead."""
    params = network(net)
    vin = []
    coinbase = tx.is_coinbase
    for i, txin in enumerate(tx.vin):
        entry: dict[str, Any]
        if coinbase:
            entry = {"coinbase": txin.script_sig.hex()}
        else:
            entry = {
                "txid": txin.prevout.txid_hex,
                "vout": txin.prevout.n,
                "scriptSig": {"asm": disassemble(txin.script_sig, sighash_decode=True), "hex": txin.script_sig.hex()},
            }
        if txin.witness:
            entry["txinwitness"] = [item.hex() for item in txin.witness]
        if prevouts is not None and include_prevout and not coinbase:
            spent = prevouts[i]
            entry["prevout"] = {
                "generated": spent.coinbase,
                "height": spent.height,
                "value": amount_to_btc(spent.txout.value),
                "scriptPubKey": script_pubkey_json(spent.txout.script_pubkey, params),
            }
        entry["sequence"] = txin.sequence
        vin.append(entry)
    result: dict[str, Any] = {
        "txid": tx.txid,
        "hash": tx.wtxid,
        "version": tx.version,
        "size": tx.size,
        "vsize": tx.vsize,
        "weight": tx.weight,
        "locktime": tx.locktime,
        "vin": vin,
        "vout": [{"value": amount_to_btc(out.value), "n": n, "scriptPubKey": script_pubkey_json(out.script_pubkey, params)} for n, out in enumerate(tx.vout)],
    }
    if prevouts is not None and not coinbase:
        fee = sum(p.txout.value for p in prevouts) - tx.total_out
    if fee is not None:
        result["fee"] = amount_to_btc(fee)
    if block_hash is not None:
        result["blockhash"] = block_hash
    if include_hex:
        result["hex"] = tx.hex()
    return result


# --- decodescript ------------------------------------------------------------------


def _can_wrap(script: bytes, kind: str) -> bool:
    if kind in ("nulldata", "scripthash", "witness_unknown", "witness_v1_taproot", "anchor"):
        return False
    if not has_valid_ops(script) or is_unspendable(script):
        return False
    # OP_CHECKSIGADD and the OP_SUCCESS range only mean something in tapscript.
    return not any(op == 0xBA or _is_op_success(op) for op, _ in parse_script(script))


def _is_op_success(op: int) -> bool:
    return op in (80, 98, 126, 127, 128, 129, 137, 138, 141, 142) or 131 <= op <= 134 or 149 <= op <= 153 or 187 <= op <= 254


def _wsh_descriptor(inner: bytes, kind: str) -> str | None:
    """``desc`` Core infers for a P2WSH whose witness script it knows (miniscript aside)."""
    if kind == "multisig":
        required, keys = multisig_params(inner)  # type: ignore[misc]
        return descsum_create(f"wsh(multi({required},{','.join(k.hex() for k in keys)}))")
    return None


def script_to_json(script: bytes, net: str | Network = "regtest") -> dict[str, Any]:
    """``decodescript``: asm, desc, address?, type, then p2sh and segwit{...} when Core shows them."""
    params = network(net)
    result = script_pubkey_json(script, params, include_hex=False)
    kind = result["type"]
    if not _can_wrap(script, kind):
        return result
    p2sh = b"\xa9\x14" + hash160(script) + b"\x87"
    result["p2sh"] = script_to_address(p2sh, params)
    if kind in ("multisig", "pubkey"):
        keys = [script[1:-1]] if kind == "pubkey" else multisig_params(script)[1]  # type: ignore[index]
        if any(len(k) != 33 for k in keys):
            return result  # uncompressed keys cannot be used in segwit
    elif kind not in ("nonstandard", "pubkeyhash"):
        return result
    if kind == "pubkey":
        segwit = b"\x00\x14" + hash160(script[1:-1])
    elif kind == "pubkeyhash":
        segwit = b"\x00\x14" + script[3:23]
    else:
        segwit = b"\x00\x20" + sha256(script)
    sr = script_pubkey_json(segwit, params)
    if segwit[1] == 0x20:
        desc = _wsh_descriptor(script, kind)
        if desc is not None:
            sr["desc"] = desc
    sr["p2sh-segwit"] = script_to_address(b"\xa9\x14" + hash160(segwit) + b"\x87", params)
    result["segwit"] = sr
    return result


# --- validateaddress ----------------------------------------------------------------


def validate_address_json(address: str, net: str | Network = "regtest") -> dict[str, Any]:
    """``validateaddress``: the valid shape with Core's ``DescribeAddress`` fields, or
    ``isvalid: false`` with ``error_locations`` and ``error``."""
    params = network(net)
    script, error, locations = decode_destination(address, params)
    if script is None:
        return {"isvalid": False, "error_locations": locations, "error": error}
    result: dict[str, Any] = {"isvalid": True, "address": script_to_address(script, params), "scriptPubKey": script.hex()}
    kind = classify(script)
    wp = witness_program(script)
    if kind == "pubkeyhash":
        result.update(isscript=False, iswitness=False)
    elif kind == "scripthash":
        result.update(isscript=True, iswitness=False)
    elif wp is not None:
        if kind == "witness_v0_keyhash":
            result["isscript"] = False
        elif kind != "witness_unknown":
            result["isscript"] = True
        result.update(iswitness=True, witness_version=wp[0], witness_program=wp[1].hex())
    return result
