"""BIP-174 partially signed transactions (PSBT version 0): parse and serialise every standard key type.

Each map (global, one per input, one per output) keeps its records as raw ``key -> value`` bytes;
the typed accessors below read and write them.  Unknown and proprietary records are kept byte for
byte.  Parsing applies Bitcoin Core's ``PartiallySignedTransaction::Unserialize`` checks in Core's
order (duplicate keys, key sizes, invalid pubkeys, unsigned tx with scriptSigs or witnesses, the
number of input/output maps, a non-witness UTXO that is not the spent transaction, trailing bytes)
and raises ``PsbtError`` whose ``message`` is what bitcoind's ``decodepsbt`` prints after
"TX decode failed " (Core's ``std::ios_base::failure`` texts carry libstdc++'s ": iostream error").
Serialisation writes records in Core's order (it sorts every map and drops the signing data of a
finalized input), so a PSBT Core would write comes back byte for byte.

Over 400 lines on purpose: one format, whose key table, parser, serialiser and strict checks must
change together (BIP-174's vectors test them as one).
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass, field
from typing import Iterable

from bridge.core.errors import InputError
from chains.btc.keys import is_valid_pubkey
from chains.btc.primitives import DecodeError, Tx, TxIn, TxOut, _parse_tx, hash160, ser_compact_size

MAGIC = b"psbt\xff"
BASE64_PREFIX = "cHNidP8"
MAX_SIZE = 0x02000000

# global, input and output key types
G_UNSIGNED_TX, G_XPUB, G_VERSION, G_PROPRIETARY = 0x00, 0x01, 0xFB, 0xFC
IN_NON_WITNESS_UTXO, IN_WITNESS_UTXO, IN_PARTIAL_SIG, IN_SIGHASH = 0x00, 0x01, 0x02, 0x03
IN_REDEEM_SCRIPT, IN_WITNESS_SCRIPT, IN_BIP32, IN_FINAL_SCRIPTSIG, IN_FINAL_WITNESS = 0x04, 0x05, 0x06, 0x07, 0x08
IN_RIPEMD160, IN_SHA256, IN_HASH160, IN_HASH256 = 0x0A, 0x0B, 0x0C, 0x0D
IN_TAP_KEY_SIG, IN_TAP_SCRIPT_SIG, IN_TAP_LEAF_SCRIPT, IN_TAP_BIP32, IN_TAP_INTERNAL_KEY, IN_TAP_MERKLE_ROOT = 0x13, 0x14, 0x15, 0x16, 0x17, 0x18
IN_PROPRIETARY = 0xFC
OUT_REDEEM_SCRIPT, OUT_WITNESS_SCRIPT, OUT_BIP32 = 0x00, 0x01, 0x02
OUT_TAP_INTERNAL_KEY, OUT_TAP_TREE, OUT_TAP_BIP32, OUT_PROPRIETARY = 0x05, 0x06, 0x07, 0xFC

#: Input fields a finalized input no longer carries (Core skips them when serialising).
_SIGNING_FIELDS = {IN_PARTIAL_SIG, IN_SIGHASH, IN_REDEEM_SCRIPT, IN_WITNESS_SCRIPT, IN_BIP32, IN_RIPEMD160, IN_SHA256, IN_HASH160, IN_HASH256}
_SIGNING_FIELDS |= {IN_TAP_KEY_SIG, IN_TAP_SCRIPT_SIG, IN_TAP_LEAF_SCRIPT, IN_TAP_BIP32, IN_TAP_INTERNAL_KEY, IN_TAP_MERKLE_ROOT}


class PsbtError(InputError):
    """Not a valid PSBT; ``message`` is bitcoind's text (without the "TX decode failed " prefix)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _fail(text: str) -> PsbtError:
    """An ``std::ios_base::failure`` as libstdc++ words it."""
    return PsbtError(f"{text}: iostream error")


