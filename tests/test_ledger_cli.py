"""`bridgectl ledger …` end to end on both backends (in-process, as a user would type it)."""

from __future__ import annotations

import json
import time

from bridge.cli import main


def run(capsys, url: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["ledger", argv[0], "--db", url, *argv[1:]])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_operator_session(ledger_db, capsys, tmp_path):
    url, _ = ledger_db
    assert run(capsys, url, "open", "world", "external", "BTC")[0] == 0
    assert run(capsys, url, "open", "alice", "user", "BTC")[1].startswith("account 2: alice/user/BTC")
    run(capsys, url, "open", "bob", "user", "BTC")
    code, out, _ = run(capsys, url, "transfer", "dep:1", "world/external/BTC", "alice/user/BTC", "100_000", "--cause", "btc:ab:0")
    assert code == 0 and "committed at height 1" in out
    assert "already committed" in run(capsys, url, "transfer", "dep:1", "1", "2", "100000", "--cause", "btc:ab:0")[1]
    run(capsys, url, "transfer", "hold:1", "2", "3", "40000", "--pending", "--timeout", "600")
    run(capsys, url, "post", "post:1", "hold:1", "--amount", "30000")

    code, out, err = run(capsys, url, "transfer", "x", "alice/user/BTC", "3", "70001")
    assert code == 1 and "has 70000 available, needs 70001" in err

    code, out, _ = run(capsys, url, "balances", "--json")
    data = json.loads(out)
    assert data["height"] == 3
    assert {b["owner"]: b["balance"] for b in data["balances"]} == {"world": -100_000, "alice": 70_000, "bob": 30_000}
    assert "balance=100000" in run(capsys, url, "balances", "alice/user/BTC", "--at", "1")[1]
    assert "h3.0 post:1 post 2->3 30000 BTC pending=hold:1" in run(capsys, url, "history", "2")[1]
    assert "dep:1" in run(capsys, url, "show", "--cause", "btc:ab:0")[1]

    code, out, _ = run(capsys, url, "audit")
    assert code == 0 and "OK" in out and "BTC: sum 0" in out

    path = tmp_path / "out.csv"
    assert run(capsys, url, "export", "--from", "2", "--to", "3", "--format", "csv", "-o", str(path))[0] == 0
    assert [line.split(",")[2] for line in path.read_text().splitlines()] == ["id", "hold:1", "post:1"]
    code, out, _ = run(capsys, url, "export", "--format", "jsonl")
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["dep:1", "hold:1", "post:1"]


def test_health_from_recorded_prices(ledger_db, capsys):
    url, _ = ledger_db
    now = str(int(time.time()))
    run(capsys, url, "open", "world", "external", "ETH")
    run(capsys, url, "open", "carol", "user", "ETH")
    run(capsys, url, "open", "carol", "debt", "BTC")
    run(capsys, url, "open", "world", "external", "BTC")
    run(capsys, url, "transfer", "dep", "world/external/ETH", "carol/user/ETH", str(10**18))
    run(capsys, url, "transfer", "loan", "carol/debt/BTC", "world/external/BTC", str(5 * 10**6))  # 0.05 BTC
    for reporter in ("o1", "o2"):
        run(capsys, url, "price", "ETH", str(3_000 * 10**8), "--reporter", reporter, "--timestamp", now)
        run(capsys, url, "price", "BTC", str(60_000 * 10**8), "--reporter", reporter, "--timestamp", now)
    code, out, _ = run(capsys, url, "health", "carol", "--scan")
    assert code == 0 and "health 10000 bps (threshold 11000)  LIQUIDATABLE" in out
    assert "event 1: carol is liquidatable" in out
    code, _, err = run(capsys, url, "health", "--quorum", "3")
    assert code == 1 and "2 fresh price reports, 3 needed" in err
