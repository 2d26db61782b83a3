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
    RPC_MISC_ERROR,
    RPC_TYPE_ERROR,
)
from devnets.regtest.methods import RpcFailure, json_type

NETWORK = "regtest"
_HEX = re.compile(r"^[0-9a-fA-F]*$")

#: ``UniValue::getInt<T>`` ranges, by the C++ type bitcoind reads each argument as.
INT = (-(1 << 31), (1 << 31) - 1)
UINT32 = (0, (1 << 32) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)
#: Longest address bitcoind decodes (BIP173's 90 characters; base58 addresses are far shorter).
#: Checked before decoding: base58 of an unbounded string is quadratic.
MAX_ADDRESS_CHARS = 90


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
    """bitcoind 28's verbosity rule (getblock, getrawtransaction): null is the default, a boolean
    means 0/1, anything else is read with ``getInt<int>``."""
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    return int_arg(value)


def feerate_per_kvb(value: Any) -> int:
    """A BTC/kvB amount argument in sat/kvB (``AmountFromValue`` rules via the codec)."""
    from devnets.regtest.decode import btc_to_sats

    try:
        return btc_to_sats(value)
    except Exception as exc:  # the codec raises InputError subclasses with bitcoind's text
        raise RpcFailure(RPC_TYPE_ERROR, getattr(exc, "message", str(exc))) from None


def int_arg(value: Any, bounds: tuple[int, int] = INT) -> int:
    """``UniValue::getInt<T>``: a JSON number whose text is a plain integer within T's range.

    ``from_chars`` must consume the whole number, so ``1.0`` and ``1e3`` fail like ``2**31`` does:
    a ``std::runtime_error`` that bitcoind answers as RPC_MISC_ERROR "JSON integer out of range".
    Non-integral numbers arrive as Decimal and are refused without ever being converted (``int()``
    of ``Decimal("1e1000000")`` takes a minute); integers are at most 100 digits (bridge.core.jsonsafe).
    A non-number is UniValue's ``type_error``, which bitcoind answers as RPC_TYPE_ERROR."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(value)} is not of expected type number")
    if isinstance(value, Decimal) or not bounds[0] <= value <= bounds[1]:
        raise RpcFailure(RPC_MISC_ERROR, "JSON integer out of range")
    return value


def spk_json(script: bytes) -> dict[str, Any]:
    from devnets.regtest.decode import script_pubkey_json

    return script_pubkey_json(script, NETWORK)


def address_script(address: str) -> bytes:
    from chains.btc.address import InvalidAddress, address_to_script

    if len(address) > MAX_ADDRESS_CHARS:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address")
    try:
        return address_to_script(address, NETWORK)
    except InvalidAddress:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address") from None
