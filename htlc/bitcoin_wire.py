"""A mutable transaction model (``inputs``/``outputs``, display-order txids) still read by
``bridge.swaps``.  Superseded by ``chains.btc.primitives.Tx`` (``vin``/``vout``) and
``chains.btc.sighash``, which every other caller uses: delete this module once ``bridge.swaps``
and its tests parse with ``chains.btc.primitives.Tx``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.errors import InputError
from chains.btc.primitives import hash256 as sha256d
from chains.btc.primitives import ser_compact_size as varint

SEQUENCE_FINAL = 0xFFFFFFFF


def _varbytes(data: bytes) -> bytes:
    return varint(len(data)) + data


# --- the transaction model ---------------------------------------------------------


@dataclass
class TxIn:
    txid: str  # display (big-endian) hex, as the node prints it
    vout: int
    script_sig: bytes = b""
    sequence: int = SEQUENCE_FINAL
    witness: list[bytes] = field(default_factory=list)

    def outpoint(self) -> bytes:
        return bytes.fromhex(self.txid)[::-1] + self.vout.to_bytes(4, "little")


@dataclass
class TxOut:
    value: int
    script_pubkey: bytes

    def serialize(self) -> bytes:
        return self.value.to_bytes(8, "little") + _varbytes(self.script_pubkey)


@dataclass
class Tx:
    inputs: list[TxIn]
    outputs: list[TxOut]
    locktime: int = 0
    version: int = 2

    def serialize(self, with_witness: bool = True) -> bytes:
        segwit = with_witness and any(i.witness for i in self.inputs)
        out = bytearray(self.version.to_bytes(4, "little"))
        if segwit:
            out += b"\x00\x01"
        out += varint(len(self.inputs))
        for i in self.inputs:
            out += i.outpoint() + _varbytes(i.script_sig) + i.sequence.to_bytes(4, "little")
        out += varint(len(self.outputs))
        for o in self.outputs:
            out += o.serialize()
        if segwit:
            for i in self.inputs:
                out += varint(len(i.witness)) + b"".join(_varbytes(item) for item in i.witness)
        out += self.locktime.to_bytes(4, "little")
        return bytes(out)

    @property
    def txid(self) -> str:
        return sha256d(self.serialize(with_witness=False))[::-1].hex()

    @property
    def weight(self) -> int:
        return 3 * len(self.serialize(with_witness=False)) + len(self.serialize())

    @property
    def vsize(self) -> int:
        return (self.weight + 3) // 4

    @classmethod
    def parse(cls, raw: bytes) -> Tx:
        """Decode a serialised transaction; ``InputError`` if it is malformed or has trailing bytes."""
        reader = _Reader(bytes(raw))
        version = reader.int(4)
        segwit = reader.peek(2) == b"\x00\x01"
        if segwit:
            reader.take(2)
        inputs = []
        for _ in range(reader.varint()):
            outpoint = reader.take(36)
            inputs.append(TxIn(
                txid=outpoint[:32][::-1].hex(), vout=int.from_bytes(outpoint[32:], "little"),
                script_sig=reader.take(reader.varint()), sequence=reader.int(4),
            ))
        outputs = [TxOut(reader.int(8), reader.take(reader.varint())) for _ in range(reader.varint())]
        if segwit:
            for txin in inputs:
                txin.witness = [reader.take(reader.varint()) for _ in range(reader.varint())]
        locktime = reader.int(4)
        if reader.remaining():
            raise InputError(f"transaction has {reader.remaining()} trailing bytes after its lock time")
        if not inputs:
            raise InputError("transaction has no inputs")
        return cls(inputs, outputs, locktime, version)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise InputError(f"transaction truncated: wanted {n} bytes at offset {self.pos}, have {len(self.data) - self.pos}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def peek(self, n: int) -> bytes:
        return self.data[self.pos:self.pos + n]

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def varint(self) -> int:
        first = self.int(1)
        return {0xFD: lambda: self.int(2), 0xFE: lambda: self.int(4), 0xFF: lambda: self.int(8)}.get(first, lambda: first)()

    def remaining(self) -> int:
        return len(self.data) - self.pos
