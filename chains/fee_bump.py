"""Fee bumps for spends that sit in the mempool: when, and to what.

A spend is *stuck* when it is still unconfirmed ``stuck_blocks`` blocks after it was
sent.  Then:

* Bitcoin (BIP125 replacement): the next rung of a pre-signed feerate ladder, which
  spends the same outpoint with a higher fee.  Whoever broadcasts does not hold the
  key (a watcher), so only the rungs the key holder signed in advance exist; at the
  top of the ladder the spend waits.
* EVM: the same transaction (same nonce, to, data, gas) re-signed by its sender with
  both EIP-1559 fees raised by the multiplier (at least +10%, as nodes demand) and at
  least to the node's current suggestion (``evm_bump``, the one EVM fee bump:
  ``EvmAdapter.replace`` uses it too).  The caller signs the result, so it can record the
  replacement before it is sent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bridge.core.errors import InputError
from chains.evm_fees import Fees, bumped

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from chains.evm import EvmAdapter


def is_stuck(sent_height: int | None, tip: int, stuck_blocks: int) -> bool:
    """True once ``stuck_blocks`` blocks were mined since the spend went out, without it."""
    if stuck_blocks < 1:
        raise InputError(f"stuck_blocks must be >= 1, got {stuck_blocks}", field="stuck_blocks")
    return sent_height is not None and tip - sent_height >= stuck_blocks


def next_rung(ladder_size: int, level: int) -> int | None:
    """The ladder index above ``level``, or None at the top (nothing higher was signed)."""
    return level + 1 if level + 1 < ladder_size else None


@dataclass(frozen=True)
class EvmTxFields:
    """An EIP-1559 transaction before signing: what a bump keeps, plus the two fees it raises."""

    chain_id: int
    nonce: int
    to: str | None  # None: a contract creation
    data: str  # 0x hex
    gas: int
    max_fee: int
    priority_fee: int
    value: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvmTxFields":
        return cls(**data)

    def sign(self, adapter: "EvmAdapter", key: "str | bytes | LocalAccount") -> tuple[str, str]:
        """``(raw hex, tx hash)`` signed by ``key``."""
        signed = adapter.account(key).sign_transaction(
            {
                "type": 2,
                "chainId": self.chain_id,
                "nonce": self.nonce,
                "to": self.to,
                "value": self.value,
                "data": self.data,
                "gas": self.gas,
                "maxFeePerGas": self.max_fee,
                "maxPriorityFeePerGas": self.priority_fee,
            }
        )
        return signed.raw_transaction.hex().removeprefix("0x"), signed.hash.to_0x_hex()


async def evm_bump(adapter: "EvmAdapter", fields: EvmTxFields, multiplier: str | int | float = "1.5") -> EvmTxFields:
    """The replacement of ``fields``: same nonce, fees raised (see the module docstring)."""
    new = bumped(Fees(fields.max_fee, fields.priority_fee), multiplier, floor=await adapter.suggest_fees())
    return EvmTxFields(fields.chain_id, fields.nonce, fields.to, fields.data, fields.gas, new.max_fee, new.priority_fee, fields.value)
