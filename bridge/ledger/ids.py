"""Transfer ids derived from the event that caused them.

Every writer (attesters' deliverer, swap relayer, operators) must derive the same
id for the same event, so a second delivery is a no-op instead of a double credit.
Hex is normalised to lowercase without ``0x`` so two spellings cannot make two ids.
"""

from __future__ import annotations

import re

from bridge.core.errors import InputError

_HEX = re.compile(r"^[0-9a-f]+$")


def _hex(value: str, what: str, length: int | None = 64) -> str:
    v = value.lower().removeprefix("0x") if isinstance(value, str) else ""
    if not _HEX.match(v) or (length is not None and len(v) != length):
        raise InputError(f"{what} must be {length or 'some'} hex digits, got {value!r}", field=what)
    return v


def _index(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"{what} must be a non-negative integer, got {value!r}", field=what)
    return value


def message(message_id: str) -> str:
    """An attested message (its EIP-712 struct hash) acts once."""
    return f"msg:{_hex(message_id, 'message_id')}"


def swap_leg(swap_id: str, leg: str) -> str:
    """One leg of an HTLC swap (e.g. ``lock``, ``claim``, ``refund``)."""
    if not isinstance(leg, str) or not re.fullmatch(r"[a-z0-9_-]{1,32}", leg):
        raise InputError(f"swap leg must be 1..32 of [a-z0-9_-], got {leg!r}", field="leg")
    return f"swap:{_hex(swap_id, 'swap_id')}:{leg}"


def btc_output(txid: str, vout: int) -> str:
    """A Bitcoin output (deposit to a committee address)."""
    return f"btc:{_hex(txid, 'txid')}:{_index(vout, 'vout')}"


def evm_log(tx_hash: str, log_index: int) -> str:
    """An EVM log (deposit or release event)."""
    return f"evm:{_hex(tx_hash, 'tx_hash')}:{_index(log_index, 'log_index')}"
