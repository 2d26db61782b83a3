"""Keys, coin selection and P2WPKH signing without any node wallet.

The bridge holds its own keys (``BtcKey``, over libsecp256k1 through coincurve) and
builds and signs its own transactions (``build_payment``: BIP143 digests from
``chains.btc.sighash``); the adapter finds the coins (``BitcoinAdapter.utxos``) and
broadcasts (``BitcoinAdapter.send_to``).

Coin selection is largest-first: on a devnet or a bridge hot wallet the coins are
few, so the gain of branch-and-bound (an exact, changeless match) is rare, while
largest-first is deterministic, always finds a solution when one exists, and
keeps the input count (and so the fee and the signing time) low.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Iterable, Sequence

import coincurve

from bridge.core.errors import InputError, InsufficientFunds
from chains.bitcoin_tx import address_to_script
from chains.btc.address import b58check_encode, b58decode, encode_segwit_address
from chains.btc.address import network as bitcoin_network
from chains.btc.primitives import OutPoint, Tx, TxIn, TxOut, hash160, hash256, ser_compact_size
from chains.btc.sighash import SIGHASH_ALL, segwit_v0_sighash
from chains.btc.script import OP_RETURN, dust_threshold, p2pkh_script, p2wpkh_script

# Bitcoin Core's WIF version bytes; bitcoinlib's "regtest" uses the mainnet byte, Core uses the testnet one.
_WIF_VERSION = {"mainnet": 0x80, "testnet": 0xEF, "signet": 0xEF, "regtest": 0xEF}
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

#: Refuse a payment whose feerate (sat/vB) or total fee (sats) is above these unless the caller raises them.
MAX_FEERATE = 1_000
MAX_FEE = 1_000_000

# Witness of a P2WPKH spend: item count, then a DER signature of at most 72 bytes with its
# sighash byte (low-S keeps s at 32 bytes; r may need 33) and the 33-byte compressed key.
_P2WPKH_WITNESS_BYTES = 1 + 1 + 72 + 1 + 33


def estimate_weight(n_inputs: int, output_scripts: Sequence[bytes]) -> int:
    """Weight of a segwit tx spending ``n_inputs`` P2WPKH coins to ``output_scripts`` (never under the real one)."""
    outputs = sum(8 + len(ser_compact_size(len(s))) + len(s) for s in output_scripts)
    # version, locktime, both counts, then outpoint + empty scriptSig + sequence per input.
    base = 8 + len(ser_compact_size(n_inputs)) + len(ser_compact_size(len(output_scripts))) + outputs + 41 * n_inputs
    return 4 * base + 2 + _P2WPKH_WITNESS_BYTES * n_inputs  # +2: segwit marker and flag


def fee_for(weight: int, feerate: int) -> int:
    return math.ceil(weight / 4) * feerate


class BtcKey:
    """A secp256k1 private key the bridge holds, with its P2WPKH script and address."""

    __slots__ = ("_signer", "_pubkey", "secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32 or not 0 < int.from_bytes(secret, "big") < _SECP256K1_N:
            raise InputError("a bitcoin private key is 32 bytes in 1..n-1")
        self.secret = secret
        # libsecp256k1 signs and derives in microseconds; bitcoinlib's pure-Python curve took
        # milliseconds, on the path from a revealed secret to the claim broadcast.
        self._signer = coincurve.PrivateKey(secret)
        self._pubkey = self._signer.public_key.format(compressed=True)

    @classmethod
    def generate(cls) -> "BtcKey":
        while True:
            secret = secrets.token_bytes(32)
            if 0 < int.from_bytes(secret, "big") < _SECP256K1_N:
                return cls(secret)

    @classmethod
    def from_hex(cls, hex_secret: str) -> "BtcKey":
        try:
            return cls(bytes.fromhex(hex_secret.removeprefix("0x")))
        except ValueError:
            raise InputError("private key hex is not valid hex") from None

    @classmethod
    def from_wif(cls, wif: str) -> "BtcKey":
        """Accepts Bitcoin Core's WIF for any network (compressed keys only: P2WPKH needs them)."""
        raw = b58decode(wif, 100)
        if raw is None:
            raise InputError("WIF is not valid base58")
        if len(raw) != 38 or raw[0] not in (0x80, 0xEF) or raw[33] != 0x01 or hash256(raw[:34])[:4] != raw[34:]:
            raise InputError("WIF must be a checksummed compressed private key (version 0x80 or 0xef)")
        return cls(raw[1:33])

    def wif(self, network: str = "regtest") -> str:
        payload = bytes([_WIF_VERSION[network]]) + self.secret + b"\x01"
        return b58check_encode(payload)

    @property
    def pubkey(self) -> bytes:
        """Compressed SEC1 public key (33 bytes)."""
        return self._pubkey

    @property
    def pubkey_hash(self) -> bytes:
        return hash160(self.pubkey)

    @property
    def p2wpkh_script(self) -> bytes:
        return p2wpkh_script(self.pubkey_hash)

    def p2wpkh_address(self, network: str = "regtest") -> str:
        return encode_segwit_address(bitcoin_network(network).hrp, 0, self.pubkey_hash)

    def sign_digest(self, digest: bytes) -> bytes:
        """DER signature (low-S, RFC 6979) of a 32-byte sighash, without the sighash-type byte."""
        if len(digest) != 32:
            raise InputError("sign_digest needs a 32-byte digest")
        return self._signer.sign(digest, hasher=None)  # RFC 6979 nonce, low S

    def __repr__(self) -> str:  # never show the secret
        return f"BtcKey(pubkey={self.pubkey.hex()})"


