"""`bridgectl htlc audit|extract-secret|btc-lock|btc-claim|btc-refund` as a user runs them.

The node commands talk to the session's regtest node through the settings'
environment variables (no devnet descriptor in the temp data dir).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from decimal import Decimal
from urllib.parse import urlparse

import pytest
from bitcoinlib.keys import Key

from bridge.cli import main
from chains.bitcoin import BitcoinAdapter
from chains.bitcoin_rpc import BitcoinRpc
from chains.bitcoin_wallet import BtcKey
from htlc.bitcoin_script import p2wsh_htlc_script

SECRET = bytes(range(32))
HASH = hashlib.sha256(SECRET).digest()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_audit_prints_terms_and_json(capsys):
    script = p2wsh_htlc_script(HASH, Key(1).public_byte, Key(2).public_byte, 1234)
    code, out, _ = run(capsys, "htlc", "audit", "--script", script.hex())
    assert code == 0 and "template    p2wsh" in out and "1234 (block height)" in out
    code, out, _ = run(capsys, "htlc", "audit", "--script", script.hex(), "--network", "mainnet", "--json")
    terms = json.loads(out)
    assert code == 0 and terms["address"].startswith("bc1q") and terms["hashlock"] == HASH.hex()


def test_audit_refusal_exits_1_with_the_reason(capsys):
    script = p2wsh_htlc_script(HASH, Key(1).public_byte, Key(2).public_byte, 1234)
    tampered = script[:3] + b"\x21" + script[4:]
    code, out, err = run(capsys, "htlc", "audit", "--script", tampered.hex(), "--json")
    refusal = json.loads(out)
    assert code == 1 and refusal["error"] == "AuditError" and refusal["position"] == 3
    assert "byte 3" in err


def test_extract_secret_not_there(capsys):
    code, _, err = run(capsys, "htlc", "extract-secret", "--tx", "zz", "--hash", HASH.hex())
    assert code == 1 and "tx is not hex" in err


@pytest.fixture
def node_env(regtest, monkeypatch, tmp_path):
    url = urlparse(regtest.rpc_url)
    user, password = regtest.rpc_auth
    for key, value in {"RPC_HOST": url.hostname, "RPC_PORT": str(url.port), "RPC_USER": user, "RPC_PASSWORD": password}.items():
        monkeypatch.setenv(f"BRIDGE_BITCOIN__{key}", value)
    monkeypatch.chdir(tmp_path)  # no ./bridge.toml from the checkout
    return ["--data-dir", str(tmp_path)]


def balance(regtest, key: BtcKey) -> int:
    scan = regtest.rpc("scantxoutset", "start", [f"raw({key.p2wpkh_script.hex()})"])
    return int(Decimal(str(scan["total_amount"])) * 100_000_000)


async def fund(regtest, faucet, key: BtcKey, sats: int) -> None:
    user, password = regtest.rpc_auth
    async with BitcoinAdapter(BitcoinRpc(regtest.rpc_url, user=user, password=password)) as btc:
        await faucet.pay(btc, key, sats)


def test_lock_claim_and_refund_by_hand(regtest, node_env, faucet, capsys):
    alice, bob = BtcKey.generate(), BtcKey.generate()
    asyncio.run(fund(regtest, faucet, alice, 1_000_000))  # a sync test: the CLI runs its own event loop
    common = [*node_env, "htlc"]

    code, out, err = run(
        capsys,
        *common,
        "btc-lock",
        "--key",
        alice.secret.hex(),
        "--amount",
        "250000",
        "--claim-pubkey",
        bob.pubkey.hex(),
        "--secret",
        SECRET.hex(),
        "--feerate",
        "2",
        "--json",
    )
    assert code == 0, err
    locked = json.loads(out)
    assert (locked["amount"], locked["refund_pubkey"], locked["claim_pubkey"]) == (250_000, alice.pubkey.hex(), bob.pubkey.hex())
    regtest.rpc("generatetoaddress", 1, BtcKey.generate().p2wpkh_address())

    code, out, err = run(capsys, *common, "btc-claim", "--key", bob.secret.hex(), "--script", locked["script"], "--secret", SECRET.hex(), "--json")
    assert code == 0, err
    claimed = json.loads(out)
    [block] = regtest.rpc("generatetoaddress", 1, BtcKey.generate().p2wpkh_address())
    assert balance(regtest, bob) == 250_000 - claimed["fee"]

    raw_claim = regtest.rpc("getrawtransaction", claimed["txid"], False, block)
    code, out, err = run(capsys, *common, "extract-secret", "--tx", raw_claim, "--hash", HASH.hex())
    assert code == 0 and out.strip() == SECRET.hex()

    # A second HTLC that Alice takes back: refused while locked, refunded after.
    code, out, _ = run(
        capsys, *common, "btc-lock", "--key", alice.secret.hex(), "--amount", "100000", "--claim-pubkey", bob.pubkey.hex(), "--refund-in", "2", "--json"
    )
    second = json.loads(out)
    regtest.rpc("generatetoaddress", 1, BtcKey.generate().p2wpkh_address())
    code, _, err = run(capsys, *common, "btc-refund", "--key", alice.secret.hex(), "--script", second["script"])
    assert code == 1 and "non-final" in err
    regtest.rpc("generatetoaddress", 1, BtcKey.generate().p2wpkh_address())
    before = balance(regtest, alice)
    code, out, err = run(capsys, *common, "btc-refund", "--key", alice.secret.hex(), "--script", second["script"], "--json")
    assert code == 0, err
    regtest.rpc("generatetoaddress", 1, BtcKey.generate().p2wpkh_address())
    assert balance(regtest, alice) == before + 100_000 - json.loads(out)["fee"]
