"""Argument parsing shared by the RPC methods, with bitcoind's error texts (``ParseHashV`` & co)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from chains.btc import primitives as p
from chains.btc.rpc_errors import (
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_TYPE_ERROR,
)
from devnets.regtest.methods import RpcFailure

NETWORK = "regtest"
_HEX = re.compile(r"^[0-9a-fA-F]*$")


def parse_hash(value: str, name: str) -> str:
    if len(value) != 64:
        raise RpcFailure(RPC_INVALID_PARAMETER, f"{name} must be of length 64 (not {len(value)}, for '{value}')")
    if not _HEX.match(value):
        raise RpcFailure(RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')")
    return value.lower()


def parse_hex(value: str, name: str) -> bytes:
    if len(value) % 2 or not _HEX.match(value):
        raise RpcFailure(RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')")
    return bytes.fromhex(value)


def decode_tx(hexstring: str) -> p.Tx:
    """``DecodeHexTx``: any hex or parse failure is bitcoind's -22 "TX decode failed"."""
    from devnets.regtest.decode import decode_hex_tx

    try:
        return decode_hex_tx(hexstring)
    except p.DecodeError:
        raise RpcFailure(RPC_DESERIALIZATION_ERROR, "TX decode failed") from None


def verbosity(value: Any, default: int) -> int:
    """``ParseVerbosity``: a number, or a boolean meaning 0/1."""
    if value is None:
        return default
    return int(value)


def feerate_per_kvb(value: Any) -> int:
    """A BTC/kvB amount argument in sat/kvB (``AmountFromValue`` rules via the codec)."""
    from devnets.regtest.decode import btc_to_sats

    try:
        return btc_to_sats(value)
    except Exception as exc:  # the codec raises InputError subclasses with bitcoind's text
        raise RpcFailure(RPC_TYPE_ERROR, getattr(exc, "message", str(exc))) from None


def int_arg(value: Any) -> int:
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise RpcFailure(RPC_TYPE_ERROR, "JSON integer out of range")
        return int(value)
    return int(value)


def spk_json(script: bytes) -> dict[str, Any]:
    from devnets.regtest.decode import script_pubkey_json

    return script_pubkey_json(script, NETWORK)


def address_script(address: str) -> bytes:
    from chains.btc.address import InvalidAddress, address_to_script

    try:
        return address_to_script(address, NETWORK)
    except InvalidAddress:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address") from None
