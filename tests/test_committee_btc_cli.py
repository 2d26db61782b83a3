"""`bridgectl deposit btc`, `withdraw btc` and `withdraw status` end to end, as a user runs them:
a bridge of the test's own with Bitcoin custody, attesters 0-2 and a deliverer in this process on
the session's regtest node and Anvil, every command a `python -m bridge` process with the
environment of ``daemon_env``, checked on what the user sees (exit codes, printed output) and on
the chains themselves.

Hostile input (malformed addresses, addresses of another network, zero, negative or over-precise
amounts, unknown accounts) is a clear ``error: ...`` with exit 1, and sends nothing: the signing
account's nonce, the bridge's request count and the devnet BTC key's coins stay as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import subprocess
import sys

import pytest
from eth_account import Account

from bridge.cli import main
from bridge.committee.messages import BTC_ASSET, bitcoin_source
from bridge.committee.replica import owner_of
from bridge.core.testing import wait_until
from bridge.custody.scripts import deposit_address, deposit_script, refund_pubkey_of_evm_key
from chains.btc.address import encode_segwit_address
from chains.bitcoin_wallet import BtcKey
from devnets.controls import BitcoinDevnet
from devnets.keys import btc_test_keys
from support.committee import REPO_ROOT, attesters, daemon_env, deliverer, own_bridge

log = logging.getLogger("test.committee.btc_cli")

#: The devnet BTC test key that pays the deposits (funded on the session's regtest node).
FUNDER = 2
WITHDRAW_SATS = 20_000_000


async def bridgectl(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m bridge ARGS`` as its own process (off the event loop, where the daemons run)."""
    cmd = [sys.executable, "-m", "bridge", "--log-level", "WARNING", *args]
    proc = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    log.info("bridgectl %s -> %s\n%s%s", " ".join(args), proc.returncode, proc.stdout, proc.stderr)
    return proc


async def cli(*argv: str) -> subprocess.CompletedProcess:
    """``bridgectl ARGV`` in this process (a thread), for the commands that only read: as fast as a
    test needs, with the environment the test set (``monkeypatch``)."""
    # No log records meanwhile: pytest's live logging (log_cli) swaps sys.stdout back and forth
    # around each record, which would take the command's output away from its redirection.
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        code, out, err = await asyncio.to_thread(run_cli, *argv)
    finally:
        logging.disable(previous)
    log.info("bridgectl %s -> %s (in process)\n%s%s", " ".join(argv), code, out, err)
    return subprocess.CompletedProcess(list(argv), code, out, err)


