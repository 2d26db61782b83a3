"""Bitcoin wire format: transactions, headers, blocks, merkle roots, regtest constants.

Pure and fast: the node parses every transaction it is sent through here, so the
parsers work on one ``bytes`` buffer with ``struct`` and never loop per byte.
Hashes are kept in internal byte order (``bytes``); ``*_hex`` / ``txid`` / ``hash``
give bitcoind's display order (reversed hex).

Over 400 lines on purpose: one wire format, whose parsers and serialisers are checked against each
other and must change together.
"""

from __future__ import annotations

import hashlib
import re
import struct
from functools import cached_property
from typing import NamedTuple, Sequence

from bridge.core.errors import InputError

COIN = 100_000_000
MAX_MONEY = 21_000_000 * COIN
MAX_SIZE = 0x02000000  # Core's bound on any compact-size length in a message
WITNESS_SCALE_FACTOR = 4
NULL_HASH = bytes(32)
SEQUENCE_FINAL = 0xFFFFFFFF

REGTEST_BITS = 0x207FFFFF
REGTEST_HALVING_INTERVAL = 150
INITIAL_SUBSIDY = 50 * COIN
COINBASE_MATURITY = 100
WITNESS_COMMITMENT_HEADER = bytes.fromhex("aa21a9ed")

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_u16 = _U16.unpack_from
_u32 = _U32.unpack_from
_i32 = _I32.unpack_from
_u64 = _U64.unpack_from
_i64 = _I64.unpack_from
_HEADER = struct.Struct("<i32s32sIII")

_sha256 = hashlib.sha256


class DecodeError(InputError):
    """Bytes that are not a valid serialization.  ``message`` is bitcoind's text, ``reason`` says what broke."""

    def __init__(self, message: str = "TX decode failed", reason: str | None = None, **details: object) -> None:
        super().__init__(message, reason=reason, **details)
        self.reason = reason


# --- hashes -----------------------------------------------------------------


def sha256(data: bytes) -> bytes:
    return _sha256(data).digest()


def hash256(data: bytes) -> bytes:
    return _sha256(_sha256(data).digest()).digest()


def hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", _sha256(data).digest()).digest()


def tagged_hash(tag: str, data: bytes) -> bytes:
    """BIP340 tagged hash."""
    t = _sha256(tag.encode()).digest()
    return _sha256(t + t + data).digest()


_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


def parse_hex(text: str, message: str = "TX decode failed") -> bytes:
    """Core's ``IsHex`` + ``ParseHex``: an even number of hex digits, nothing else (no spaces, no 0x)."""
    if not isinstance(text, str) or _HEX.fullmatch(text) is None:
        raise DecodeError(message, reason="not hex")
    return bytes.fromhex(text)


# --- compact size -----------------------------------------------------------


