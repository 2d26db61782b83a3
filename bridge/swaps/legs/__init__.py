"""What one swap leg does on its chain: lock, audit the counterparty's lock, find the secret,
claim, refund.  ``base``: the ``Leg`` protocol the engine uses and its results; ``bitcoin`` and
``evm``: one class per chain family, same methods."""

from bridge.swaps.legs.base import Leg, LockRefused, LockSeen, NotYet
from bridge.swaps.legs.bitcoin import BitcoinLeg
from bridge.swaps.legs.evm import EVM_GAS, EvmLeg

__all__ = ["EVM_GAS", "BitcoinLeg", "EvmLeg", "Leg", "LockRefused", "LockSeen", "NotYet"]