async def test_deposit_address_verify_fund_and_withdraw_through_the_cli(evm, btc, regtest, tmp_path, monkeypatch):
    log.info("declare: a bridge with BTC custody (3 of 4); attesters 0, 1, 2 and a deliverer; Bitcoin depth 1")
    bridge = await own_bridge(evm, tmp_path / "bridge", btc_start=await btc.height())
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=1)
    policy = bridge.config.bitcoin.policy
    user, key = await bridge.user(tusd=0)
    other, other_key = await bridge.user(tusd=0)
    env = daemon_env(settings, {"BRIDGE_EVM_KEY": key, "OTHER_KEY": other_key})
    for name, value in env.items():  # the same for the commands run in this process
        if name.startswith("BRIDGE_") or name == "OTHER_KEY":
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    payee = BtcKey.generate()
    async with attesters(bridge, settings, [0, 1, 2]) as running, deliverer(bridge, settings) as delivery:
        replicas = [d.attester.replica for d in running] + [delivery.deliverer.replica]

        log.info("act: `deposit btc` with the account's key: registers it, waits for the service replica, prints the address and its script")
        done = await bridgectl(env, "deposit", "btc")
        assert done.returncode == 0, done.stderr
        pubkey = refund_pubkey_of_evm_key(key)
        address = deposit_address(policy, user, pubkey)
        text = done.stdout
        assert "registerBtcKey tx 0x" in text and "the service replica holds the key" in text
        assert f"deposit address  {address}  (regtest, P2WSH)" in text and f"account          {user}" in text
        assert f"witness script   {deposit_script(policy, user, pubkey).hex()}" in text
        assert "      4 OP_CHECKMULTISIG\n    OP_ELSE\n      20 OP_CHECKSEQUENCEVERIFY OP_DROP\n" in text
        assert f"      {pubkey.hex()}\n      OP_CHECKSIG\n    OP_ENDIF" in text and f"{user[2:].lower()} OP_DROP\n    OP_IF\n      3\n" in text
        assert f"after 20 blocks (relative to the deposit's confirmation, BIP-68/112) the account's own key {pubkey.hex()}" in text
        assert "minimum deposit  0.0001 BTC (10000 sats)" in text and "sweep allowance  0.00001 BTC (1000 sats)" in text
        assert all(r.btc_keys(user) == [(owner_of(user), pubkey)] for r in [delivery.deliverer.replica])

        log.info("check: the same again (JSON, by address) registers nothing new and says the same, with base units")
        again = await cli("deposit", "btc", "--account", user.lower(), "--json")
        assert again.returncode == 0, again.stderr
        terms = json.loads(again.stdout)
        assert terms["deposit_address"] == address and terms["registered"] and "register_tx" not in terms
        assert terms["min_deposit_base"] == "10000" and terms["sweep_allowance_base"] == "1000" and terms["refund_delay"] == 20
        assert terms["committee"]["threshold"] == 3 and terms["committee"]["size"] == 4

        log.info("act: --verify accepts the address for its account, refuses it for another account and a mainnet address")
        ok = await cli("deposit", "btc", "--account", user, "--verify", address)
        assert ok.returncode == 0 and ok.stdout.startswith(f"ok: {address} is the deposit address of account {user.lower()}"), ok.stderr
        registered_other = await cli("deposit", "btc", "--key-env", "OTHER_KEY", "--no-wait")
        assert registered_other.returncode == 0, registered_other.stderr
        await wait_until(lambda: delivery.deliverer.replica.btc_keys(other), timeout=20, what="the other account's key")
        wrong = await cli("deposit", "btc", "--account", other, "--verify", address)
        assert wrong.returncode == 1 and "not ok" in wrong.stderr
        assert (
            f"not the deposit address of account {other.lower()}" in wrong.stderr
            and deposit_address(policy, other, refund_pubkey_of_evm_key(other_key)) in wrong.stderr
        )
        given = await cli("deposit", "btc", "--account", user, "--verify", address, "--refund-pubkey", pubkey.hex(), "--json")
        assert given.returncode == 0, given.stdout + given.stderr
        checked = json.loads(given.stdout)
        assert checked["ok"] is True and checked["key_source"] == "the given --refund-pubkey", checked
        mainnet = await cli("deposit", "btc", "--account", user, "--verify", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")
        assert mainnet.returncode == 1 and "not a regtest address" in mainnet.stderr

        log.info("act: --fund 0.5 --mine pays it from devnet BTC key %d and follows it to the credit", FUNDER)
        funder = BtcKey.from_hex(btc_test_keys()[FUNDER].private_key)
        done = await bridgectl(env, "deposit", "btc", "--account", user, "--fund", "0.5", "--btc-key", str(FUNDER), "--mine")
        assert done.returncode == 0, done.stdout + done.stderr
        text = done.stdout
        paid = next(line for line in text.splitlines() if "bitcoin: paid 0.5 BTC from devnet BTC key" in line)
        txid = paid.split(" tx ")[1].split()[0]
        vout = int(paid.split(" output ")[1].split()[0])
        for step in (
            "(--mine)",
            f"tx {txid} mined in block",
            "service fold: seen at depth",
            "credits 0.49999 BTC",
            "store: signature of signer",
            "-> delivered",
        ):
            assert step in text, step
        assert "service replica: credited 0.49999 BTC as margin" in text and f"margin of {user}: 0.49999 BTC" in text
        assert await bridge.contract.credited_output(bitcoin_source(txid, vout)[0], vout)
        credit = 50_000_000 - bridge.config.bitcoin.sweep_allowance
        await wait_until(lambda: all(r.balances() == {(owner_of(user), "BTC"): (credit, 0)} for r in replicas), timeout=20, what="the credit everywhere")
        assert funder.p2wpkh_address() in paid

        log.info("act: withdraw 0.2 BTC to a fresh address; the command follows the payout and mines as needed")
        done = await bridgectl(env, "withdraw", "btc", "--amount", "0.2", "--to", payee.p2wpkh_address(), "--mine", "--json", "--timeout", "120")
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads(done.stdout)
        nonce, view = result["request"], result["status"]
        assert result["amount"] == "0.2" and result["amount_base"] == str(WITHDRAW_SATS) and result["outcome"].startswith("paid: 0.2 BTC")
        payout = view["payout"]
        assert view["kind"] == "PAYOUT_DONE" and view["state"] == "delivered" and view["request"]["state"] == "released"
        assert payout["state"] in ("confirmed", "done") and payout["confirmed"]["block"] > 0 and payout["bumps"] == 0
        fee, to_payee = int(payout["fee_base"]), int(payout["paid_base"])
        assert 0 < fee < 10_000 and to_payee == WITHDRAW_SATS - fee
        assert await btc.balance([payee.p2wpkh_script]) == to_payee
        assert await bridge.contract.released(nonce)
        signed = {m["index"] for m in payout["proposals"][-1]["signed"]}
        assert signed <= {0, 1, 2} and len(signed) >= 3 and [m["index"] for m in payout["proposals"][-1]["missing"]] == [3]
        want = {(owner_of(user), "BTC"): (credit - WITHDRAW_SATS, 0)}
        await wait_until(lambda: all(r.balances() == want for r in replicas), timeout=20, what="the posted hold everywhere")

        log.info("check: `withdraw status N` tells the whole story in whole BTC; --json in base units too")
        shown = await cli("withdraw", "status", str(nonce))
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        assert text.startswith(f"withdrawal request {nonce}  0.2 BTC  request state: released")
        assert f"to Bitcoin {payee.p2wpkh_address()}" in text and f"payout:{nonce} done, tx {payout['txid']}" in text
        assert f"pays {to_payee / 10**8:.8f}".rstrip("0") in text and "0 fee bumps" in text
        assert "3 of 4 signed, 3 needed" in text and "PAYOUT_DONE  state: delivered" in text
        for step in ("proposing -> collecting", "collecting -> broadcast", "broadcast -> confirmed", "(3 of the 3 needed)", "-> delivered"):
            assert step in text, step
        as_json = json.loads((await cli("withdraw", "status", str(nonce), "--json")).stdout)
        assert as_json["request"]["amount"] == "0.2" and as_json["request"]["amount_base"] == str(WITHDRAW_SATS)
        assert as_json["payout"]["paid_base"] == str(to_payee) and as_json["request"]["destination"] == payee.p2wpkh_script.hex()
        message = await cli("message", "show", f"req:{nonce}")
        assert message.returncode == 0 and f"payout:{nonce} done" in message.stdout and "PAYOUT_DONE" in message.stdout

        log.info("act: a second withdrawal, --no-wait; nothing mines: `withdraw status` says the payout waits for a block")
        sent = await cli("withdraw", "btc", "--amount", "0.1", "--to", payee.p2wpkh_address(), "--no-wait")
        assert sent.returncode == 0 and f"follow it with `bridgectl withdraw status {nonce + 1}`" in sent.stdout, sent.stderr
        pending = delivery.deliverer.replica
        await wait_until(lambda: _payout_state(settings, bridge, nonce + 1) == "broadcast", timeout=30, what="the second payout broadcast")
        shown = await cli("withdraw", "status", str(nonce + 1))
        assert shown.returncode == 0 and f"withdrawal request {nonce + 1}  0.1 BTC  request state: held" in shown.stdout, shown.stderr
        assert "message (none)  PAYOUT_DONE  state: unsigned" in shown.stdout and f"payout:{nonce + 1} broadcast, tx " in shown.stdout
        assert "broadcast; waiting for it to be mined and reach depth" in shown.stdout
        async with BitcoinDevnet(btc).mining_mempool():
            await wait_until(lambda: pending.request(nonce=nonce + 1).state == "released", timeout=30, what="the second payout posted")
        want = {(owner_of(user), "BTC"): (credit - WITHDRAW_SATS - WITHDRAW_SATS // 2, 0)}
        await wait_until(lambda: all(r.balances() == want for r in replicas), timeout=20, what="both holds posted everywhere")
        paid_twice = await btc.balance([payee.p2wpkh_script])
        nonce += 1

        log.info("act: ask for more than the margin: the chain refuses it (BTC is never borrowed), nothing is held or paid, exit 1")
        margin = await bridge.contract.balance_of(user, BTC_ASSET)
        assert margin == credit - WITHDRAW_SATS - WITHDRAW_SATS // 2
        refused = await cli("withdraw", "btc", "--amount", "5", "--to", payee.p2wpkh_address())
        assert refused.returncode == 1 and "withdrawal refused by the bridge (InsufficientMargin)" in refused.stderr, refused.stderr
        assert "nothing is held" in refused.stderr
        assert await bridge.contract.request_nonce() == nonce + 1, "the refused request took no nonce"
        assert await bridge.contract.balance_of(user, BTC_ASSET) == margin
        assert await btc.balance([payee.p2wpkh_script]) == paid_twice
        assert all(r.balances() == want for r in replicas)


def _payout_state(settings, bridge, nonce: int) -> str | None:
    from bridge.committee.status import CommitteeStatus

    status = CommitteeStatus.open(bridge.config, settings.db_url, settings.store_url)
    try:
        return (status.payout(nonce) or {}).get("state")
    finally:
        status.close()


# --- hostile input ---------------------------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``bridgectl ARGV`` in this process (a thread: the test's loop is running); argparse's own
    refusals come back as 2."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def hostile(evm, regtest, tmp_path, monkeypatch):
    """A bridge with Bitcoin custody, a funded user whose key is in $BRIDGE_EVM_KEY, and the
    environment of a service with no daemons running; yields ``(bridge, user, key)``."""
    bridge = await own_bridge(evm, tmp_path / "bridge")
    settings = bridge.settings(tmp_path / "service", regtest=regtest)
    user, key = await bridge.user(tusd=0)
    for name, value in daemon_env(settings, {"BRIDGE_EVM_KEY": key}).items():
        if name.startswith("BRIDGE_"):
            monkeypatch.setenv(name, value)
    for name in ("BRIDGE_CONFIG", "BRIDGE_DELIVERER_KEY"):
        monkeypatch.delenv(name, raising=False)
    return bridge, user, key


STRANGER = Account.create().address
REGTEST_ADDRESS = BtcKey.generate().p2wpkh_address()
WITNESS_V2 = encode_segwit_address("bcrt", 2, bytes(16))
HOSTILE = [
    (["withdraw", "btc", "--amount", "0.2", "--to", "notanaddress"], "--to: not a regtest address: Invalid checksum or length of Base58 address"),
    (["withdraw", "btc", "--amount", "0.2", "--to", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"], "is a mainnet address; this bridge pays on regtest"),
    (["withdraw", "btc", "--amount", "0.2", "--to", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"], "is a mainnet address; this bridge pays on regtest"),
    (["withdraw", "btc", "--amount", "0.2", "--to", "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"], "is a testnet address; this bridge pays on regtest"),
    (["withdraw", "btc", "--amount", "0.2", "--to", REGTEST_ADDRESS[:-1] + ("q" if REGTEST_ADDRESS[-1] != "q" else "p")], "not a regtest address"),
    (["withdraw", "btc", "--amount", "0.2", "--to", "bcrt1\x1b[31mq"], "is no Bitcoin address"),
    (["withdraw", "btc", "--amount", "0.2", "--to", WITNESS_V2], "which no payout pays"),
    (["withdraw", "btc", "--amount", "0", "--to", REGTEST_ADDRESS], "must be positive"),
    (["withdraw", "btc", "--amount=-1", "--to", REGTEST_ADDRESS], "must be positive"),
    (["withdraw", "btc", "--amount", "0.123456789", "--to", REGTEST_ADDRESS], "has more than 8 decimals"),
    (["withdraw", "btc", "--amount", "21000001", "--to", REGTEST_ADDRESS], "more than can exist on bitcoin"),
    (["withdraw", "btc", "--amount", "0.00001", "--to", REGTEST_ADDRESS], "below this bridge's minimum of 0.0001 BTC"),
    (["withdraw", "btc", "--amount", "1.5", "--base-units", "--to", REGTEST_ADDRESS], "a whole number of base units"),
    (["withdraw", "btc", "--amount", "0.2", "--to", REGTEST_ADDRESS, "--account", "99"], "holds no devnet"),
    (["withdraw", "btc", "--amount", "0.2", "--to", REGTEST_ADDRESS, "--key-env", "NO_SUCH_VARIABLE_SET"], "no EVM key"),
    (["withdraw", "status", "5"], "no withdrawal request 5"),
    (["deposit", "btc", "--account", "0xnothex"], "--account must be an EVM address (0x and 40 hex digits) or a devnet test account number"),
    (["deposit", "btc", "--account", "7"], "holds no devnet"),
    (["deposit", "btc", "--account", STRANGER], f"{STRANGER} has registered no Bitcoin key"),
    (["deposit", "btc", "--account", STRANGER, "--verify", REGTEST_ADDRESS], f"{STRANGER} has registered no Bitcoin key"),
    (["deposit", "btc", "--account", STRANGER, "--fund", "0.5"], f"{STRANGER} has registered no Bitcoin key"),
    (["deposit", "btc", "--account", STRANGER, "--verify", REGTEST_ADDRESS, "--refund-pubkey", "1234"], "must be a 33-byte compressed"),
    (["deposit", "btc", "--fund", "0"], "must be positive"),
    (["deposit", "btc", "--fund=-0.5"], "must be positive"),
    (["deposit", "btc", "--fund", "0.000000001"], "has more than 8 decimals"),
    (["deposit", "btc", "--fund", "0.00005"], "below the minimum deposit of 0.0001 BTC"),
    (["deposit", "btc", "--fund", "0.5", "--btc-key", "9"], "--btc-key must be a devnet BTC test key, 0..4"),
    (["deposit", "btc", "--fund", "0.5", "--verify", REGTEST_ADDRESS], "--verify checks an address"),
    (["deposit", "btc", "--key-env", "NO_SUCH_VARIABLE_SET"], "which account?"),
]


async def test_hostile_btc_input_is_refused_clearly_and_sends_nothing(hostile, evm, btc):
    bridge, user, key = hostile
    funder = BtcKey.from_hex(btc_test_keys()[1].private_key)
    requests, nonce, coins = await bridge.contract.request_nonce(), await evm.nonce(user), await btc.balance([funder.p2wpkh_script])
    other_pubkey = refund_pubkey_of_evm_key(Account.create().key)
    cases = [
        *HOSTILE,
        (["deposit", "btc", "--account", user, "--verify", REGTEST_ADDRESS, "--refund-pubkey", other_pubkey.hex()], f"is not the key of {user}"),
        (["deposit", "btc", "--account", STRANGER, "--key-env", "BRIDGE_EVM_KEY"], f"holds the key of {user}, not of --account {STRANGER}"),
    ]
    for argv, expected in cases:
        code, out, err = await asyncio.to_thread(run_cli, *argv)
        assert code == 1, (argv, code, out, err)
        assert err.startswith("error: ") and expected in err, (argv, err)
        assert "Traceback" not in err and "\x1b" not in out + err, (argv, err)
        assert key[2:] not in out + err, "a key is never echoed"
    code, _out, err = await asyncio.to_thread(run_cli, "withdraw", "status", "abc")
    assert code == 2 and "a request nonce is a whole number" in err

    log.info("check: a wrong address for a known key is 'not ok' (exit 1), not an error")
    pubkey = refund_pubkey_of_evm_key(key)
    theirs = deposit_address(bridge.config.bitcoin.policy, STRANGER, other_pubkey)
    code, out, err = await asyncio.to_thread(run_cli, "deposit", "btc", "--account", user, "--verify", theirs, "--refund-pubkey", pubkey.hex())
    assert code == 1 and err.startswith("not ok: ") and f"not the deposit address of account {user.lower()}" in err
    code, out, err = await asyncio.to_thread(run_cli, "deposit", "btc", "--account", user, "--verify", REGTEST_ADDRESS, "--refund-pubkey", pubkey.hex())
    assert code == 1 and "not a P2WSH address" in err
    assert await evm.nonce(user) == nonce and await bridge.contract.request_nonce() == requests
    assert await btc.balance([funder.p2wpkh_script]) == coins