def ser_compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + _U16.pack(n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + _U32.pack(n)
    return b"\xff" + _U64.pack(n)


def read_compact_size(buf: bytes, pos: int, range_check: bool = True) -> tuple[int, int]:
    """Return ``(value, new_pos)``.  Rejects non-canonical encodings and, with ``range_check``,
    values above ``MAX_SIZE`` as Core's ``ReadCompactSize`` does.  Raises ``DecodeError``."""
    try:
        first = buf[pos]
        if first < 0xFD:
            return first, pos + 1
        if first == 0xFD:
            value, size, minimum = _u16(buf, pos + 1)[0], 3, 0xFD
        elif first == 0xFE:
            value, size, minimum = _u32(buf, pos + 1)[0], 5, 0x10000
        else:
            value, size, minimum = _u64(buf, pos + 1)[0], 9, 0x100000000
    except (IndexError, struct.error):
        raise DecodeError(reason="truncated compact size") from None
    if value < minimum:
        raise DecodeError(reason="non-canonical ReadCompactSize()")
    if range_check and value > MAX_SIZE:
        raise DecodeError(reason="ReadCompactSize(): size too large")
    return value, pos + size


# --- transactions -----------------------------------------------------------


class OutPoint(NamedTuple):
    txid: bytes  # internal byte order
    n: int

    @property
    def txid_hex(self) -> str:
        return self.txid[::-1].hex()

    def is_null(self) -> bool:
        return self.n == 0xFFFFFFFF and self.txid == NULL_HASH

    def serialize(self) -> bytes:
        return self.txid + _U32.pack(self.n)

    @classmethod
    def from_hex(cls, txid_hex: str, n: int) -> "OutPoint":
        return cls(bytes.fromhex(txid_hex)[::-1], n)


NULL_OUTPOINT = OutPoint(NULL_HASH, 0xFFFFFFFF)


class TxIn(NamedTuple):
    prevout: OutPoint
    script_sig: bytes = b""
    sequence: int = SEQUENCE_FINAL
    witness: tuple[bytes, ...] = ()


class TxOut(NamedTuple):
    value: int  # satoshis
    script_pubkey: bytes

    def serialize(self) -> bytes:
        return _I64.pack(self.value) + ser_compact_size(len(self.script_pubkey)) + self.script_pubkey


# The parser builds the NamedTuples with tuple.__new__: the same objects without the Python-level
# __new__ call (about 0.3 us saved per input/output on the mempool's hot path).
_new = tuple.__new__


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = read_compact_size(buf, pos)
    end = pos + n
    if end > len(buf):
        raise DecodeError(reason="truncated data")
    return buf[pos:end], end


def _parse_tx(buf: bytes, start: int, allow_witness: bool = True) -> tuple["Tx", int]:
    """Parse one transaction at ``start``; return it and its end.  Without ``allow_witness`` an
    empty input vector is read literally (Core's TX_NO_WITNESS form)."""
    try:
        version = _i32(buf, start)[0]
        pos = start + 4
        n_in, pos = read_compact_size(buf, pos)
        flags = 0
        if n_in == 0 and allow_witness:
            # BIP144: an empty input vector is the segwit marker; the next byte is the flag.
            flags = buf[pos]
            pos += 1
            if flags != 0:
                n_in, pos = read_compact_size(buf, pos)
        vin: list[TxIn] = []
        append_in = vin.append
        for _ in range(n_in):
            prev_hash = buf[pos : pos + 32]
            (idx,) = _u32(buf, pos + 32)
            pos += 36
            script_sig, pos = _read_bytes(buf, pos)
            (seq,) = _u32(buf, pos)
            pos += 4
            append_in(_new(TxIn, (_new(OutPoint, (prev_hash, idx)), script_sig, seq, ())))
        vout: list[TxOut] = []
        if flags != 0 or n_in != 0 or not allow_witness:
            n_out, pos = read_compact_size(buf, pos)
            append_out = vout.append
            for _ in range(n_out):
                (value,) = _i64(buf, pos)
                spk, pos = _read_bytes(buf, pos + 8)
                append_out(_new(TxOut, (value, spk)))
        body_end = pos
        if flags & 1:
            flags ^= 1
            any_witness = False
            for i in range(n_in):
                n_items, pos = read_compact_size(buf, pos)
                items = []
                for _ in range(n_items):
                    item, pos = _read_bytes(buf, pos)
                    items.append(item)
                if items:
                    any_witness = True
                    prevout, script_sig, seq, _ = vin[i]
                    vin[i] = _new(TxIn, (prevout, script_sig, seq, tuple(items)))
            if not any_witness:
                raise DecodeError(reason="Superfluous witness record")
        if flags:
            raise DecodeError(reason="Unknown transaction optional data")
        (locktime,) = _u32(buf, pos)
        pos += 4
    except (IndexError, struct.error):
        raise DecodeError(reason="truncated data") from None
    tx = Tx(version, vin, vout, locktime)
    raw = buf if start == 0 and pos == len(buf) else buf[start:pos]
    tx.__dict__["_raw"] = raw
    # Witness form: the stripped serialization (for the txid) is version + vin/vout + locktime.
    tx.__dict__["_stripped"] = raw[:4] + raw[6 : body_end - start] + raw[-4:] if body_end != pos - 4 else raw
    return tx, pos


class Tx:
    """A transaction.  Treat as immutable: hashes and sizes are cached on first use."""

    def __init__(self, version: int, vin: Sequence[TxIn], vout: Sequence[TxOut], locktime: int = 0) -> None:
        self.version = version
        self.vin = tuple(vin)
        self.vout = tuple(vout)
        self.locktime = locktime

    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview, allow_witness: bool = True) -> "Tx":
        """Strict parse of one whole serialization; raises ``DecodeError``."""
        buf = bytes(raw)
        tx, end = _parse_tx(buf, 0, allow_witness)
        if end != len(buf):
            raise DecodeError(reason="trailing bytes after transaction")
        return tx

    @classmethod
    def from_hex(cls, hex_str: str) -> "Tx":
        return cls.parse(parse_hex(hex_str))

    # serialization ---------------------------------------------------------

    def _build(self, witness: bool) -> bytes:
        parts = [_I32.pack(self.version)]
        if witness:
            parts.append(b"\x00\x01")
        parts.append(ser_compact_size(len(self.vin)))
        for txin in self.vin:
            parts += (txin.prevout.txid, _U32.pack(txin.prevout.n), ser_compact_size(len(txin.script_sig)), txin.script_sig, _U32.pack(txin.sequence))
        parts.append(ser_compact_size(len(self.vout)))
        for txout in self.vout:
            parts += (_I64.pack(txout.value), ser_compact_size(len(txout.script_pubkey)), txout.script_pubkey)
        if witness:
            for txin in self.vin:
                parts.append(ser_compact_size(len(txin.witness)))
                for item in txin.witness:
                    parts += (ser_compact_size(len(item)), item)
        parts.append(_U32.pack(self.locktime))
        return b"".join(parts)

    @cached_property
    def _raw(self) -> bytes:
        return self._build(True) if self.has_witness else self._stripped

    @cached_property
    def _stripped(self) -> bytes:
        return self._build(False)

    def serialize(self, witness: bool = True) -> bytes:
        return self._raw if witness else self._stripped

    def hex(self) -> str:
        return self._raw.hex()

    # identity --------------------------------------------------------------

    @cached_property
    def txid_bytes(self) -> bytes:
        return hash256(self._stripped)

    @cached_property
    def txid(self) -> str:
        return self.txid_bytes[::-1].hex()

    @cached_property
    def wtxid_bytes(self) -> bytes:
        return hash256(self._raw) if self.has_witness else self.txid_bytes

    @cached_property
    def wtxid(self) -> str:
        return self.wtxid_bytes[::-1].hex()

    @property
    def hash(self) -> str:
        """bitcoind's ``hash`` field: the wtxid."""
        return self.wtxid

    # sizes -----------------------------------------------------------------

    @cached_property
    def has_witness(self) -> bool:
        return any(txin.witness for txin in self.vin)

    @property
    def size(self) -> int:
        return len(self._raw)

    @property
    def stripped_size(self) -> int:
        return len(self._stripped)

    @property
    def weight(self) -> int:
        return len(self._stripped) * (WITNESS_SCALE_FACTOR - 1) + len(self._raw)

    @property
    def vsize(self) -> int:
        return (self.weight + WITNESS_SCALE_FACTOR - 1) // WITNESS_SCALE_FACTOR

    @property
    def is_coinbase(self) -> bool:
        return len(self.vin) == 1 and self.vin[0].prevout.is_null()

    @property
    def total_out(self) -> int:
        return sum(o.value for o in self.vout)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tx) and self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self.wtxid_bytes)

    def __repr__(self) -> str:
        return f"Tx(txid={self.txid}, vin={len(self.vin)}, vout={len(self.vout)})"