@dataclass(frozen=True)
class Utxo:
    txid: str
    vout: int
    value_sats: int
    script_pubkey: bytes
    height: int | None  # None: unconfirmed (in the mempool)
    coinbase: bool = False

    @property
    def outpoint(self) -> tuple[str, int]:
        return (self.txid, self.vout)


@dataclass(frozen=True)
class SignedTx:
    raw_hex: str
    txid: str
    fee_sats: int
    vsize: int
    inputs: tuple[Utxo, ...]
    change_vout: int | None


def _resolve_outputs(outputs: Sequence[tuple[str | bytes, int]], network: str) -> list[tuple[bytes, int]]:
    if not outputs:
        raise InputError("a payment needs at least one output")
    resolved = []
    for i, (dest, value) in enumerate(outputs):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"output {i}: value must be int sats, got {type(value).__name__}")
        script = address_to_script(dest, network) if isinstance(dest, str) else bytes(dest)
        if value < 0:
            raise InputError(f"output {i}: negative value {value}")
        if script[:1] == bytes((OP_RETURN,)):
            if value != 0:
                raise InputError(f"output {i}: an OP_RETURN output must carry 0 sats")
        elif value < dust_threshold(script):
            raise InputError(f"output {i}: {value} sats is dust for this script (minimum {dust_threshold(script)})")
        resolved.append((script, value))
    return resolved


def select_coins(utxos: Iterable[Utxo], target: int, feerate: int, output_scripts: Sequence[bytes]) -> tuple[list[Utxo], int]:
    """Largest-first: add coins until they pay ``target`` plus the fee of the tx so far.

    Returns the chosen coins and the fee (sats) for a tx without change.
    """
    chosen: list[Utxo] = []
    total = 0
    for utxo in sorted(utxos, key=lambda u: (-u.value_sats, u.txid, u.vout)):
        chosen.append(utxo)
        total += utxo.value_sats
        fee = fee_for(estimate_weight(len(chosen), output_scripts), feerate)
        if total >= target + fee:
            return chosen, fee
    fee = fee_for(estimate_weight(max(1, len(chosen)), output_scripts), feerate)
    raise InsufficientFunds(
        f"coins worth {total} sats cannot pay {target} sats plus a fee of about {fee} sats",
        available=total,
        needed=target + fee,
    )


def build_payment(
    keys: Sequence[BtcKey],
    utxos: Iterable[Utxo],
    outputs: Sequence[tuple[str | bytes, int]],
    feerate: int,
    change_script: bytes | None = None,
    network: str = "regtest",
    max_feerate: int = MAX_FEERATE,
    max_fee: int = MAX_FEE,
) -> SignedTx:
    """Select coins owned by ``keys`` (P2WPKH), pay ``outputs`` and sign (BIP143).

    ``outputs`` are ``(address or scriptPubKey, sats)``.  Change goes to
    ``change_script`` (default: the first key's P2WPKH) when it is above dust
    after paying for itself; otherwise it is left to the fee.
    """
    if not keys:
        raise InputError("build_payment needs at least one key")
    if not isinstance(feerate, int) or isinstance(feerate, bool) or feerate < 1:
        raise InputError(f"feerate must be a positive int (sat/vB), got {feerate!r}")
    if feerate > max_feerate:
        raise InputError(f"feerate {feerate} sat/vB is above the limit of {max_feerate} sat/vB (absurd fee)")
    resolved = _resolve_outputs(outputs, network)
    by_script = {k.p2wpkh_script: k for k in keys}
    spendable = [u for u in utxos if u.script_pubkey in by_script]
    change_script = keys[0].p2wpkh_script if change_script is None else change_script

    target = sum(v for _, v in resolved)
    scripts = [s for s, _ in resolved]
    chosen, fee = select_coins(spendable, target, feerate, scripts)
    total_in = sum(u.value_sats for u in chosen)

    change_vout = None
    fee_with_change = fee_for(estimate_weight(len(chosen), scripts + [change_script]), feerate)
    change = total_in - target - fee_with_change
    if change >= dust_threshold(change_script):
        resolved.append((change_script, change))
        change_vout = len(resolved) - 1
        fee = fee_with_change
    else:
        fee = total_in - target
    if fee > max_fee:
        raise InputError(f"fee of {fee} sats is above the limit of {max_fee} sats (absurd fee)")

    unsigned = Tx(2, [TxIn(OutPoint.from_hex(u.txid, u.vout)) for u in chosen], [TxOut(v, s) for s, v in resolved])
    vin = []
    for i, utxo in enumerate(chosen):
        key = by_script[utxo.script_pubkey]
        sig = key.sign_digest(segwit_v0_sighash(unsigned, i, p2pkh_script(key.pubkey_hash), utxo.value_sats)) + bytes([SIGHASH_ALL])
        vin.append(unsigned.vin[i]._replace(witness=(sig, key.pubkey)))
    signed = Tx(2, vin, unsigned.vout)
    raw = signed.serialize()
    return SignedTx(raw_hex=raw.hex(), txid=signed.txid, fee_sats=fee, vsize=signed.vsize, inputs=tuple(chosen), change_vout=change_vout)
