"""The two signature digests the bridge signs: BIP143 (segwit v0: P2WPKH, P2WSH) and the legacy
pre-segwit one (the P2SH HTLC template).  SIGHASH_ALL only: every input commits to all outputs."""

from __future__ import annotations

import struct

from chains.btc.primitives import Tx, TxIn, hash256, ser_compact_size

SIGHASH_ALL = 1

_U32 = struct.Struct("<I").pack
_I32 = struct.Struct("<i").pack
_I64 = struct.Struct("<q").pack


def segwit_v0_sighash(tx: Tx, index: int, script_code: bytes, amount: int) -> bytes:
    """BIP143 digest for input ``index`` spending ``amount`` sats under ``script_code``."""
    prevouts = hash256(b"".join(txin.prevout.serialize() for txin in tx.vin))
    sequences = hash256(b"".join(_U32(txin.sequence) for txin in tx.vin))
    outputs = hash256(b"".join(txout.serialize() for txout in tx.vout))
    txin = tx.vin[index]
    return hash256(
        b"".join(
            [
                _I32(tx.version),
                prevouts,
                sequences,
                txin.prevout.serialize(),
                ser_compact_size(len(script_code)),
                script_code,
                _I64(amount),
                _U32(txin.sequence),
                outputs,
                _U32(tx.locktime),
                _U32(SIGHASH_ALL),
            ]
        )
    )


def legacy_sighash(tx: Tx, index: int, script_code: bytes) -> bytes:
    """The pre-segwit digest: every scriptSig emptied but input ``index``'s, set to ``script_code``."""
    vin = [TxIn(txin.prevout, script_code if n == index else b"", txin.sequence) for n, txin in enumerate(tx.vin)]
    stripped = Tx(tx.version, vin, tx.vout, tx.locktime).serialize(witness=False)
    return hash256(stripped + _U32(SIGHASH_ALL))
