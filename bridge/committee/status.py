"""Read-side views of the committee: messages, withdrawal requests, deposit credits and margin
balances as one replica and the attestation store show them.

    status = CommitteeStatus.open(config, settings.db_url, settings.store_url)
    status.message("req:3")                  # or the message id, 0x optional
    status.messages(state="waiting_quorum")
    status.credit(tx_hash, log_index)        # a deposit's credit in this replica, or None
    status.deposit_credits(account)          # every deposit credited to an account
    status.balances()
    status.btc_deposit(txid, vout)           # a Bitcoin deposit as the replica's Bitcoin fold saw it
    status.btc_credit(txid, vout)            # its credit, and status.credit_message(txid, vout)
    status.withdrawal(nonce)                 # a request, its payout (BTC) and its message

Shared by the CLI (``bridgectl message``, ``deposit evm|btc``, ``withdraw evm|btc|status``), the demo and a
future HTTP API: every view is a plain dict, ready for JSON (addresses checksummed, hashes
``0x`` hex, amounts as decimal strings, in whole units with the asset's symbol and in base
units beside them).  Nothing here writes a row another process owns: tables a daemon has not
created yet read as "not started" (``replica`` None), and a SQLite file that does not exist is
not created.

The service's replica (the bridge database, which the deliverer keeps) is the one the CLI asks;
an attester's own replica database answers the same questions (``CommitteeStatus.open(config,
replica_url)``).  Signatures are tallied as a deliverer tallies them: ``AttestationStore.quorum``
against every committee the replica holds valid now.

A BTC withdrawal is paid on Bitcoin before any message exists: its view adds the payout (the
deliverer's ``payout:<nonce>`` operation, its history and each PSBT's attester signatures) and,
once the payout is at depth, the PAYOUT_DONE message that closes the request on the contract.

Longer than the house's ~400 lines on purpose: one message's view is gathered from up to five
sources (the replica, its Bitcoin fold, the store, the deliveries, the payouts) that must tell one
story, and the CLI and the HTTP API read it from this one place rather than each assembling its own.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable

from eth_utils import to_checksum_address
from sqlalchemy import inspect, make_url, text
from sqlalchemy.engine import Engine

from bridge.committee.config import BridgeConfig
from bridge.committee.delivery import DELIVERIES, STATES, TERMINAL
from bridge.committee.messages import BTC_ASSET, Committee, Kind, Message
from bridge.committee.payouts import PAYOUTS
from bridge.committee.replica import Replica, Request
from bridge.committee.store import AttestationRefused, AttestationStore, Stored
from bridge.core.db import make_engine
from bridge.core.dbapi import Db
from bridge.core.errors import InputError, NotFound
from bridge.ledger import ids
from bridge.runtime import OpStore
from bridge.swaps.assets import BTC, EVM, SwapAsset
from chains.btc.address import script_to_address
from chains.btc.primitives import Tx

__all__ = ["MESSAGE_STATES", "CommitteeStatus", "parse_message_ref"]

#: What ``messages(state=)`` filters on: a delivery's state, else ``signing`` (signatures in the
#: store, no delivery opened yet) or ``unsigned`` (the replica holds the request, nobody signed).
MESSAGE_STATES = (*STATES, "signing", "unsigned")

_REQUEST_REF = re.compile(r"req:([0-9]{1,20})")
_HEX_ID = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")
_MAX_NONCE = (1 << 64) - 1
_MARGIN_TOO_LOW = re.compile(r"margin too low: ([0-9]{1,80}) available, ([0-9]{1,80}) requested")


def parse_message_ref(ref: object) -> tuple[str, int | bytes]:
    """``"req:N"`` -> ``("request", N)``; a message id (64 hex digits, ``0x`` optional) ->
    ``("id", bytes)``; anything else is an ``InputError`` saying what is accepted."""
    text_ = ref.strip() if isinstance(ref, str) else ""
    if m := _REQUEST_REF.fullmatch(text_):
        nonce = int(m.group(1))
        if nonce <= _MAX_NONCE:
            return "request", nonce
    elif m := _HEX_ID.fullmatch(text_):
        return "id", bytes.fromhex(m.group(1))
    shown = repr(ref[:80] if isinstance(ref, str) else ref)  # repr escapes control characters
    raise InputError(f"message id must be 64 hex digits (0x optional) or req:N (a withdrawal request's nonce), got {shown}", field="id")


def _hex(raw: bytes | None) -> str | None:
    return None if raw is None else "0x" + raw.hex()


def _member(committee: Committee, address: bytes) -> dict[str, Any]:
    return {"index": committee.signers.index(address), "address": to_checksum_address(address)}


class CommitteeStatus:
    """Views over one replica's database (``service``) and the attestation store (``store``,
    optional: an attester's replica alone answers credits, requests and balances)."""

    def __init__(self, config: BridgeConfig, service: Engine | str | None, store: Engine | str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._sources: dict[str, Engine | str | None] = {"service": service, "store": store}
        self.clock = clock
        self._replica: Replica | None = None
        self._store: AttestationStore | None = None
        self._present: set[tuple[int, str]] = set()
        self._codes = {config.ledger_asset(symbol).code: symbol for symbol in config.assets}
        self.network = config.bitcoin.policy.network if config.bitcoin is not None else "regtest"

    @classmethod
    def open(cls, config: BridgeConfig, db_url: str, store_url: str | None = None, **kw: Any) -> "CommitteeStatus":
        """Views on the database at ``db_url`` (and the store at ``store_url``).  A SQLite file
        that does not exist is not created: every view says nothing is there until a daemon
        creates it (and from then on reads it)."""
        return cls(config, db_url, store_url, **kw)

    def close(self) -> None:
        for engine in {id(e): e for e in self._sources.values() if isinstance(e, Engine)}.values():
            engine.dispose()

    # --- sources, opened once their daemon created them ------------------------------------

    def _engine(self, which: str) -> Engine | None:
        source = self._sources[which]
        if isinstance(source, str):
            source = _engine(source)
            if source is not None:
                self._sources[which] = source
        return source if isinstance(source, Engine) else None

    @property
    def service(self) -> Engine | None:
        return self._engine("service")

    @property
    def store_engine(self) -> Engine | None:
        return self._engine("store")

    def _has(self, engine: Engine | None, *tables: str) -> bool:
        if engine is None:
            return False
        if all((id(engine), t) in self._present for t in tables):
            return True
        names = set(inspect(engine).get_table_names())
        self._present.update((id(engine), t) for t in names)
        return all(t in names for t in tables)

    @property
    def replica(self) -> Replica | None:
        """The replica in ``service``, once a daemon folded into it (else None)."""
        if self._replica is None and self._has(self.service, "replica_request", "ledger_transfers"):
            self._replica = Replica(self.service, self.config.replica_config())  # type: ignore[arg-type]
        return self._replica

    @property
    def store(self) -> AttestationStore | None:
        if self._store is None and self._has(self.store_engine, "committee_message", "committee_signature"):
            self._store = AttestationStore(self.store_engine)  # type: ignore[arg-type]
        return self._store

    def now(self) -> int:
        return int(self.clock())

    # --- amounts ----------------------------------------------------------------------------

    def amount(self, asset: bytes | str, base: int) -> dict[str, Any]:
        """``{"asset": symbol, "asset_address", "amount": whole units, "amount_base"}``."""
        symbol = self.config.symbol_of(asset)
        listed = self.config.assets.get(symbol)
        if symbol == "BTC" and listed is None:  # margin paid on Bitcoin: its asset id is BTC_ASSET, in sats
            return {"asset": "BTC", "asset_address": _hex(BTC_ASSET), "amount": BTC.to_whole(base), "amount_base": str(base)}
        address = listed[0] if listed else (to_checksum_address(asset) if isinstance(asset, bytes) else asset)
        whole = SwapAsset(symbol.lower(), EVM, listed[1]).to_whole(base) if listed else str(base)
        return {"asset": symbol, "asset_address": address, "amount": whole, "amount_base": str(base)}

    def _by_code(self, code: str, base: int) -> dict[str, Any]:
        if code == "BTC":
            return self.amount(BTC_ASSET, base)
        symbol = self._codes.get(code)
        if symbol is None:
            return {"asset": code, "amount": str(base), "amount_base": str(base)}
        return self.amount(self.config.assets[symbol][0], base)

    # --- the replica ------------------------------------------------------------------------

    def replica_height(self) -> int | None:
        """The last block the replica folded (None before its first step)."""
        return self._cursor(f"replica-{self.config.bridge.lower()}")

    def btc_height(self) -> int | None:
        """The last Bitcoin block the replica's Bitcoin fold read (None before its first step,
        or on a daemon that follows no Bitcoin)."""
        return self._cursor(f"btc-deposits-{self.config.bridge.lower()}")

    def _cursor(self, name: str) -> int | None:
        engine = self.service
        if not self._has(engine, "indexer_cursor"):
            return None
        with engine.connect() as conn:  # type: ignore[union-attr]
            return conn.execute(text("SELECT height FROM indexer_cursor WHERE name = :n ORDER BY height DESC LIMIT 1"), {"n": name}).scalar()

    def credit(self, tx_hash: str, log_index: int) -> dict[str, Any] | None:
        """The credit of the deposit logged at ``tx_hash:log_index`` in this replica, or None."""
        return self._credit(ids.evm_log(tx_hash, log_index))

    def btc_credit(self, txid: str, vout: int) -> dict[str, Any] | None:
        """The credit of the Bitcoin deposit output ``txid:vout`` in this replica, or None."""
        return self._credit(ids.btc_output(txid, vout))

    def _credit(self, transfer: str) -> dict[str, Any] | None:
        if self.replica is None:
            return None
        with self.service.connect() as conn:  # type: ignore[union-attr]
            row = (
                conn.execute(
                    text(
                        "SELECT t.height, t.amount, t.asset, a.owner, b.committed_at FROM ledger_transfers t "
                        "JOIN ledger_accounts a ON a.id = t.credit_account LEFT JOIN ledger_batches b ON b.height = t.height WHERE t.id = :id"
                    ),
                    {"id": transfer},
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        return {
            "transfer": transfer,
            "account": to_checksum_address(row["owner"]),
            **self._by_code(row["asset"], int(row["amount"])),
            "ledger_height": int(row["height"]),
            "block_time": None if row["committed_at"] is None else int(row["committed_at"]),
        }

    def deposit_credits(self, account: str) -> list[dict[str, Any]]:
        """Every deposit credited to ``account``'s margin in this replica (on the contract, or on
        Bitcoin by a DEPOSIT_CREDIT), oldest first."""
        if self.replica is None:
            return []
        with self.service.connect() as conn:  # type: ignore[union-attr]
            rows = conn.execute(
                text(
                    "SELECT t.id, t.height, t.amount, t.asset FROM ledger_transfers t JOIN ledger_accounts a ON a.id = t.credit_account "
                    "WHERE a.owner = :o AND a.kind = 'user' AND t.cause IN ('deposit', 'bitcoin deposit') ORDER BY t.height, t.idx"
                ),
                {"o": account.lower()},
            ).all()
        return [{"transfer": tid, "ledger_height": int(h), **self._by_code(code, int(amount))} for tid, h, amount, code in rows]

    def balances(self, account: str | None = None) -> list[dict[str, Any]]:
        """Every margin account's posted balance and held (pending) amount in this replica."""
        if self.replica is None:
            return []
        out = []
        for (owner, code), (balance, held) in self.replica.balances().items():
            if account is not None and owner != account.lower():
                continue
            entry = {"account": to_checksum_address(owner), **self._by_code(code, balance)}
            entry["held"] = self._by_code(code, held)["amount"]
            entry["held_base"] = str(held)
            out.append(entry)
        return out

    def positions(self, account: str | None = None) -> list[dict[str, Any]]:
        """Every margin account's signed position per asset (the contract's ``balanceOf``: what
        it can use, or minus what it owes), in whole units and base units."""
        if self.replica is None:
            return []
        out = []
        for (owner, asset), position in self.replica.positions(account).items():
            entry = {"account": to_checksum_address(owner), **self.amount(asset, abs(position))}
            if position < 0:
                entry["amount"], entry["amount_base"] = "-" + entry["amount"], str(position)
            out.append(entry)
        return out

    def request(self, nonce: int) -> dict[str, Any]:
        """Withdrawal request ``nonce`` as this replica judged it; ``NotFound`` before it folded it."""
        replica = self.replica
        if replica is None:
            raise NotFound(f"no withdrawal request {nonce}: the replica at {_where(self._sources['service'])} has folded nothing yet (is its daemon running?)")
        try:
            return self._request(replica.request(nonce=nonce))
        except NotFound:
            height = self.replica_height()
            raise NotFound(
                f"no withdrawal request {nonce} in the replica at {_where(self._sources['service'])} (folded up to block {height}); "
                "a request made since appears once the replica folds its block",
                nonce=nonce,
            ) from None

    def _request(self, r: Request) -> dict[str, Any]:
        reason = r.reason
        if m := _MARGIN_TOO_LOW.fullmatch(reason):  # the replica's amounts are base units: say them in whole units too
            have, want = (self.amount(r.asset, int(x)) for x in m.groups())
            reason += f" (= {have['amount']} {have['asset']} available, {want['amount']} {want['asset']} requested)"
        destination: dict[str, Any] = {}
        if r.asset == "0x" + BTC_ASSET.hex():  # paid on Bitcoin, to the output script the request named
            script = bytes.fromhex(r.destination) if r.destination else None
            destination = {"destination": r.destination or None, "destination_address": script_to_address(script, self.network) if script else None}
        return {
            "nonce": r.nonce,
            "state": r.state,
            "reason": reason,
            "account": to_checksum_address(r.account),
            **self.amount(r.asset, r.amount),
            "source": r.source,
            "block": r.block_height,
            "block_time": r.block_time,
            "expiry": r.expiry or None,
            "message_id": _hex(r.message_id),
            **destination,
        }

    # --- messages ---------------------------------------------------------------------------

    def message(self, ref: str) -> dict[str, Any]:
        """Everything known of one message (``parse_message_ref``): its fields, the request it
        releases, signatures per valid committee and who is missing, the delivery and its
        timeline, and why it waits.  ``NotFound`` when no source knows it."""
        kind, value = parse_message_ref(ref)
        if kind == "request":
            request = self.request(int(value))  # type: ignore[arg-type]
            if request["message_id"] is not None:
                return self._view(bytes.fromhex(request["message_id"][2:]))
            if request["asset"] == "BTC" and request["state"] == "held":  # paid on Bitcoin first, then PAYOUT_DONE
                found = self._slot_message(Kind.PAYOUT_DONE, nonce=request["nonce"])
                return self._view(found) if found is not None else self._paying(request)
            return self._refused(request)  # refused: there is no message to sign
        return self._view(value)  # type: ignore[arg-type]

    def withdrawal(self, nonce: int) -> dict[str, Any]:
        """Withdrawal request ``nonce``: the replica's judgement, its payout on Bitcoin (BTC; None
        otherwise), the message that closes it (RELEASE, or PAYOUT_DONE once the payout is at depth)
        with its signatures and delivery, one timeline, and why it waits or how it ended."""
        view = self.message(f"req:{nonce}")
        view.setdefault("payout", None)
        return view

    def messages(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` messages (of ``state``, see ``MESSAGE_STATES``), oldest first."""
        if state is not None and state not in MESSAGE_STATES:
            raise InputError(f"state must be one of {', '.join(MESSAGE_STATES)}, got {state!r}", field="state")
        seen: dict[bytes, float] = {}
        if self.store is not None:
            with self.store.db.transaction() as tx:
                rows = tx.rows("SELECT id, first_seen FROM committee_message ORDER BY first_seen DESC, id LIMIT :n", {"n": 1000})
            seen.update((bytes.fromhex(r["id"]), float(r["first_seen"])) for r in rows)
        if self.replica is not None:
            for r in self.replica.requests():
                if r.message_id is not None and r.message_id not in seen:
                    seen[r.message_id] = float(r.block_time)
        views = [self._view(mid) for mid, _ in sorted(seen.items(), key=lambda item: (item[1], item[0]))]
        if state is not None:
            views = [v for v in views if v["state"] == state]
        return views[-limit:] if limit else views

    def _view(self, mid: bytes) -> dict[str, Any]:
        now = self.now()
        stored = self._stored(mid)
        delivery = self._delivery(mid)
        request: dict[str, Any] | None = None
        message: Message | None = stored.message if stored is not None else None
        replica = self.replica
        if replica is not None:
            try:
                found = replica.request(message_id=mid)
            except NotFound:
                found = None
                if message is not None and message.kind in (Kind.RELEASE, Kind.PAYOUT_DONE):
                    try:  # the request this message names, though it is not the one the replica fixed (or holds no id yet)
                        found = replica.request(nonce=message.nonce)
                    except NotFound:
                        pass
            if found is not None:
                request = self._request(found)
                message = message or found.message
        if message is None and delivery is None:
            raise NotFound(f"no message {_hex(mid)}: not in the attestation store, the replica or its deliveries", message_id=_hex(mid))
        view: dict[str, Any] = {"id": _hex(mid), "kind": Kind(delivery["kind"]).name if message is None else message.kind.name}
        view["message"] = None if message is None else self._fields(message)
        view["request"] = request
        if request is not None and request["message_id"] is not None and request["message_id"] != _hex(mid):
            view["request_note"] = f"the replica fixed another message for request {request['nonce']}: {request['message_id']}"
        if request is not None and request["asset"] == "BTC":
            view["payout"] = self.payout(request["nonce"])
        view["signatures"] = self._tallies(mid, stored, now)
        view["signed_by"] = self._signed_at(mid) if stored is not None else []
        view["first_seen"] = None if stored is None else stored.first_seen
        view["delivery"] = delivery
        view["timeline"] = self._timeline(view)
        view["state"] = delivery["state"] if delivery else ("signing" if stored is not None else "unsigned")
        view["waiting"], view["outcome"] = self._why(view, message, now)
        return view

    def _signed_at(self, mid: bytes) -> list[dict[str, Any]]:
        """Who signed, and when the store took each signature, oldest first."""
        with self.store.db.transaction() as tx:  # type: ignore[union-attr]
            rows = tx.rows("SELECT signer, stored_at FROM committee_signature WHERE message_id = :id ORDER BY stored_at, signer", {"id": mid.hex()})
        return [{"address": to_checksum_address(r["signer"]), "at": float(r["stored_at"])} for r in rows]

    def _timeline(self, view: dict[str, Any]) -> list[dict[str, Any]]:
        """Every dated step, oldest first: the request's block (chain time), each signature as the
        store took it (with the count towards the quorum), each delivery transition."""
        out: list[dict[str, Any]] = []
        request = view["request"]
        if request is not None:
            what = f"withdrawal request {request['nonce']} of {request['amount']} {request['asset']} mined in block {request['block']}"
            out.append({"at": float(request["block_time"]), "source": "chain", "event": what})
        tally = self._best(view["signatures"])
        members = {m["address"]: m["index"] for m in (tally["signed"] + tally["missing"])} if tally else {}
        count = 0
        for sig in view["signed_by"]:
            if sig["address"] in members:
                count += 1
                needed = tally["threshold"]  # type: ignore[index]
                of = f"{count} of the {needed} needed" if count <= needed else f"{count}, beyond the {needed} needed"
                what = f"signature of signer {members[sig['address']]} {sig['address']} stored ({of}, epoch {tally['epoch']})"  # type: ignore[index]
            else:
                what = f"signature of {sig['address']} stored (not a member of a valid committee)"
            out.append({"at": sig["at"], "source": "store", "event": what})
        out += self._payout_timeline(view.get("payout"))
        for row in (view["delivery"] or {}).get("history", []):
            what = f"{row['from_state'] or '-'} -> {row['to_state']}" + (f": {row['note']}" if row["note"] else "")
            out.append({"at": float(row["at"]), "source": "delivery", "event": what})
        return sorted(out, key=lambda e: e["at"])

    def _refused(self, request: dict[str, Any]) -> dict[str, Any]:
        btc = request["asset"] == "BTC"
        view = self._without_message(request, Kind.PAYOUT_DONE if btc else Kind.RELEASE, None)
        view["state"] = "refused"
        what = "pays it on Bitcoin" if btc else "signs a release for it"
        view["outcome"] = f"refused by the replica: {request['reason'] or 'no reason recorded'} (no attester {what})"
        return view

    def _paying(self, request: dict[str, Any]) -> dict[str, Any]:
        """A held BTC request whose PAYOUT_DONE nobody signed yet: its payout tells the story."""
        payout = self.payout(request["nonce"])
        view = self._without_message(request, Kind.PAYOUT_DONE, payout)
        view["state"] = "unsigned"
        if payout is not None and payout["state"] == "failed":
            view["outcome"] = f"payout failed: {payout['history'][-1]['note'] if payout['history'] else 'no note'} (the margin stays held)"
        else:
            view["waiting"] = _payout_waiting(payout)
        return view

    def _without_message(self, request: dict[str, Any], kind: Kind, payout: dict[str, Any] | None) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": None,
            "kind": kind.name,
            "message": None,
            "request": request,
            "signatures": [],
            "signed_by": [],
            "first_seen": None,
            "delivery": None,
            "waiting": None,
            "outcome": None,
        }
        if request["asset"] == "BTC":
            view["payout"] = payout
        view["timeline"] = self._timeline(view)
        return view

    # --- Bitcoin: registered keys, the Bitcoin fold, payouts ----------------------------------

    def btc_keys(self, account: str) -> list[bytes]:
        """The compressed keys ``account`` registered as its deposit refund key, oldest first."""
        if self.replica is None or not self._has(self.service, "replica_btc_key"):
            return []
        return [pubkey for _account, pubkey in self.replica.btc_keys(account)]

    def btc_deposit(self, txid: str, vout: int) -> dict[str, Any] | None:
        """The output ``txid:vout`` as the replica's Bitcoin fold recorded it (``seen`` at depth, or
        ``refused`` with the reason), or None before its fold reached it (or when it pays no
        registered deposit address)."""
        if not self._has(self.service, "btc_deposit"):
            return None
        with self.service.connect() as conn:  # type: ignore[union-attr]
            row = conn.execute(text("SELECT * FROM btc_deposit WHERE outpoint = :o"), {"o": f"{txid}:{vout}"}).mappings().first()
        return None if row is None else self._btc_deposit(row)

    def btc_deposits(self, account: str | None = None) -> list[dict[str, Any]]:
        """Every deposit the replica's Bitcoin fold recorded (of ``account``), oldest first."""
        if not self._has(self.service, "btc_deposit"):
            return []
        sql, params = "SELECT * FROM btc_deposit", {}
        if account is not None:
            sql, params = sql + " WHERE account = :a", {"a": account.lower()}
        with self.service.connect() as conn:  # type: ignore[union-attr]
            rows = conn.execute(text(sql + " ORDER BY block_height, outpoint"), params).mappings().all()
        return [self._btc_deposit(r) for r in rows]

    def _btc_deposit(self, row: Any) -> dict[str, Any]:
        txid, vout = row["outpoint"].split(":")
        out = {"outpoint": row["outpoint"], "txid": txid, "vout": int(vout), "account": to_checksum_address(row["account"])}
        out.update(self.amount(BTC_ASSET, int(row["amount"])))
        out.update(block=int(row["block_height"]), block_hash=row["block_hash"], block_time=int(row["block_time"]), state=row["state"], reason=row["reason"])
        if row["state"] == "seen" and self.config.bitcoin is not None:  # what its DEPOSIT_CREDIT credits
            credit = self.amount(BTC_ASSET, int(row["amount"]) - self.config.bitcoin.sweep_allowance)
            out.update(credit=credit["amount"], credit_base=credit["amount_base"])
        return out

    def credit_message(self, txid: str, vout: int) -> dict[str, Any] | None:
        """The DEPOSIT_CREDIT of Bitcoin output ``txid:vout`` (``message`` view), once signed."""
        mid = self._slot_message(Kind.DEPOSIT_CREDIT, source_tx=txid, source_index=vout)
        return None if mid is None else self._view(mid)

    def _slot_message(self, kind: Kind, source_tx: str | None = None, source_index: int | None = None, nonce: int | None = None) -> bytes | None:
        """The stored message of this bridge for a slot: the delivered one if any, else the one
        with the most signatures, else the first seen (attesters that agree sign one message)."""
        if self.store is None:
            return None
        sql = "SELECT m.id, COUNT(s.signer) AS n FROM committee_message m LEFT JOIN committee_signature s ON s.message_id = m.id WHERE m.kind = :k "
        sql += "AND m.verifying_contract = :vc AND m.domain_chain_id = :c"
        params: dict[str, Any] = {"k": int(kind), "vc": self.config.domain.verifying_contract.hex(), "c": str(self.config.chain_id)}
        if source_tx is not None:
            sql, params["tx"], params["i"] = sql + " AND m.source_tx = :tx AND m.source_index = :i", source_tx.lower(), source_index
        if nonce is not None:
            sql, params["n"] = sql + " AND m.nonce = :n", str(nonce)
        with self.store.db.transaction() as tx:
            rows = tx.rows(sql + " GROUP BY m.id, m.first_seen ORDER BY m.first_seen, m.id", params)
        if not rows:
            return None
        ids_ = [bytes.fromhex(r["id"]) for r in rows]
        delivered = [mid for mid in ids_ if (self._delivery(mid) or {}).get("state") == "delivered"]
        if delivered:
            return delivered[0]
        return bytes.fromhex(max(rows, key=lambda r: int(r["n"]))["id"])

    def payout(self, nonce: int) -> dict[str, Any] | None:
        """The deliverer's payout of BTC withdrawal ``nonce`` (``payout:<nonce>``): its state, the
        transaction it broadcast (txid, fee, amount paid), every PSBT proposed for it (fee bumps
        are later rounds) with the attesters' signatures, and its history; None before one is planned."""
        op = f"payout:{nonce}"
        engine = self.service
        if not self._has(engine, PAYOUTS.table, PAYOUTS.history):
            return None
        db = Db(engine)  # type: ignore[arg-type]
        with db.transaction() as tx:
            row = tx.one(f"SELECT * FROM {PAYOUTS.table} WHERE id = :id", {"id": op})
        if row is None:
            return None
        fields = ("id", "state", "txid", "feerate", "bumps", "sent_height", "retries", "last_error", "created_at", "updated_at")
        out: dict[str, Any] = {k: row[k] for k in fields}
        out["inputs"] = [o for o in (row["inputs"] or "").split(",") if o]
        out["history"] = [dict(h) for h in OpStore(db, PAYOUTS).history(op)]
        out["proposals"] = self._proposals(op)
        out.update(self._paid(row))
        out["confirmed"] = self._spend_block(row["txid"]) if row["state"] in ("confirmed", "done") and row["txid"] else None
        return out

    def _paid(self, row: dict[str, Any]) -> dict[str, Any]:
        """The amount the payout's transaction pays its destination and its fee (from the coins the
        Bitcoin fold recorded), once it was finalized."""
        if not row["raw_tx"]:
            return {"paid": None, "paid_base": None, "fee": None, "fee_base": None}
        tx = Tx.parse(bytes.fromhex(row["raw_tx"]))
        custody = self.config.bitcoin.custody_script_pubkey if self.config.bitcoin is not None else b""
        paid = sum(o.value for o in tx.vout if bytes(o.script_pubkey) != custody)
        spent = None
        if self._has(self.service, "custody_coin"):
            with self.service.connect() as conn:  # type: ignore[union-attr]
                amounts = dict(conn.execute(text("SELECT outpoint, amount FROM custody_coin")).all())
            coins = [amounts.get(f"{i.prevout.txid_hex}:{i.prevout.n}") for i in tx.vin]
            spent = None if None in coins else sum(coins)  # type: ignore[arg-type]
        fee = None if spent is None else spent - sum(o.value for o in tx.vout)
        shown = self.amount(BTC_ASSET, paid)
        return {
            "paid": shown["amount"],
            "paid_base": shown["amount_base"],
            "fee": None if fee is None else self.amount(BTC_ASSET, fee)["amount"],
            "fee_base": None if fee is None else str(fee),
        }

    def _spend_block(self, txid: str) -> dict[str, Any] | None:
        if not self._has(self.service, "custody_spend"):
            return None
        with self.service.connect() as conn:  # type: ignore[union-attr]
            row = conn.execute(text("SELECT block_height, block_time FROM custody_spend WHERE txid = :t"), {"t": txid}).first()
        return None if row is None else {"block": int(row[0]), "block_time": int(row[1])}

    def _proposals(self, group: str) -> list[dict[str, Any]]:
        if not self._has(self.store_engine, "custody_proposal", "custody_proposal_sig"):
            return []
        db = Db(self.store_engine)  # type: ignore[arg-type]
        with db.transaction() as tx:
            rows = tx.rows("SELECT id, round, created_at FROM custody_proposal WHERE grp = :g ORDER BY created_at, id", {"g": group})
            sigs = tx.rows(
                "SELECT s.proposal_id, s.signer, s.at FROM custody_proposal_sig s JOIN custody_proposal p ON p.id = s.proposal_id "
                "WHERE p.grp = :g ORDER BY s.at, s.signer",
                {"g": group},
            )
        committee = self.replica.current_committee() if self.replica is not None else self.config.committee
        threshold = self.config.bitcoin.policy.threshold if self.config.bitcoin is not None else committee.threshold
        out = []
        for r in rows:
            signed = []
            for s in sigs:
                if s["proposal_id"] != r["id"]:
                    continue
                try:
                    signer = bytes.fromhex(s["signer"])
                except ValueError:
                    continue
                index = committee.signers.index(signer) if signer in committee.signers else None
                signed.append({"index": index, "address": to_checksum_address(signer) if len(signer) == 20 else "0x" + signer.hex(), "at": float(s["at"])})
            members = {m["address"] for m in signed if m["index"] is not None}
            missing = [_member(committee, a) for a in committee.signers if to_checksum_address(a) not in members]
            out.append(
                {
                    "txid": r["id"],
                    "round": int(r["round"]),
                    "created_at": float(r["created_at"]),
                    "signed": signed,
                    "missing": missing,
                    "threshold": threshold,
                    "size": len(committee.signers),
                }
            )
        return out

    @staticmethod
    def _payout_timeline(payout: dict[str, Any] | None) -> list[dict[str, Any]]:
        if payout is None:
            return []
        out = []
        for row in payout["history"]:
            what = f"{payout['id']}: {row['from_state'] or '-'} -> {row['to_state']}" + (f": {row['note']}" if row["note"] else "")
            out.append({"at": float(row["at"]), "source": "payout", "event": what})
        for p in payout["proposals"]:
            for count, sig in enumerate(p["signed"], 1):
                who = f"signer {sig['index']} {sig['address']}" if sig["index"] is not None else f"{sig['address']} (not a member)"
                of = f"{count} of the {p['threshold']} needed" if count <= p["threshold"] else f"{count}, beyond the {p['threshold']} needed"
                out.append({"at": sig["at"], "source": "psbt", "event": f"PSBT {p['txid'][:16]}… (round {p['round']}) signed by {who} ({of})"})
        return out

    def _fields(self, m: Message) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "version": m.version,
            "kind": m.kind.name,
            "source_chain_id": m.source_chain_id,
            "source": f"0x{m.source_tx.hex()}:{m.source_index}",
            "dest_chain_id": m.dest_chain_id,
            "account": to_checksum_address(m.account),
            "nonce": m.nonce,
            "expiry": m.expiry,
            "payload_hash": _hex(m.payload_hash),
        }
        if m.kind in (Kind.RELEASE, Kind.DEPOSIT_CREDIT, Kind.PAYOUT_DONE):
            fields.update(self.amount(m.asset, m.amount))
        if m.kind == Kind.ROTATION and self.store is not None:
            try:
                new = Committee.unpack(self.store.payload(m.payload_hash))
                fields["new_committee"] = {"epoch": new.epoch, "threshold": new.threshold, "signers": [to_checksum_address(s) for s in new.signers]}
            except (NotFound, InputError):
                pass
        return fields

    def _stored(self, mid: bytes) -> Stored | None:
        if self.store is None:
            return None
        try:
            return self.store.get(mid)
        except NotFound:
            return None

    def _committees(self, now: int) -> list[Committee]:
        return self.replica.committees(now) if self.replica is not None else [self.config.committee]

    def _tallies(self, mid: bytes, stored: Stored | None, now: int) -> list[dict[str, Any]]:
        out = []
        for c in self._committees(now):
            entry: dict[str, Any] = {"epoch": c.epoch, "threshold": c.threshold, "size": len(c.signers)}
            if stored is None or self.store is None:
                entry.update(signed=[], missing=[_member(c, s) for s in c.signers], invalid=[], needed=c.threshold, quorum=False)
                entry["reason"] = "no signature in the attestation store"
            else:
                try:
                    t = self.store.quorum(mid, c, self.config.domain, now)
                except AttestationRefused as exc:
                    entry.update(signed=[], missing=[_member(c, s) for s in c.signers], invalid=[], needed=c.threshold, quorum=False, reason=exc.reason)
                else:
                    entry.update(
                        signed=[_member(c, s) for s in t.signed],
                        missing=[_member(c, s) for s in t.missing],
                        invalid=[_member(c, s) for s in t.invalid],
                        needed=t.needed,
                        quorum=t.quorum is not None,
                        reason=t.reason,
                    )
            out.append(entry)
        return out

    def _delivery(self, mid: bytes) -> dict[str, Any] | None:
        engine = self.service
        if not self._has(engine, DELIVERIES.table, DELIVERIES.history):
            return None
        db = Db(engine)  # type: ignore[arg-type]
        with db.transaction() as tx:
            row = tx.one(f"SELECT * FROM {DELIVERIES.table} WHERE id = :id", {"id": mid.hex()})
        if row is None:
            return None
        return {
            "kind": int(row["kind"]),
            "state": row["state"],
            "tx_hash": row["tx_hash"],
            "epoch": row["epoch"],
            "signers": ["0x" + s for s in (row["signers"] or "").split(",") if s],
            "retries": row["retries"],
            "last_error": row["last_error"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "next_attempt_at": row["next_attempt_at"],
            "history": [dict(h) for h in OpStore(db, DELIVERIES).history(mid.hex())],
        }

    def _why(self, view: dict[str, Any], message: Message | None, now: int) -> tuple[str | None, str | None]:
        """``(why it waits, how it ended)``: one of them is None."""
        state, delivery, request = view["state"], view["delivery"], view["request"]
        if state in TERMINAL:
            note = delivery["history"][-1]["note"] if delivery and delivery["history"] else state
            if state == "delivered" and delivery.get("tx_hash"):
                note = f"{note} (tx {delivery['tx_hash']})" if delivery["tx_hash"] not in note else note
            return None, note
        if request is not None and request["state"] in ("released", "expired"):
            return None, f"the replica records request {request['nonce']} {request['state']}" + (f": {request['reason']}" if request["reason"] else "")
        if message is not None and now >= message.expiry:
            return f"its expiry ({_utc(message.expiry)}) has passed: a deliverer will record it expired", None
        tally = self._best(view["signatures"])
        if state == "unsigned":
            why = "no attester has signed it yet (attesters sign once their own replicas hold the request: are they running and caught up?)"
        elif state in ("signing", "waiting_quorum"):
            why = _tally_text(tally)
            if state == "signing":
                why += "; no deliverer has opened a delivery for it (is `bridgectl relayer run deliverer` running on this database?)"
        elif state == "submitting":
            why = "a deliverer is sending it to the bridge contract"
        else:
            why = f"transaction {delivery['tx_hash']} sent; waiting for it to be mined and confirmed"
        stale = state in ("signing", "unsigned") or (state == "waiting_quorum" and tally is not None and tally["quorum"])
        if delivery and delivery.get("last_error") and not stale:
            why += f" (deliverer: {delivery['last_error']})"
        return why, None

    @staticmethod
    def _best(tallies: list[dict[str, Any]]) -> dict[str, Any] | None:
        if not tallies:
            return None
        return min(tallies, key=lambda t: (not t["quorum"], t["needed"], -t["epoch"]))


def _payout_waiting(payout: dict[str, Any] | None) -> str:
    """Why a held BTC request has no PAYOUT_DONE yet, from its payout."""
    if payout is None:
        return "no payout planned yet: the deliverer plans one for every held BTC request (is `bridgectl relayer run deliverer` running, with Bitcoin?)"
    state, txid, error = payout["state"], payout["txid"], payout["last_error"]
    if state == "proposing":
        why = "the deliverer is building the payout's PSBT"
    elif state == "collecting":
        p = payout["proposals"][-1] if payout["proposals"] else None
        if p is None:
            why = "the payout's PSBT is proposed; no attester signed it yet"
        else:
            signed = [m for m in p["signed"] if m["index"] is not None]
            missing = ", ".join(f"signer {m['index']}" for m in p["missing"]) or "nobody"
            why = f"PSBT {p['txid'][:16]}… has {len(signed)} of the {p['threshold']} attester signatures it needs (missing: {missing})"
    elif state == "broadcast":
        why = f"transaction {txid} broadcast; waiting for it to be mined and reach depth (mine a block on the devnet)"
    elif state in ("confirmed", "done"):
        why = f"transaction {txid} is at depth; waiting for the attesters' PAYOUT_DONE"
    else:
        why = f"payout {state}"
    return why + (f" ({error})" if error and state in ("proposing", "collecting") else "")


def _tally_text(tally: dict[str, Any] | None) -> str:
    if tally is None:
        return "no committee is valid now"
    if tally["quorum"]:
        return f"a quorum of epoch {tally['epoch']} is there ({len(tally['signed'])} signatures, {tally['threshold']} needed): a deliverer sends it next"
    missing = ", ".join(f"signer {m['index']} {m['address']}" for m in tally["missing"])
    return f"{len(tally['signed'])} of {tally['threshold']} signatures of epoch {tally['epoch']}; {tally['needed']} more needed from: {missing}"


def _utc(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _engine(url: str) -> Engine | None:
    """An engine on ``url``; None for a SQLite file that does not exist (never created here)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") and not Path(parsed.database).exists():
        return None
    return make_engine(url)


def _where(source: Engine | str | None) -> str:
    """A database for a message: its URL without the password."""
    if source is None:
        return "(no database)"
    url = source.url if isinstance(source, Engine) else make_url(source)
    return url.render_as_string(hide_password=True)