# --- headers and blocks -----------------------------------------------------


class BlockHeader(NamedTuple):
    version: int
    prev_hash: bytes  # internal byte order
    merkle_root: bytes  # internal byte order
    time: int
    bits: int
    nonce: int

    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview) -> "BlockHeader":
        if len(raw) != 80:
            raise DecodeError("Block header decode failed", reason="header must be 80 bytes")
        return cls(*_HEADER.unpack(bytes(raw)))

    def serialize(self) -> bytes:
        return _HEADER.pack(*self)

    @property
    def hash_bytes(self) -> bytes:
        return hash256(_HEADER.pack(*self))

    @property
    def hash(self) -> str:
        return self.hash_bytes[::-1].hex()

    @property
    def prev_hash_hex(self) -> str:
        return self.prev_hash[::-1].hex()

    @property
    def merkle_root_hex(self) -> str:
        return self.merkle_root[::-1].hex()

    def check_pow(self) -> bool:
        return int.from_bytes(self.hash_bytes, "little") <= bits_to_target(self.bits)


class Block:
    """A block: header plus transactions (coinbase first).  Treat as immutable."""

    def __init__(self, header: BlockHeader, txs: Sequence[Tx]) -> None:
        self.header = header
        self.txs = tuple(txs)

    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview) -> "Block":
        buf = bytes(raw)
        if len(buf) < 81:
            raise DecodeError("Block decode failed", reason="truncated block")
        header = BlockHeader(*_HEADER.unpack_from(buf, 0))
        try:
            n_tx, pos = read_compact_size(buf, 80)
            txs = []
            for _ in range(n_tx):
                tx, pos = _parse_tx(buf, pos)
                txs.append(tx)
        except DecodeError as exc:
            raise DecodeError("Block decode failed", reason=exc.reason) from None
        if pos != len(buf):
            raise DecodeError("Block decode failed", reason="trailing bytes after block")
        block = cls(header, txs)
        block.__dict__["_raw"] = buf
        return block

    @classmethod
    def from_hex(cls, hex_str: str) -> "Block":
        return cls.parse(parse_hex(hex_str, "Block decode failed"))

    @cached_property
    def _raw(self) -> bytes:
        return b"".join([self.header.serialize(), ser_compact_size(len(self.txs))] + [t.serialize() for t in self.txs])

    def serialize(self, witness: bool = True) -> bytes:
        if witness:
            return self._raw
        return b"".join([self.header.serialize(), ser_compact_size(len(self.txs))] + [t.serialize(False) for t in self.txs])

    def hex(self) -> str:
        return self._raw.hex()

    @property
    def hash_bytes(self) -> bytes:
        return self.header.hash_bytes

    @cached_property
    def hash(self) -> str:
        return self.header.hash

    @property
    def size(self) -> int:
        return len(self._raw)

    @cached_property
    def strippedsize(self) -> int:
        return 80 + len(ser_compact_size(len(self.txs))) + sum(t.stripped_size for t in self.txs)

    @property
    def weight(self) -> int:
        return self.strippedsize * (WITNESS_SCALE_FACTOR - 1) + self.size

    def compute_merkle_root(self) -> bytes:
        return merkle_root([t.txid_bytes for t in self.txs])

    def __repr__(self) -> str:
        return f"Block(hash={self.hash}, txs={len(self.txs)})"


