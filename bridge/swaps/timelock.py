"""Timelock rules of DESIGN.md, in seconds, with Bitcoin heights converted explicitly.

Assumption, stated once: a Bitcoin block is taken to last ``btc_seconds_per_block``
seconds (600 on mainnet; devnets configure what suits them).  A Bitcoin expiry is a
CLTV block height, so "seconds left" there is ``(expiry - tip) * btc_seconds_per_block``
and can only be an estimate; heights are rounded so the estimate errs on the safe side
(the participant's height is rounded down, its time left is never rounded up).
EVM expiries are timestamps compared with the head block's timestamp (chain time, not
the local clock, since that is what the contract checks).
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.core.errors import InputError
from chains.base import BITCOIN


class TimelockRefused(InputError):
    """A lock's expiry does not leave the time the policy requires; ``reason`` says which rule."""

    def __init__(self, reason: str, **details: object) -> None:
        super().__init__(reason, reason=reason, **details)
        self.reason = reason


@dataclass(frozen=True)
class ChainTime:
    """Where a chain is now: its tip height and the tip's timestamp."""

    height: int
    timestamp: int


@dataclass(frozen=True)
class TimelockPolicy:
    #: Participant's expiry must fall at least this long before the initiator's: time for the
    #: participant's relayer to see the secret, claim and confirm, with room for a missed poll.
    safety_gap: int = 3600
    #: How long the initiator locks for.
    initiator_lock: int = 4 * 3600
    #: The longest the participant locks for (less when the initiator's lock leaves less).
    participant_lock: int = 2 * 3600
    #: The participant refuses to lock for less than this.
    min_participant_lock: int = 1800
    #: The initiator refuses to claim with less than this left on the participant's lock.
    claim_margin: int = 900
    btc_seconds_per_block: int = 600

    def __post_init__(self) -> None:
        for name in ("safety_gap", "initiator_lock", "participant_lock", "min_participant_lock", "claim_margin", "btc_seconds_per_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InputError(f"timelock {name} must be a positive number of seconds, got {value!r}", field=name)
        if self.min_participant_lock > self.participant_lock:
            raise InputError("min_participant_lock exceeds participant_lock", field="min_participant_lock")
        if self.initiator_lock < self.safety_gap + self.min_participant_lock:
            raise InputError(
                f"initiator_lock {self.initiator_lock}s leaves no room for the safety gap "
                f"{self.safety_gap}s plus the minimum participant lock {self.min_participant_lock}s",
                field="initiator_lock",
            )

    # --- conversions ----------------------------------------------------------

    def seconds_left(self, chain: str, expiry: int, now: ChainTime) -> int:
        if chain == BITCOIN:
            return (expiry - now.height) * self.btc_seconds_per_block
        return expiry - now.timestamp

    def expiry_after(self, chain: str, seconds: int, now: ChainTime) -> int:
        """The expiry ``seconds`` from now, rounded down to whole blocks on Bitcoin."""
        if chain == BITCOIN:
            return now.height + seconds // self.btc_seconds_per_block
        return now.timestamp + seconds

    def expired(self, chain: str, expiry: int, now: ChainTime) -> bool:
        """Can the sender refund now?  CLTV: the next block's height must exceed the
        lock, i.e. tip >= expiry; the EVM contract: chain time >= expiry."""
        return expiry <= self.expired_through(chain, now)

    def expired_through(self, chain: str, now: ChainTime) -> int:
        """The latest expiry that has passed: a lock expiring at or before it can be refunded now."""
        return now.height if chain == BITCOIN else now.timestamp

    def too_late_to_lock_through(self, chain: str, now: ChainTime) -> int:
        """A bound on the initiator expiries the participant now refuses to lock against (less than
        the safety gap plus the minimum participant lock left: ``check_initiator_lock``): every
        such expiry is at or before it.  On Bitcoin one block past the rounded-down height."""
        reach = self.expiry_after(chain, self.safety_gap + self.min_participant_lock, now)
        return reach + 1 if chain == BITCOIN else reach

    # --- rules -----------------------------------------------------------------

    def initiator_expiry(self, chain: str, now: ChainTime) -> int:
        blocks_up = -(-self.initiator_lock // self.btc_seconds_per_block)  # ceil: the initiator's lock is the long one
        return now.height + blocks_up if chain == BITCOIN else now.timestamp + self.initiator_lock

    def check_initiator_lock(self, chain: str, expiry: int, now: ChainTime) -> int:
        """The participant's check before locking; returns the seconds it may lock for."""
        left = self.seconds_left(chain, expiry, now)
        budget = left - self.safety_gap
        if budget < self.min_participant_lock:
            raise TimelockRefused(
                f"initiator's lock expires in ~{max(left, 0)}s: less than the safety gap {self.safety_gap}s "
                f"plus the minimum participant lock {self.min_participant_lock}s",
                seconds_left=left,
            )
        return min(budget, self.participant_lock)

    def participant_expiry(self, chain: str, initiator_chain: str, initiator_expiry: int, now: ChainTime, initiator_now: ChainTime) -> int:
        """The participant's expiry: as long as allowed, at least the gap before the initiator's."""
        seconds = self.check_initiator_lock(initiator_chain, initiator_expiry, initiator_now)
        expiry = self.expiry_after(chain, seconds, now)
        if self.seconds_left(chain, expiry, now) < self.min_participant_lock:
            raise TimelockRefused(f"participant lock would last under {self.min_participant_lock}s once rounded to blocks")
        return expiry

    def check_claim(self, chain: str, participant_expiry: int, now: ChainTime) -> None:
        """The initiator's check before revealing the secret."""
        left = self.seconds_left(chain, participant_expiry, now)
        if left < self.claim_margin:
            raise TimelockRefused(
                f"participant's lock expires in ~{max(left, 0)}s, under the claim margin {self.claim_margin}s: "
                "claiming now could reveal the secret too late; refunding after expiry instead",
                seconds_left=left,
            )
