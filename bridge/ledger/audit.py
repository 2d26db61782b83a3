"""Full audit: recompute everything from the transfers and compare with what is stored.

Each commit already checks that its own changes sum to zero per asset; the audit
checks the whole books independently of that code path, reading in one
transaction so concurrent commits cannot make it see half a batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.engine import Engine

from bridge.ledger.models import (
    LedgerAccount,
    LedgerBalance,
    LedgerBalanceHistory,
    LedgerBatch,
    LedgerHead,
    LedgerPending,
    LedgerTransfer,
)
from bridge.ledger.queries import begin_snapshot

_T = LedgerTransfer.__table__


@dataclass
class AuditReport:
    height: int
    transfers: int
    accounts: int
    #: Per asset: sum of posted balances (must be 0) and of pending debits (= pending credits).
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "height": self.height,
            "transfers": self.transfers,
            "accounts": self.accounts,
            "totals": {a: {k: str(v) for k, v in t.items()} for a, t in self.totals.items()},
            "problems": self.problems,
        }


def audit(engine: Engine, max_problems: int = 100) -> AuditReport:
    with engine.connect() as conn:
        begin_snapshot(conn)
        height = conn.execute(select(LedgerHead.__table__.c.height)).scalar_one()
        accounts = {r.id: r for r in conn.execute(select(LedgerAccount.__table__))}
        stored = {r.account_id: r for r in conn.execute(select(LedgerBalance.__table__))}
        holds = {r.id: r for r in conn.execute(select(LedgerPending.__table__))}
        report = AuditReport(height=height, transfers=0, accounts=len(accounts))
        problems = report.problems

        def problem(msg: str) -> None:
            if len(problems) < max_problems:
                problems.append(msg)

        # Replay every transfer in commit order.
        totals: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        open_holds: dict[str, tuple[int, int, int]] = {}
        heights: set[int] = set()
        rows = conn.execute(select(_T).order_by(_T.c.height, _T.c.idx)).yield_per(5000)
        for t in rows:
            report.transfers += 1
            heights.add(t.height)
            d, c = totals[t.debit_account], totals[t.credit_account]
            for aid in (t.debit_account, t.credit_account):
                acc = accounts.get(aid)
                if acc is None:
                    problem(f"transfer {t.id}: unknown account {aid}")
                elif acc.asset != t.asset:
                    problem(f"transfer {t.id}: account {aid} holds {acc.asset}, transfer moves {t.asset}")
            if t.kind == "transfer":
                d[0] += t.amount
                c[1] += t.amount
            elif t.kind == "pending":
                d[2] += t.amount
                c[3] += t.amount
                open_holds[t.id] = (t.debit_account, t.credit_account, t.amount)
            else:
                hold = open_holds.pop(t.pending_id, None)
                if hold is None:
                    problem(f"transfer {t.id}: {t.kind} of {t.pending_id}, which is not an open hold")
                    continue
                totals[hold[0]][2] -= hold[2]
                totals[hold[1]][3] -= hold[2]
                if t.kind == "post":
                    if t.amount > hold[2]:
                        problem(f"transfer {t.id}: posts {t.amount}, more than the hold's {hold[2]}")
                    d[0] += t.amount
                    c[1] += t.amount

        # Stored totals equal the replay; the history's last row equals the stored totals.
        # A balance row records the height of its last change; history must have that row.
        hist_t = LedgerBalanceHistory.__table__
        bal_t = LedgerBalance.__table__
        last_hist = {
            r.account_id: r for r in conn.execute(select(hist_t).join(bal_t, (bal_t.c.account_id == hist_t.c.account_id) & (bal_t.c.height == hist_t.c.height)))
        }
        names = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")
        per_asset: dict[str, dict[str, int]] = defaultdict(lambda: {"balance": 0, "debits_pending": 0, "credits_pending": 0})
        for aid, acc in accounts.items():
            row = stored.get(aid)
            if row is None:
                problem(f"account {aid} has no balance row")
                continue
            values = [getattr(row, n) for n in names]
            if values != totals.get(aid, [0, 0, 0, 0]):
                problem(f"account {aid}: stored totals {values} differ from the replay {totals.get(aid, [0, 0, 0, 0])}")
            hist = last_hist.get(aid)
            if hist is not None and [getattr(hist, n) for n in names] != values:
                problem(f"account {aid}: last history row (height {hist.height}) differs from the stored totals")
            if hist is None and any(values):
                problem(f"account {aid}: has a balance but no history")
            balance = row.credits_posted - row.debits_posted
            if not acc.allow_negative and balance - row.debits_pending < 0:
                problem(f"account {aid} ({acc.owner}/{acc.kind}/{acc.asset}) is below zero: {balance - row.debits_pending}")
            s = per_asset[acc.asset]
            s["balance"] += balance
            s["debits_pending"] += row.debits_pending
            s["credits_pending"] += row.credits_pending
        for asset, s in sorted(per_asset.items()):
            if s["balance"] != 0:
                problem(f"asset {asset}: balances sum to {s['balance']}, not 0")
            if s["debits_pending"] != s["credits_pending"]:
                problem(f"asset {asset}: pending debits {s['debits_pending']} != pending credits {s['credits_pending']}")
        report.totals = dict(sorted(per_asset.items()))

        if set(holds) != set(open_holds):
            problem(
                f"open holds differ from the replay: stored-only {sorted(set(holds) - set(open_holds))[:5]}, "
                f"replay-only {sorted(set(open_holds) - set(holds))[:5]}"
            )
        batches = set(conn.execute(select(LedgerBatch.__table__.c.height)).scalars())
        if batches != set(range(1, height + 1)):
            problem(f"batch heights are not exactly 1..{height}")
        if not heights <= batches:
            problem("transfers exist at heights with no batch")
    return report
