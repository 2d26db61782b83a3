"""Read-side views of the committee: messages, withdrawal requests, deposit credits and margin
balances as one replica and the attestation store show them.

    status = CommitteeStatus.open(config, settings.db_url, settings.store_url)
    status.message("req:3")                  # or the message id, 0x optional
    status.messages(state="waiting_quorum")
    status.credit(tx_hash, log_index)        # a deposit's credit in this replica, or None
    status.deposit_credits(account)          # every deposit credited to an account
    status.balances()

Shared by the CLI (``bridgectl message``, ``deposit evm``, ``withdraw evm``), the demo and a
future HTTP API: every view is a plain dict, ready for JSON (addresses checksummed, hashes
``0x`` hex, amounts as decimal strings, in whole units with the asset's symbol and in base
units beside them).  Nothing here writes a row another process owns: tables a daemon has not
created yet read as "not started" (``replica`` None), and a SQLite file that does not exist is
not created.

The service's replica (the bridge database, which the deliverer keeps) is the one the CLI asks;
an attester's own replica database answers the same questions (``CommitteeStatus.open(config,
replica_url)``).  Signatures are tallied as a deliverer tallies them: ``AttestationStore.quorum``
against every committee the replica holds valid now.

Longer than the house's ~400 lines on purpose: one message's view is gathered from three sources
(the replica, the store, the deliveries) that must tell one story, and the CLI and the HTTP API
read it from this one place rather than each assembling its own.
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
from bridge.committee.replica import Replica, Request
from bridge.committee.store import AttestationRefused, AttestationStore, Stored
from bridge.core.db import make_engine
from bridge.core.dbapi import Db
from bridge.core.errors import InputError, NotFound
from bridge.ledger import ids
from bridge.runtime import OpStore
from bridge.swaps.assets import BTC, EVM, SwapAsset

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
        engine = self.service
        if not self._has(engine, "indexer_cursor"):
            return None
        with engine.connect() as conn:  # type: ignore[union-attr]
            return conn.execute(
                text("SELECT height FROM indexer_cursor WHERE name = :n ORDER BY height DESC LIMIT 1"), {"n": f"replica-{self.config.bridge.lower()}"}
            ).scalar()

    def credit(self, tx_hash: str, log_index: int) -> dict[str, Any] | None:
        """The credit of the deposit logged at ``tx_hash:log_index`` in this replica, or None."""
        if self.replica is None:
            return None
        transfer = ids.evm_log(tx_hash, log_index)
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
        """Every deposit credited to ``account``'s margin in this replica, oldest first."""
        if self.replica is None:
            return []
        with self.service.connect() as conn:  # type: ignore[union-attr]
            rows = conn.execute(
                text(
                    "SELECT t.id, t.height, t.amount, t.asset FROM ledger_transfers t JOIN ledger_accounts a ON a.id = t.credit_account "
                    "WHERE a.owner = :o AND a.kind = 'user' AND t.cause = 'deposit' ORDER BY t.height, t.idx"
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
        }

    # --- messages ---------------------------------------------------------------------------

    def message(self, ref: str) -> dict[str, Any]:
        """Everything known of one message (``parse_message_ref``): its fields, the request it
        releases, signatures per valid committee and who is missing, the delivery and its
        timeline, and why it waits.  ``NotFound`` when no source knows it."""
        kind, value = parse_message_ref(ref)
        if kind == "request":
            request = self.request(int(value))  # type: ignore[arg-type]
            if request["message_id"] is None:  # refused: there is no message to sign
                return self._refused(request)
            return self._view(bytes.fromhex(request["message_id"][2:]))
        return self._view(value)  # type: ignore[arg-type]

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
                if message is not None and message.kind == Kind.RELEASE:
                    try:  # the request this message names, though it is not the one the replica fixed
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
        if request is not None and request["message_id"] != _hex(mid):
            view["request_note"] = f"the replica fixed another message for request {request['nonce']}: {request['message_id']}"
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
        for row in (view["delivery"] or {}).get("history", []):
            what = f"{row['from_state'] or '-'} -> {row['to_state']}" + (f": {row['note']}" if row["note"] else "")
            out.append({"at": float(row["at"]), "source": "delivery", "event": what})
        return sorted(out, key=lambda e: e["at"])

    def _refused(self, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": None,
            "kind": Kind.RELEASE.name,
            "message": None,
            "request": request,
            "signatures": [],
            "signed_by": [],
            "first_seen": None,
            "delivery": None,
            "timeline": [
                {
                    "at": float(request["block_time"]),
                    "source": "chain",
                    "event": f"withdrawal request {request['nonce']} of {request['amount']} {request['asset']} mined in block {request['block']}",
                }
            ],
            "state": "refused",
            "waiting": None,
            "outcome": f"refused by the replica: {request['reason'] or 'no reason recorded'} (no attester signs a release for it)",
        }

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
