"""Swap legs in the unified ledger: escrow while locked, posted on claim, reversed on refund.

Per leg (ids ``swap:<id>:<leg>:<step>``, so recording the same fact twice, by one
party after a restart or by both parties into one shared ledger, changes nothing):

* locked:   ``<sender>/external/ASSET -> swap-<id>-<leg>/escrow/ASSET`` (the coins enter
            the books as the chain holds them), then a hold ``escrow -> <recipient>/user/ASSET``;
* claimed:  the hold is posted (the recipient has the coins);
* refunded: the hold is voided and the escrow goes back out to ``<sender>/external``.

Owners are the parties' chain identities (Bitcoin pubkey, EVM address).  A party
records what it has itself seen confirmed on chain, leg by leg (``SwapLeg.outcome``), so
recording a swap again from scratch gives the same books: the trader posts its own lock
once it has seen the LP claim it, or reverses it once its own refund confirmed (also
after its claim of the LP's lock: the swap then ends claimed with both legs settled), and
an LP whose claim was lost (``claim_lost``: the trader refunded first) reverses the
trader's leg while its own stays posted, so its books show the loss.  Rows written
before the outcome column are judged from the swap's state (``leg_outcome``).
"""

from __future__ import annotations

from bridge.ledger import Ledger, Transfer
from bridge.ledger.assets import btc, erc20, eth
from bridge.swaps import models as m
from bridge.swaps.models import INITIATOR, PARTICIPANT, SwapLeg
from bridge.swaps.store import SwapView


class SwapBooks:
    def __init__(self, ledger: Ledger, evm_chain_id: int) -> None:
        self.ledger = ledger
        self.evm_chain_id = evm_chain_id
        ledger.register_asset(btc())
        ledger.register_asset(eth(evm_chain_id))
        # Every transition re-records all of a swap's facts; what this process already committed
        # (transfer ids, account ids: neither ever changes once written) is not written again.
        self._committed: set[str] = set()
        self._accounts: dict[tuple[str, str, str], int] = {}

    def asset_code(self, leg: SwapLeg) -> str:
        if leg.chain == "bitcoin":
            return btc().code
        if leg.token is None:
            return eth(self.evm_chain_id).code
        # The registry keys a token by chain and address; decimals and symbol do not enter the code.
        return erc20(self.evm_chain_id, leg.token, 0, leg.asset).code

    def register_token(self, address: str, decimals: int, symbol: str) -> None:
        self.ledger.register_asset(erc20(self.evm_chain_id, address, decimals, symbol.upper()))

    def record(self, view: SwapView) -> None:
        """Write every fact the swap's legs establish (idempotent)."""
        for leg in view.legs.values():
            if self._locked(view, leg):
                self._lock(view, leg)
        outcomes = {name: leg_outcome(view, leg) for name, leg in view.legs.items()}
        for leg in (l for l in view.legs.values() if outcomes[l.leg] == "claimed"):
            self._commit([Transfer.post(self._id(view, leg, "claim"), self._id(view, leg, "hold"))])
        for leg in (l for l in view.legs.values() if outcomes[l.leg] == "refunded"):
            code = self.asset_code(leg)
            self._commit(
                [
                    Transfer.void(self._id(view, leg, "void"), self._id(view, leg, "hold")),
                    Transfer(
                        self._id(view, leg, "refund"),
                        self._account(f"swap-{view.swap.id}-{leg.leg}", "escrow", code),
                        self._account(leg.sender, "external", code),
                        leg.value,
                    ),
                ]
            )

    @staticmethod
    def _locked(view: SwapView, leg: SwapLeg) -> bool:
        """Has this party seen ``leg``'s lock confirmed (and, if it is the other's, audited)?"""
        state, role = view.swap.state, view.swap.role
        if not leg.lock_ref:
            return False
        if role == INITIATOR:
            if leg.leg == INITIATOR:
                return state not in (m.CREATED, m.INITIATOR_LOCK_INTENDED, m.FAILED)
            return leg.expiry is not None  # recorded only when the LP's lock passed audit
        if leg.leg == INITIATOR:
            return state not in (m.CREATED, m.FAILED)
        return state not in (m.CREATED, m.PARTICIPANT_LOCK_INTENDED, m.FAILED)

    def _lock(self, view: SwapView, leg: SwapLeg) -> None:
        code = self.asset_code(leg)
        escrow = self._account(f"swap-{view.swap.id}-{leg.leg}", "escrow", code)
        self._commit(
            [
                Transfer(self._id(view, leg, "lock"), self._account(leg.sender, "external", code), escrow, leg.value, cause=f"{leg.chain}:{leg.lock_ref}"),
                Transfer.hold(self._id(view, leg, "hold"), escrow, self._account(leg.recipient, "user", code), leg.value),
            ]
        )

    def _account(self, owner: str, kind: str, code: str) -> int:
        key = (owner, kind, code)
        if key not in self._accounts:
            self._accounts[key] = self.ledger.open_account(owner, kind, code).id
        return self._accounts[key]

    def _commit(self, transfers: list[Transfer]) -> None:
        """One linked batch, idempotent in the ledger by its ids; skipped once committed here."""
        key = transfers[0].id
        if key in self._committed:
            return
        self.ledger.commit(transfers)
        self._committed.add(key)

    @staticmethod
    def _id(view: SwapView, leg: SwapLeg, step: str) -> str:
        return f"swap:{view.swap.id}:{leg.leg}:{step}"


def leg_outcome(view: SwapView, leg: SwapLeg) -> str | None:
    """How ``leg`` ended as this party knows it: "claimed", "refunded" or None (not settled, or not
    known to this party).  The leg's recorded ``outcome`` first; rows written before that column
    existed are judged from the swap's state as those versions did."""
    if leg.outcome is not None:
        return leg.outcome
    state, role = view.swap.state, view.swap.role
    if role == PARTICIPANT and leg.leg == PARTICIPANT and state in (m.CLAIM_INTENDED, m.CLAIMED, m.CLAIM_LOST):
        return "claimed"  # the LP learnt the secret from the trader's claim of it
    if state == m.CLAIMED and leg.spend_kind == "claim":
        return "claimed"
    if state == m.REFUNDED and leg.spend_kind == "refund":
        return "refunded"
    if state == m.CLAIM_LOST and leg.leg == INITIATOR:
        return "refunded"  # the trader took its lock back before the LP's claim
    return None
