"""Pull the swap secret out of a transaction that claimed an HTLC.

The claimer must reveal the preimage on chain to spend: in the witness (P2WSH)
or the scriptSig (P2SH template).  We look for it by what it is, a 32-byte
item hashing to the hashlock, not by its position, so any spending layout works.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from bridge.core.errors import InputError, NotFound
from chains.btc.primitives import DecodeError, Tx, sha256
from htlc.bitcoin_script import SECRET_SIZE, iter_pushes


class SecretNotFound(NotFound):
    """The transaction reveals no preimage of the given hash."""


def extract_secret(tx: bytes, hashlock: bytes) -> bytes:
    """The 32-byte secret ``s`` with ``sha256(s) == hashlock`` revealed by ``tx``, else ``SecretNotFound``."""
    if len(hashlock) != 32:
        raise InputError(f"hashlock must be 32 bytes, got {len(hashlock)}", field="hashlock")
    try:
        parsed = Tx.parse(tx)
    except DecodeError as exc:
        raise InputError(f"claiming transaction: {exc.message}: {exc.reason}") from None
    for txin in parsed.vin:
        items = list(txin.witness)
        try:
            items += [data for _, _, data in iter_pushes(txin.script_sig) if data is not None]
        except InputError:
            # A scriptSig that does not parse as pushes cannot have revealed anything usable.
            pass
        for item in items:
            if len(item) == SECRET_SIZE and sha256(item) == hashlock:
                return item
    raise SecretNotFound(
        f"transaction {parsed.txid} reveals no 32-byte preimage of {hashlock.hex()} (checked the witness and scriptSig of its {len(parsed.vin)} inputs)",
        txid=parsed.txid,
        hashlock=hashlock.hex(),
    )


def secret_in_spends(txs: Iterable[Mapping[str, Any]], outpoint: tuple[str, int], hashlock: bytes) -> bytes | None:
    """The secret revealed by whichever of ``txs`` (bitcoind's verbose JSON) spends ``outpoint``, if any.

    Relayers see spends as the node shows them (mempool and block scans), so this reads the
    witness items of the input that spends the HTLC output rather than re-parsing raw bytes.
    """
    txid, vout = outpoint
    for tx in txs:
        for vin in tx.get("vin", []):
            if (vin.get("txid"), vin.get("vout")) != (txid, vout):
                continue
            for item in vin.get("txinwitness", []):
                raw = bytes.fromhex(item)
                if len(raw) == SECRET_SIZE and sha256(raw) == hashlock:
                    return raw
    return None