# --- merkle trees and the witness commitment --------------------------------


def merkle_root(hashes: Sequence[bytes]) -> bytes:
    """Bitcoin's merkle root over internal-order hashes (odd levels duplicate their last entry).

    Like Core, an empty list gives 32 zero bytes."""
    if not hashes:
        return NULL_HASH
    level = list(hashes)
    while len(level) > 1:
        if len(level) & 1:
            level.append(level[-1])
        level = [hash256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def witness_merkle_root(tx_wtxids: Sequence[bytes]) -> bytes:
    """BIP141 witness root.  ``tx_wtxids`` are the wtxids (internal order) of the block's
    NON-coinbase transactions in block order; the coinbase's leaf is zero by definition."""
    return merkle_root([NULL_HASH, *tx_wtxids])


def witness_commitment_script(tx_wtxids: Sequence[bytes], reserved: bytes = NULL_HASH) -> bytes:
    """The coinbase output script committing to the witnesses of the non-coinbase transactions."""
    commitment = hash256(witness_merkle_root(tx_wtxids) + reserved)
    return b"\x6a\x24" + WITNESS_COMMITMENT_HEADER + commitment


# --- proof of work ----------------------------------------------------------


def bits_to_target(bits: int) -> int:
    """Expand the compact ``nBits`` form (negative or overflowing encodings give 0, never a valid target)."""
    exponent = bits >> 24
    mantissa = bits & 0x007FFFFF
    if bits & 0x00800000:
        return 0
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    target = mantissa << (8 * (exponent - 3))
    return target if target.bit_length() <= 256 else 0


def target_to_difficulty(bits: int) -> float:
    """bitcoind's ``difficulty`` for a block with these ``nBits`` (Core's GetDifficulty arithmetic)."""
    shift = (bits >> 24) & 0xFF
    diff = 0xFFFF / (bits & 0x00FFFFFF)
    while shift < 29:
        diff *= 256.0
        shift += 1
    while shift > 29:
        diff /= 256.0
        shift -= 1
    return diff


def solve_regtest(header: BlockHeader) -> BlockHeader:
    """Return ``header`` with the first nonce (counting up from its own) meeting its target."""
    target = bits_to_target(header.bits)
    if target == 0:
        raise InputError("nBits encodes no valid target", bits=header.bits)
    prefix = header.serialize()[:76]
    nonce = header.nonce
    pack = _U32.pack
    while True:
        h = hash256(prefix + pack(nonce))
        if int.from_bytes(h, "little") <= target:
            return header._replace(nonce=nonce)
        nonce = (nonce + 1) & 0xFFFFFFFF
        if nonce == header.nonce:
            raise InputError("no nonce satisfies the target; change the time or the coinbase")


# --- coinbase and subsidy ---------------------------------------------------


def block_subsidy(height: int) -> int:
    halvings = height // REGTEST_HALVING_INTERVAL
    if halvings >= 64:
        return 0
    return INITIAL_SUBSIDY >> halvings


def script_num_encode(n: int) -> bytes:
    """Minimal CScriptNum little-endian sign-magnitude encoding (0 is empty)."""
    if n == 0:
        return b""
    neg = n < 0
    absval = -n if neg else n
    out = bytearray(absval.to_bytes((absval.bit_length() + 7) // 8, "little"))
    if out[-1] & 0x80:
        out.append(0x80 if neg else 0x00)
    elif neg:
        out[-1] |= 0x80
    return bytes(out)


def push_int(n: int) -> bytes:
    """Core's ``CScript() << n``: OP_0, OP_1NEGATE, OP_1..OP_16, else a minimal CScriptNum push."""
    if n == 0:
        return b"\x00"
    if n == -1 or 1 <= n <= 16:
        return bytes((0x50 + n,))
    data = script_num_encode(n)
    return bytes((len(data),)) + data


def push_data(data: bytes) -> bytes:
    """Core's ``CScript() << data``: the shortest push opcode for the length (no OP_N substitution)."""
    n = len(data)
    if n < 0x4C:
        return bytes((n,)) + data
    if n <= 0xFF:
        return b"\x4c" + bytes((n,)) + data
    if n <= 0xFFFF:
        return b"\x4d" + _U16.pack(n) + data
    return b"\x4e" + _U32.pack(n) + data


def coinbase_tx(
    height: int,
    script_pubkey: bytes,
    value: int,
    extra_nonce: bytes = b"",
    witness_commitment: bytes | None = None,
) -> Tx:
    """A coinbase like Core's miner builds: scriptSig ``<height> OP_0 [extra_nonce]`` (BIP34),
    one payout, and with ``witness_commitment`` (the script from ``witness_commitment_script``)
    a zero-value commitment output plus the 32-byte reserved value as the input's witness."""
    if height < 0:
        raise InputError("coinbase height must not be negative", height=height)
    if not 0 <= value <= MAX_MONEY:
        raise InputError("coinbase value out of range", value=value)
    script_sig = push_int(height) + b"\x00"
    if extra_nonce:
        script_sig += push_data(extra_nonce)
    if not 2 <= len(script_sig) <= 100:
        raise InputError("coinbase scriptSig must be 2 to 100 bytes", size=len(script_sig))
    vout = [TxOut(value, script_pubkey)]
    witness: tuple[bytes, ...] = ()
    if witness_commitment is not None:
        if not (len(witness_commitment) >= 38 and witness_commitment[:6] == b"\x6a\x24" + WITNESS_COMMITMENT_HEADER):
            raise InputError("witness_commitment must be a BIP141 commitment script")
        vout.append(TxOut(0, witness_commitment))
        witness = (NULL_HASH,)
    return Tx(2, [TxIn(NULL_OUTPOINT, script_sig, SEQUENCE_FINAL, witness)], vout, 0)


def _genesis() -> Block:
    script_sig = bytes.fromhex(
        "04ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e20"
        "6272696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73"
    )
    spk = bytes.fromhex(
        "4104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac"
    )
    coinbase = Tx(1, [TxIn(NULL_OUTPOINT, script_sig, SEQUENCE_FINAL)], [TxOut(INITIAL_SUBSIDY, spk)], 0)
    header = BlockHeader(1, NULL_HASH, merkle_root([coinbase.txid_bytes]), 1296688602, REGTEST_BITS, 2)
    return Block(header, [coinbase])


REGTEST_GENESIS_BLOCK = _genesis()
REGTEST_GENESIS_HASH = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
