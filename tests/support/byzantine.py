"""A Byzantine attester: an attester's own code on a forged replica, plus lies.

    python tests/support/committee_proc.py byzantine --key KEYFILE --db URL \\
        --forge 0xACCOMPLICE:ETH:5000000000000000000 [--forge-request 0xACCOMPLICE:ETH:4000000000000000000] \\
        [--legit] [--no-equivocate] [--no-garbage]

It holds a real committee key (so its signatures are valid) and write access to the shared
attestation store (so it can write past ``put``).  After every step of its replica's fold it

* **forges a balance**: before its replica folds anything it credits each ``--forge`` account
  margin the chain never deposited;
* **forges requests**: the contract keeps the margin book too, so it refuses the accomplice's
  withdrawal request (``InsufficientMargin``: no event, nothing any replica could hold).  For each
  ``--forge-request`` its replica folds a ``WithdrawalRequested`` the chain never emitted, at a
  request nonce the chain never issued (``FORGED_NONCE`` + its position in the list); the forged
  balance covers it, so its replica holds it and fixes its RELEASE, which it signs through the
  store's ``put``: one valid signature, where a quorum needs M (and a quorum would not pay it: the
  contract has no such request);
* with ``--legit`` it also signs the RELEASE of every other request its replica holds, the same
  bytes the honest replicas sign (it lies only about the forged accounts); without it, it signs
  the forged accounts' requests only;
* **equivocates**: for every request it signed, two more RELEASE messages for the same slot (the
  amount plus one, the expiry ten minutes later), through ``put``: the store must refuse both and
  record the evidence;
* **writes garbage** straight into ``committee_signature``, bypassing ``put``: for every forged
  request's message a row under each other member holding a signature that does not recover to
  that member (its own signature, or random bytes); rows for message ids that were never put, on
  random slots; rows for the other messages it signed under addresses outside the committee.

Every lie is done once per request (remembered in ``byzantine_done`` in its own database), so a
restarted Byzantine attester does not repeat itself.  Two more attacks, ``preempt_signature``
and ``garbage_message``, are kept out of the daemon: they show bugs of the store and the deliverer
(see ``tests/test_committee_byzantine.py``), and a daemon doing them would stop the honest path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Sequence

from sqlalchemy import text
from sqlalchemy.engine import Engine

from eth_utils import keccak, to_checksum_address

from bridge.committee.contract import BridgeEvent
from bridge.committee.crypto import sign
from bridge.committee.messages import Kind, Message, decode_message, digest
from bridge.committee.replica import CUSTODY_OWNER, Replica, owner_of
from bridge.committee.store import AttestationRefused
from bridge.ledger.core import Transfer
from chains.base import BlockRef
from htlc.evm import LogRef
from relayers.committee import AttesterDaemon

__all__ = [
    "FORGED_NONCE",
    "Behaviour",
    "ByzantineAttester",
    "Forgery",
    "garbage_message",
    "preempt_signature",
    "run_byzantine",
    "write_signature_row",
]

#: The request nonce of the first ``--forge-request`` (the next ones follow): far beyond any the chain issues.
FORGED_NONCE = 1 << 40

log = logging.getLogger("byzantine")

_DONE_TABLE = "CREATE TABLE IF NOT EXISTS byzantine_done (key VARCHAR(200) PRIMARY KEY, at FLOAT NOT NULL)"
_SIGNATURE_ROW = (
    "INSERT INTO committee_signature (message_id, signer, signature, kind, source_tx, source_index, nonce, stored_at) "
    "VALUES (:message_id, :signer, :signature, :kind, :source_tx, :source_index, :nonce, :stored_at) ON CONFLICT DO NOTHING"
)


@dataclass(frozen=True)
class Forgery:
    """Margin the Byzantine replica credits to ``account`` that the chain never deposited."""

    account: str  # 0x address
    symbol: str  # ETH, TUSD
    amount: int

    @classmethod
    def parse(cls, spec: str) -> "Forgery":
        account, symbol, amount = spec.split(":")
        return cls(account, symbol, int(amount))


@dataclass(frozen=True)
class Behaviour:
    forge: tuple[Forgery, ...] = ()
    #: Withdrawal requests its replica folds that the chain never took (account, symbol, amount).
    requests: tuple[Forgery, ...] = ()
    legit: bool = False
    equivocate: bool = True
    garbage: bool = True


# --- raw writes past ``put`` -------------------------------------------------------------------


def write_signature_row(engine: Engine, message_id: str, signer: str, signature: str, *, kind: int, source_tx: str, source_index: int, nonce: str) -> None:
    """One ``committee_signature`` row as given (hex strings), bypassing every check of ``put``."""
    with engine.begin() as conn:
        conn.execute(
            text(_SIGNATURE_ROW),
            {
                "message_id": message_id,
                "signer": signer,
                "signature": signature,
                "kind": kind,
                "source_tx": source_tx,
                "source_index": source_index,
                "nonce": nonce,
                "stored_at": time.time(),
            },
        )


def preempt_signature(engine: Engine, message: Message, message_id: bytes, signer: bytes, signature: bytes | None = None) -> None:
    """A row under an honest ``signer`` for ``message``'s slot, written before that signer signs it:
    ``message_id`` (the real one, or any other) and a signature that does not verify."""
    write_signature_row(
        engine,
        message_id.hex(),
        signer.hex(),
        (signature or bytes(65)).hex(),
        kind=int(message.kind),
        source_tx=message.source_tx.hex(),
        source_index=message.source_index,
        nonce=str(message.nonce),
    )


def garbage_message(engine: Engine, *, kind: int = int(Kind.RELEASE), body: str = "beef", chain_id: int = 31337, contract: str = "11" * 20) -> str:
    """A ``committee_message`` row whose body is no message; returns its id."""
    mid = os.urandom(32).hex()
    row = {"id": mid, "body": body, "kind": kind, "tx": os.urandom(32).hex(), "exp": 2**62, "chain": str(chain_id), "contract": contract, "seen": time.time()}
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO committee_message (id, body, kind, source_tx, source_index, nonce, expires_at, domain_chain_id, verifying_contract, first_seen) "
                "VALUES (:id, :body, :kind, :tx, 0, '0', :exp, :chain, :contract, :seen)"
            ),
            row,
        )
    return mid


# --- the daemon ---------------------------------------------------------------------------------


class ByzantineAttester(AttesterDaemon):
    """``AttesterDaemon`` whose step after each fold lies as ``behaviour`` says."""

    name = "byzantine-attester"
    behaviour: Behaviour = Behaviour()

    @classmethod
    async def create(cls, settings, key: bytes, db_url: str, behaviour: Behaviour) -> "ByzantineAttester":
        daemon = await cls.from_settings(settings, key, db_url)
        daemon.behaviour = behaviour
        daemon._setup(await daemon.evm.head())
        return daemon

    @property
    def replica(self) -> Replica:
        return self.attester.replica

    def _setup(self, head: BlockRef) -> None:
        replica = self.replica
        with replica.engine.begin() as conn:
            conn.execute(text(_DONE_TABLE))
            for forgery in self.behaviour.forge:
                code = self._code(forgery.symbol)
                owner = owner_of(forgery.account)
                user = replica.ledger.open_account_in(conn, owner, "user", code)
                custody = replica.ledger.open_account_in(conn, CUSTODY_OWNER, "custody", code)
                forged = Transfer(f"forged:{owner}:{code}", custody.id, user.id, forgery.amount, cause="forged: the chain never deposited it")
                replica.ledger.apply_in(conn, [forged], int(time.time()))
        # The requests the chain refused, folded as if it had taken them (at the head's time, so the
        # RELEASE expiry looks like any other); a restart folds the same events again: no-ops.
        forged_requests = [self._forged_request(n, r) for n, r in enumerate(self.behaviour.requests)]
        if forged_requests:
            with replica.engine.begin() as conn:
                replica.fold(conn, forged_requests, head)
        log.warning(
            "byzantine 0x%s: forged %s, requests %s; legit=%s", self.attester.address.hex(), self.behaviour.forge, self.behaviour.requests, self.behaviour.legit
        )

    def _forged_request(self, index: int, request: Forgery) -> BridgeEvent:
        nonce = FORGED_NONCE + index
        (asset,) = [a for a, spec in self.replica.config.assets.items() if spec.symbol.lower() == request.symbol.lower()]
        fields = {"account": to_checksum_address(request.account), "asset": to_checksum_address(asset), "amount": request.amount, "requestNonce": nonce}
        return BridgeEvent("WithdrawalRequested", fields, LogRef(0, "0x" + keccak(b"forged request %d" % nonce).hex(), 0))

    def _code(self, symbol: str) -> str:
        for asset in self.replica.config.assets.values():
            if asset.symbol.lower() == symbol.lower():
                return asset.code
        raise ValueError(f"no asset {symbol}")

    @property
    def _forged_owners(self) -> set[str]:
        return {owner_of(f.account) for f in self.behaviour.forge}

    async def _sign(self) -> None:
        if self.behaviour.legit:
            await super()._sign()  # all its replica holds: the legit requests and the forged ones
        else:
            await self.clock.refresh()
            signed = await asyncio.to_thread(self._sign_forged)
            if signed:
                self.metrics.inc("signed", len(signed))
        await asyncio.to_thread(self._misbehave)

    def _sign_forged(self) -> list[bytes]:
        """The RELEASE of the forged accounts' held requests only (the honest ones refused them)."""
        now = int(self.clock())
        committee = self.attester.signing_committee(now)
        if committee is None:
            return []
        out = []
        for request in self.replica.requests(state="held", limit=100_000):
            if request.account not in self._forged_owners or request.message is None or self._signed(request.message_id):
                continue
            self.attester._put(request.message, request.message_id, committee, now)
            out.append(request.message_id)
        return out

    def _signed(self, mid: bytes) -> bool:
        with self.replica.engine.connect() as conn:
            return conn.execute(text("SELECT 1 FROM attester_signed WHERE message_id = :m"), {"m": mid.hex()}).first() is not None

    def _done(self, key: str) -> bool:
        with self.replica.engine.connect() as conn:
            return conn.execute(text("SELECT 1 FROM byzantine_done WHERE key = :k"), {"k": key}).first() is not None

    def _mark(self, key: str) -> None:
        with self.replica.engine.begin() as conn:
            conn.execute(text("INSERT INTO byzantine_done (key, at) VALUES (:k, :t) ON CONFLICT DO NOTHING"), {"k": key, "t": time.time()})

    def _misbehave(self) -> None:
        now = int(self.clock())
        committee = self.attester.signing_committee(now)
        if committee is None:
            return
        with self.replica.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT r.nonce, r.account, r.message FROM replica_request r "
                    "JOIN attester_signed s ON s.message_id = r.message_id WHERE r.message != '' ORDER BY r.nonce"
                )
            ).all()
        for nonce, account, body in rows:
            key = f"request:{nonce}"
            if self._done(key):
                continue
            message = decode_message(bytes.fromhex(body))
            if self.behaviour.equivocate:
                self._equivocate(message, committee, now)
            if self.behaviour.garbage:
                self._garbage(message, committee, forged=account in self._forged_owners)
            self._mark(key)

    def _equivocate(self, message: Message, committee, now: int) -> None:
        store, domain, key = self.attester.store, self.attester.domain, self.attester.key
        for variant in (replace(message, amount=message.amount + 1), replace(message, expiry=message.expiry + 600)):
            mid = digest(domain, variant)
            try:
                store.put(domain, variant, self.attester.address, sign(mid, key), committee, now)
                log.warning("byzantine: second message %s for nonce %d accepted", mid.hex()[:16], message.nonce)
            except AttestationRefused as exc:
                log.info("byzantine: equivocation on nonce %d refused: %s", message.nonce, exc.reason)

    def _garbage(self, message: Message, committee, *, forged: bool) -> None:
        engine, domain, me = self.attester.store.engine, self.attester.domain, self.attester.address
        mid = digest(domain, message)
        slot = {"kind": int(message.kind), "source_tx": message.source_tx.hex(), "source_index": message.source_index, "nonce": str(message.nonce)}
        if forged:
            # Signatures "of" the honest members on a message they refused: its own, or random bytes.
            for n, member in enumerate(m for m in committee.signers if m != me):
                fake = sign(mid, self.attester.key) if n % 2 == 0 else os.urandom(64) + bytes([27 + n % 2])
                write_signature_row(engine, mid.hex(), member.hex(), fake.hex(), **slot)
        # Rows of messages nobody put, on random slots, under every member.
        for member in committee.signers:
            nowhere = {"kind": int(Kind.RELEASE), "source_tx": os.urandom(32).hex(), "source_index": 0, "nonce": "1"}
            write_signature_row(engine, os.urandom(32).hex(), member.hex(), os.urandom(65).hex(), **nowhere)
        # Its own signature of this message under an address outside the committee.
        outsider = os.urandom(20)
        write_signature_row(engine, mid.hex(), outsider.hex(), sign(mid, self.attester.key).hex(), **slot)


async def run_byzantine(settings, key_file: str, db_url: str, behaviour: Behaviour, port: int | None = None) -> int:
    from relayers.committee import read_key
    from relayers.runner import Runner

    daemon = await ByzantineAttester.create(settings, read_key(key_file), db_url, behaviour)
    return await Runner(daemon, settings, http_port=port).run()


def parse_forgeries(specs: Sequence[str]) -> tuple[Forgery, ...]:
    return tuple(Forgery.parse(s) for s in specs)
