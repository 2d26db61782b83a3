"""Byte-level Bitcoin helpers that need no library: txids, output scripts, dust, addresses.

Kept apart from the signing code so the adapter can check a raw transaction
(``send``: which txid, which outputs) without building bitcoinlib objects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal

from bitcoinlib.encoding import EncodingError, addr_bech32_to_pubkeyhash, change_base

from bridge.errors import InputError

SATS_PER_BTC = 100_000_000

#: bech32 human-readable part and base58 version bytes (P2PKH, P2SH) per network, as Bitcoin Core uses them.
BECH32_HRP = {"mainnet": "bc", "testnet": "tb", "signet": "tb", "regtest": "bcrt"}
BASE58_VERSIONS = {"mainnet": (0x00, 0x05), "testnet": (0x6F, 0xC4), "signet": (0x6F, 0xC4), "regtest": (0x6F, 0xC4)}
#: Bitcoin Core's default dust relay feerate (sat/vB) used by its dust rule.
DUST_RELAY_FEERATE = 3


def btc_to_sats(amount: Decimal | str | int) -> int:
    """bitcoind's BTC amount (a ``Decimal`` from ``parse_float=Decimal``) as int sats, exactly."""
    if isinstance(amount, float):
        raise InputError("BTC amounts must be Decimal or str, never float (precision)")
    sats = Decimal(amount) * SATS_PER_BTC
    if sats != sats.to_integral_value():
        raise InputError(f"{amount} BTC is not a whole number of satoshis")
    return int(sats)


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def _read_compact(raw: bytes, pos: int) -> tuple[int, int]:
    first = raw[pos]
    if first < 0xFD:
        return first, pos + 1
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(raw[pos + 1 : pos + 1 + width], "little"), pos + 1 + width


@dataclass(frozen=True)
class TxSummary:
    txid: str
    outputs: tuple[tuple[int, bytes], ...]  # (value_sats, script_pubkey)
    inputs: tuple[tuple[str, int], ...]  # (prev txid, vout)
    weight: int

    @property
    def vsize(self) -> int:
        return -(-self.weight // 4)


def parse_tx(raw: bytes) -> TxSummary:
    """Parse a serialized transaction (with or without witness) far enough to know its txid and outputs."""
    try:
        pos = 4
        segwit = raw[4] == 0 and raw[5] != 0
        if segwit:
            pos = 6
        body_start = pos
        n_in, pos = _read_compact(raw, pos)
        inputs = []
        for _ in range(n_in):
            prev = raw[pos : pos + 32][::-1].hex()
            vout = int.from_bytes(raw[pos + 32 : pos + 36], "little")
            script_len, pos = _read_compact(raw, pos + 36)
            pos += script_len + 4
            inputs.append((prev, vout))
        n_out, pos = _read_compact(raw, pos)
        outputs = []
        for _ in range(n_out):
            value = int.from_bytes(raw[pos : pos + 8], "little")
            script_len, pos = _read_compact(raw, pos + 8)
            outputs.append((value, raw[pos : pos + script_len]))
            pos += script_len
        body_end = pos
        if segwit:
            for _ in range(n_in):
                n_items, pos = _read_compact(raw, pos)
                for _ in range(n_items):
                    item_len, pos = _read_compact(raw, pos)
                    pos += item_len
        if pos + 4 != len(raw):
            raise ValueError(f"{len(raw) - pos - 4} stray bytes")
        stripped = raw[:4] + raw[body_start:body_end] + raw[pos:]
    except (IndexError, KeyError, ValueError) as exc:
        raise InputError(f"not a valid serialized transaction: {exc}") from None
    return TxSummary(
        txid=sha256d(stripped)[::-1].hex(),
        outputs=tuple(outputs),
        inputs=tuple(inputs),
        weight=3 * len(stripped) + len(raw),
    )


# --- scripts and addresses ---------------------------------------------------------


def p2wpkh_script(pubkey_hash: bytes) -> bytes:
    return b"\x00\x14" + pubkey_hash


def p2wsh_script(witness_script: bytes) -> bytes:
    return b"\x00\x20" + hashlib.sha256(witness_script).digest()


def is_op_return(script: bytes) -> bool:
    return script[:1] == b"\x6a"


def dust_threshold(script: bytes, dust_feerate: int = DUST_RELAY_FEERATE) -> int:
    """Smallest value Bitcoin Core relays for an output with this script (its ``GetDustThreshold``)."""
    if is_op_return(script):
        return 0
    out_size = 8 + len(compact_size(len(script))) + len(script)
    is_witness_program = 4 <= len(script) <= 42 and (script[0] == 0 or 0x51 <= script[0] <= 0x60) and script[1] + 2 == len(script)
    # Spending cost: outpoint + empty scriptSig + sequence, plus a discounted witness or a P2PKH scriptSig.
    spend_size = 32 + 4 + 1 + 107 // 4 + 4 if is_witness_program else 32 + 4 + 1 + 107 + 4
    return (out_size + spend_size) * dust_feerate


def address_to_script(address: str, network: str = "regtest") -> bytes:
    """scriptPubKey for a Bitcoin Core address of ``network``; ``InputError`` naming the problem otherwise."""
    if network not in BECH32_HRP:
        raise InputError(f"unknown bitcoin network {network!r}")
    hrp = BECH32_HRP[network]
    lowered = address.lower()
    if lowered.startswith(("bc1", "tb1", "bcrt1")):
        if not lowered.startswith(hrp + "1"):
            raise InputError(f"address {address} is not a {network} address (expected prefix {hrp}1)")
        try:
            program = addr_bech32_to_pubkeyhash(address, prefix=hrp, include_witver=True)
        except (EncodingError, ValueError, TypeError) as exc:
            raise InputError(f"invalid bech32 address {address}: {exc}") from None
        return bytes(program)
    try:
        decoded = change_base(address, 58, 256, 25)
    except (EncodingError, ValueError, TypeError) as exc:
        raise InputError(f"invalid address {address}: {exc}") from None
    if len(decoded) != 25 or sha256d(decoded[:21])[:4] != decoded[21:]:
        raise InputError(f"invalid address {address}: bad length or checksum")
    p2pkh, p2sh = BASE58_VERSIONS[network]
    if decoded[0] == p2pkh:
        return b"\x76\xa9\x14" + decoded[1:21] + b"\x88\xac"
    if decoded[0] == p2sh:
        return b"\xa9\x14" + decoded[1:21] + b"\x87"
    raise InputError(f"address {address} is not a {network} address (version byte {decoded[0]:#04x})")