class _Reader:
    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None, name: str = "DataStream") -> None:
        self.buf, self.pos, self.end, self.name = buf, pos, len(buf) if end is None else end, name

    def empty(self) -> bool:
        return self.pos >= self.end

    def read(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise _fail(f"{self.name}::read(): end of data")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def compact(self, range_check: bool = True) -> int:
        first = self.read(1)[0]
        if first < 0xFD:
            return first
        size, minimum = {0xFD: (2, 0xFD), 0xFE: (4, 0x10000), 0xFF: (8, 0x100000000)}[first]
        value = int.from_bytes(self.read(size), "little")
        if value < minimum:
            raise _fail("non-canonical ReadCompactSize()")
        if range_check and value > MAX_SIZE:
            raise _fail("ReadCompactSize(): size too large")
        return value

    def vector(self) -> bytes:
        return self.read(self.compact())


def _stated(r: _Reader) -> int:
    """``UnserializeFromVector``: the value's stated size; returns where it must end."""
    n = r.compact()
    return r.pos + n


def _check_end(r: _Reader, end: int) -> None:
    if r.pos != end:
        raise _fail("Size of value was not the stated size")


def _read_tx(r: _Reader, allow_witness: bool) -> Tx:
    try:
        tx, end = _parse_tx(r.buf[: r.end], r.pos, allow_witness)
    except DecodeError as exc:
        reason = exc.reason or "end of data"
        raise _fail("DataStream::read(): end of data" if "truncated" in reason else reason) from None
    r.pos = end
    return tx


def _witness_stack(data: bytes) -> list[bytes]:
    r = _Reader(data)
    return [r.vector() for _ in range(r.compact())]


def ser_witness_stack(stack: Iterable[bytes]) -> bytes:
    items = list(stack)
    return ser_compact_size(len(items)) + b"".join(ser_compact_size(len(i)) + i for i in items)


def ser_keypath(fingerprint: bytes, path: Iterable[int]) -> bytes:
    return fingerprint + b"".join(struct.pack("<I", i) for i in path)


def parse_keypath(value: bytes) -> tuple[bytes, list[int]]:
    return value[:4], [struct.unpack_from("<I", value, i)[0] for i in range(4, len(value), 4)]


def _read_keypath(r: _Reader) -> None:
    length = r.compact()
    if length % 4 or length == 0:
        raise _fail("Invalid length for HD key path")
    r.read(length)


# (type, duplicate text, key-size text) of the input/output/global fields whose key is the type byte alone.
_IN_SINGLE = {
    IN_NON_WITNESS_UTXO: ("input non-witness utxo", "Non-witness utxo key is more than one byte type"),
    IN_WITNESS_UTXO: ("input witness utxo", "Witness utxo key is more than one byte type"),
    IN_SIGHASH: ("input sighash type", "Sighash type key is more than one byte type"),
    IN_REDEEM_SCRIPT: ("input redeemScript", "Input redeemScript key is more than one byte type"),
    IN_WITNESS_SCRIPT: ("input witnessScript", "Input witnessScript key is more than one byte type"),
    IN_FINAL_SCRIPTSIG: ("input final scriptSig", "Final scriptSig key is more than one byte type"),
    IN_FINAL_WITNESS: ("input final scriptWitness", "Final scriptWitness key is more than one byte type"),
    IN_TAP_KEY_SIG: ("input Taproot key signature", "Input Taproot key signature key is more than one byte type"),
    IN_TAP_INTERNAL_KEY: ("input Taproot internal key", "Input Taproot internal key key is more than one byte type"),
    IN_TAP_MERKLE_ROOT: ("input Taproot merkle root", "Input Taproot merkle root key is more than one byte type"),
}
_OUT_SINGLE = {
    OUT_REDEEM_SCRIPT: ("output redeemScript", "Output redeemScript key is more than one byte type"),
    OUT_WITNESS_SCRIPT: ("output witnessScript", "Output witnessScript key is more than one byte type"),
    OUT_TAP_INTERNAL_KEY: ("output Taproot internal key", "Output Taproot internal key key is more than one byte type"),
    OUT_TAP_TREE: ("output Taproot tree", "Output Taproot tree key is more than one byte type"),
}
_PREIMAGES = {IN_RIPEMD160: (20, "ripemd160"), IN_SHA256: (32, "sha256"), IN_HASH160: (20, "hash160"), IN_HASH256: (32, "hash256")}


def _key_type(key: bytes) -> int:
    return _Reader(key, name="SpanReader").compact()


def _proprietary(key: bytes) -> None:
    r = _Reader(key, name="SpanReader")
    r.compact()
    r.vector()  # identifier
    r.compact()  # subtype


def _bip32_key(key: bytes, seen: dict, label: str = "BIP32 keypath") -> None:
    if len(key) not in (34, 66):
        raise _fail(f"Size of key was not the expected size for the type {label}")
    if not is_valid_pubkey(key[1:]):
        raise _fail("Invalid pubkey")
    if key in seen:
        raise _fail("Duplicate Key, pubkey derivation path already provided")


def _read_input_value(kind: int, key: bytes, r: _Reader, seen: dict) -> None:
    if kind in _IN_SINGLE:
        dup, size_text = _IN_SINGLE[kind]
        if key in seen:
            raise _fail(f"Duplicate Key, {dup} already provided")
        if len(key) != 1:
            raise _fail(size_text)
        if kind == IN_NON_WITNESS_UTXO:
            end = _stated(r)
            _read_tx(r, True)
            _check_end(r, end)
        elif kind == IN_WITNESS_UTXO:
            end = _stated(r)
            r.read(8)
            r.vector()
            _check_end(r, end)
        elif kind == IN_SIGHASH:
            end = _stated(r)
            r.read(4)
            _check_end(r, end)
        elif kind == IN_FINAL_WITNESS:
            end = _stated(r)
            for _ in range(r.compact()):
                r.vector()
            _check_end(r, end)
        elif kind in (IN_TAP_INTERNAL_KEY, IN_TAP_MERKLE_ROOT):
            end = _stated(r)
            r.read(32)
            _check_end(r, end)
        elif kind == IN_TAP_KEY_SIG:
            sig = r.vector()
            if len(sig) < 64:
                raise _fail("Input Taproot key path signature is shorter than 64 bytes")
            if len(sig) > 65:
                raise _fail("Input Taproot key path signature is longer than 65 bytes")
        else:
            r.vector()
        return
    if kind == IN_PARTIAL_SIG:
        if len(key) not in (34, 66):
            raise _fail("Size of key was not the expected size for the type partial signature pubkey")
        if not is_valid_pubkey(key[1:]):
            raise _fail("Invalid pubkey")
        if key in seen:
            raise _fail("Duplicate Key, input partial signature for pubkey already provided")
        r.vector()
    elif kind == IN_BIP32:
        _bip32_key(key, seen)
        _read_keypath(r)
    elif kind in _PREIMAGES:
        size, name = _PREIMAGES[kind]
        if len(key) != size + 1:
            raise _fail(f"Size of key was not the expected size for the type {name} preimage")
        if key in seen:
            raise _fail(f"Duplicate Key, input {name} preimage already provided")
        r.vector()
    elif kind == IN_TAP_SCRIPT_SIG:
        if key in seen:
            raise _fail("Duplicate Key, input Taproot script signature already provided")
        if len(key) != 65:
            raise _fail("Input Taproot script signature key is not 65 bytes")
        sig = r.vector()
        if len(sig) < 64:
            raise _fail("Input Taproot script path signature is shorter than 64 bytes")
        if len(sig) > 65:
            raise _fail("Input Taproot script path signature is longer than 65 bytes")
    elif kind == IN_TAP_LEAF_SCRIPT:
        if key in seen:
            raise _fail("Duplicate Key, input Taproot leaf script already provided")
        if len(key) < 34:
            raise _fail("Taproot leaf script key is not at least 34 bytes")
        if (len(key) - 2) % 32:
            raise _fail("Input Taproot leaf script key's control block size is not valid")
        if not r.vector():
            raise _fail("Input Taproot leaf script must be at least 1 byte")
    elif kind == IN_TAP_BIP32:
        if key in seen:
            raise _fail("Duplicate Key, input Taproot BIP32 keypath already provided")
        if len(key) != 33:
            raise _fail("Input Taproot BIP32 keypath key is not at 33 bytes")
        _tap_bip32_value(r, "Input")
    else:
        _other(kind, key, r, seen, IN_PROPRIETARY)


def _tap_bip32_value(r: _Reader, side: str) -> None:
    value_len = r.compact()
    start = r.pos
    for _ in range(r.compact()):
        r.read(32)
    hashes_len = r.pos - start
    if hashes_len > value_len:
        raise _fail(f"{side} Taproot BIP32 keypath has an invalid length")
    origin = value_len - hashes_len
    if origin % 4 or origin == 0:
        raise _fail("Invalid length for HD key path")
    r.read(origin)


def _other(kind: int, key: bytes, r: _Reader, seen: dict, proprietary: int) -> None:
    if kind == proprietary:
        _proprietary(key)
        if key in seen:
            raise _fail("Duplicate Key, proprietary key already found")
    elif key in seen:
        raise _fail("Duplicate Key, key for unknown value already provided")
    r.vector()


def _read_output_value(kind: int, key: bytes, r: _Reader, seen: dict) -> None:
    if kind in _OUT_SINGLE:
        dup, size_text = _OUT_SINGLE[kind]
        if key in seen:
            raise _fail(f"Duplicate Key, {dup} already provided")
        if len(key) != 1:
            raise _fail(size_text)
        if kind == OUT_TAP_INTERNAL_KEY:
            end = _stated(r)
            r.read(32)
            _check_end(r, end)
        elif kind == OUT_TAP_TREE:
            if not r.vector():
                raise _fail("Output Taproot tree must not be empty")
        else:
            r.vector()
    elif kind == OUT_BIP32:
        _bip32_key(key, seen)
        _read_keypath(r)
    elif kind == OUT_TAP_BIP32:
        if key in seen:
            raise _fail("Duplicate Key, output Taproot BIP32 keypath already provided")
        if len(key) != 33:
            raise _fail("Output Taproot BIP32 keypath key is not at 33 bytes")
        _tap_bip32_value(r, "Output")
    else:
        _other(kind, key, r, seen, OUT_PROPRIETARY)


def _read_map(r: _Reader, read_value, where: str) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    while not r.empty():
        key = r.vector()
        if not key:
            return records
        kind = _key_type(key)
        start = r.pos
        read_value(kind, key, r, records)
        # the raw value: re-read its compact size from where it started
        vr = _Reader(r.buf, start, r.pos)
        n = vr.compact(range_check=False)
        records[key] = r.buf[vr.pos : vr.pos + n]
    raise _fail(f"Separator is missing at the end of {where}")


@dataclass
class Psbt:
    tx: Tx
    globals: dict[bytes, bytes] = field(default_factory=dict)  # everything but the unsigned tx
    inputs: list[dict[bytes, bytes]] = field(default_factory=list)
    outputs: list[dict[bytes, bytes]] = field(default_factory=list)

    # --- creation ------------------------------------------------------------------------

    @classmethod
    def from_tx(cls, tx: Tx) -> "Psbt":
        """Core's ``PartiallySignedTransaction(tx)``: empty maps; the tx must be unsigned."""
        if any(txin.script_sig or txin.witness for txin in tx.vin):
            raise PsbtError("Inputs must not have scriptSigs and scriptWitnesses")
        return cls(tx, {}, [{} for _ in tx.vin], [{} for _ in tx.vout])

    # --- parsing -------------------------------------------------------------------------

    @classmethod
    def parse(cls, raw: bytes) -> "Psbt":
        """``DecodeRawPSBT``."""
        r = _Reader(bytes(raw))
        if r.read(5) != MAGIC:
            raise _fail("Invalid PSBT magic bytes")
        tx: Tx | None = None
        globals_: dict[bytes, bytes] = {}
        version_seen = False
        found_sep = False
        while not r.empty():
            key = r.vector()
            if not key:
                found_sep = True
                break
            kind = _key_type(key)
            start = r.pos
            if kind == G_UNSIGNED_TX:
                if tx is not None:
                    raise _fail("Duplicate Key, unsigned tx already provided")
                if len(key) != 1:
                    raise _fail("Global unsigned tx key is more than one byte type")
                end = _stated(r)
                tx = _read_tx(r, False)
                _check_end(r, end)
                if any(txin.script_sig or txin.witness for txin in tx.vin):
                    raise _fail("Unsigned tx does not have empty scriptSigs and scriptWitnesses.")
                continue
            if kind == G_XPUB:
                if len(key) != 79:
                    raise _fail("Size of key was not the expected size for the type global xpub")
                if not is_valid_pubkey(key[46:79]):
                    raise _fail("Invalid pubkey")
                if key in globals_:
                    raise _fail("Duplicate key, global xpub already provided")
                _read_keypath(r)
            elif kind == G_VERSION:
                if version_seen:
                    raise _fail("Duplicate Key, version already provided")
                if len(key) != 1:
                    raise _fail("Global version key is more than one byte type")
                end = _stated(r)
                version = struct.unpack("<I", r.read(4))[0]
                _check_end(r, end)
                version_seen = True
                if version > 0:
                    raise _fail("Unsupported version number")
            else:
                _other(kind, key, r, globals_, G_PROPRIETARY)
            vr = _Reader(r.buf, start, r.pos)
            n = vr.compact(range_check=False)
            globals_[key] = r.buf[vr.pos : vr.pos + n]
        if not found_sep:
            raise _fail("Separator is missing at the end of the global map")
        if tx is None:
            raise _fail("No unsigned transaction was provided")
        inputs: list[dict[bytes, bytes]] = []
        while not r.empty() and len(inputs) < len(tx.vin):
            record = _read_map(r, _read_input_value, "an input map")
            nwu = record.get(bytes((IN_NON_WITNESS_UTXO,)))
            if nwu is not None and Tx.parse(nwu).txid_bytes != tx.vin[len(inputs)].prevout.txid:
                raise _fail("Non-witness UTXO does not match outpoint hash")
            inputs.append(record)
        if len(inputs) != len(tx.vin):
            raise _fail("Inputs provided does not match the number of inputs in transaction.")
        outputs: list[dict[bytes, bytes]] = []
        while not r.empty() and len(outputs) < len(tx.vout):
            outputs.append(_read_map(r, _read_output_value, "an output map"))
        if len(outputs) != len(tx.vout):
            raise _fail("Outputs provided does not match the number of outputs in transaction.")
        if not r.empty():
            raise PsbtError("extra data after PSBT")
        return cls(tx, globals_, inputs, outputs)

    @classmethod
    def from_base64(cls, text: str) -> "Psbt":
        """``DecodeBase64PSBT``: strict base64 (padding required), then ``parse``."""
        try:
            if len(text) % 4:
                raise ValueError
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise PsbtError("invalid base64") from None
        return cls.parse(raw)

    # --- serialisation -------------------------------------------------------------------

    def serialize(self) -> bytes:
        unsigned = self.tx.serialize(witness=False)
        out = [MAGIC, b"\x01\x00", ser_compact_size(len(unsigned)), unsigned]
        out += _records(self.globals, _global_order)
        out.append(b"\x00")
        for record in self.inputs:
            final = bytes((IN_FINAL_SCRIPTSIG,)) in record or bytes((IN_FINAL_WITNESS,)) in record
            kept = {k: v for k, v in record.items() if not (final and _key_type(k) in _SIGNING_FIELDS)}
            out += _records(kept, _input_order)
            out.append(b"\x00")
        for record in self.outputs:
            out += _records(record, _output_order)
            out.append(b"\x00")
        return b"".join(out)

    def to_base64(self) -> str:
        return base64.b64encode(self.serialize()).decode()

    def copy(self) -> "Psbt":
        return Psbt(self.tx, dict(self.globals), [dict(m) for m in self.inputs], [dict(m) for m in self.outputs])


def _records(record: dict[bytes, bytes], order) -> list[bytes]:
    parts = []
    for key in sorted(record, key=lambda k: order(k, record[k])):
        value = record[key]
        parts += (ser_compact_size(len(key)), key, ser_compact_size(len(value)), value)
    return parts


_UNKNOWN = 1000


def _global_order(key: bytes, value: bytes):
    kind = _key_type(key)
    if kind == G_XPUB:
        return (1, value[:4], parse_keypath(value)[1], key)
    rank = {G_VERSION: 2, G_PROPRIETARY: 3}.get(kind, _UNKNOWN)
    return (rank, b"", [], key)


_IN_RANK = {
    k: i
    for i, k in enumerate(
        [
            IN_NON_WITNESS_UTXO,
            IN_WITNESS_UTXO,
            IN_PARTIAL_SIG,
            IN_SIGHASH,
            IN_REDEEM_SCRIPT,
            IN_WITNESS_SCRIPT,
            IN_BIP32,
            IN_RIPEMD160,
            IN_SHA256,
            IN_HASH160,
            IN_HASH256,
            IN_TAP_KEY_SIG,
            IN_TAP_SCRIPT_SIG,
            IN_TAP_LEAF_SCRIPT,
            IN_TAP_BIP32,
            IN_TAP_INTERNAL_KEY,
            IN_TAP_MERKLE_ROOT,
            IN_FINAL_SCRIPTSIG,
            IN_FINAL_WITNESS,
            IN_PROPRIETARY,
        ]
    )
}
_OUT_RANK = {k: i for i, k in enumerate([OUT_REDEEM_SCRIPT, OUT_WITNESS_SCRIPT, OUT_BIP32, OUT_PROPRIETARY, OUT_TAP_INTERNAL_KEY, OUT_TAP_TREE, OUT_TAP_BIP32])}


def _input_order(key: bytes, value: bytes):
    kind = _key_type(key)
    # partial signatures are kept by CKeyID (hash160 of the pubkey) in Core
    return (_IN_RANK.get(kind, _UNKNOWN), hash160(key[1:]) if kind == IN_PARTIAL_SIG else key)


def _output_order(key: bytes, value: bytes):
    return (_OUT_RANK.get(_key_type(key), _UNKNOWN), key)


# --- typed access to an input map ------------------------------------------------------


def k(kind: int, data: bytes = b"") -> bytes:
    return bytes((kind,)) + data


def non_witness_utxo(record: dict[bytes, bytes]) -> Tx | None:
    raw = record.get(k(IN_NON_WITNESS_UTXO))
    return Tx.parse(raw) if raw is not None else None


def witness_utxo(record: dict[bytes, bytes]) -> TxOut | None:
    raw = record.get(k(IN_WITNESS_UTXO))
    if raw is None:
        return None
    r = _Reader(raw)
    value = struct.unpack("<q", r.read(8))[0]
    return TxOut(value, r.vector())


def ser_txout(txout: TxOut) -> bytes:
    return txout.serialize()


def partial_sigs(record: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {key[1:]: v for key, v in record.items() if key[0] == IN_PARTIAL_SIG and len(key) in (34, 66)}


def sighash_type(record: dict[bytes, bytes]) -> int | None:
    raw = record.get(k(IN_SIGHASH))
    return struct.unpack("<i", raw)[0] if raw is not None else None


def keypaths(record: dict[bytes, bytes], kind: int) -> dict[bytes, tuple[bytes, list[int]]]:
    return {key[1:]: parse_keypath(v) for key, v in record.items() if key[0] == kind and len(key) in (34, 66)}


def final_witness(record: dict[bytes, bytes]) -> list[bytes] | None:
    raw = record.get(k(IN_FINAL_WITNESS))
    return _witness_stack(raw) if raw is not None else None


def is_finalized(record: dict[bytes, bytes]) -> bool:
    return k(IN_FINAL_SCRIPTSIG) in record or k(IN_FINAL_WITNESS) in record


def spent_output(psbt: Psbt, index: int) -> TxOut | None:
    """``GetInputUTXO``: the non-witness UTXO's output if present, else the witness UTXO."""
    record = psbt.inputs[index]
    prev = non_witness_utxo(record)
    if prev is not None:
        n = psbt.tx.vin[index].prevout.n
        return prev.vout[n] if n < len(prev.vout) else None
    return witness_utxo(record)


def extract(psbt: Psbt) -> Tx:
    """The network transaction of a PSBT whose inputs are all finalized."""
    vin = []
    for txin, record in zip(psbt.tx.vin, psbt.inputs):
        stack = final_witness(record) or []
        vin.append(TxIn(txin.prevout, record.get(k(IN_FINAL_SCRIPTSIG), b""), txin.sequence, tuple(stack)))
    return Tx(psbt.tx.version, vin, psbt.tx.vout, psbt.tx.locktime)
