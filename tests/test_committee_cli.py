"""`bridgectl deposit evm`, `withdraw evm` and `message show|list` end to end, as a user runs them:
the committee daemons as processes started by `bridgectl relayer run attester|deliverer`, every
command a `python -m bridge` process with the environment of ``daemon_env``, checked on what the
user sees (exit codes, printed output) and on the chain itself.

Hostile input (unknown asset, zero, negative or over-precise amounts, malformed and unknown
message ids, missing keys) is a clear ``error: ...`` with a non-zero exit, and sends nothing:
the signing account's nonce and the bridge's request count stay as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account

from bridge.cli import main
from bridge.committee.status import CommitteeStatus
from bridge.core.testing import wait_until
from devnets.controls import AnvilControls
from devnets.presets import ONE_ETH
from support.committee import REPO_ROOT, TUSD, daemon_env, own_bridge, start_process, stop_process

log = logging.getLogger("test.committee.cli")


async def bridgectl(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m bridge ARGS`` as its own process (off the event loop)."""
    cmd = [sys.executable, "-m", "bridge", "--log-level", "WARNING", *args]
    proc = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    log.info("bridgectl %s -> %s\n%s%s", " ".join(args), proc.returncode, proc.stdout, proc.stderr)
    return proc


@contextlib.asynccontextmanager
async def committee_daemons(env: dict[str, str], bridge, settings, where: Path, attesters=(0, 1, 2)):
    """Attesters and a deliverer started with `bridgectl relayer run` (HTTP on any free port), until
    each has folded its first blocks."""
    procs, views = [], []

    async def up(args: list[str], name: str, db_url: str, ready) -> None:
        logfile = where / f"{name}.log"
        proc = start_process([*args, "--port", "0"], env, logfile)
        procs.append(proc)
        view = CommitteeStatus.open(bridge.config, db_url, settings.db_url)
        views.append(view)

        def folded() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{logfile.read_text(errors='replace')[-3000:]}")
            return ready(view) and view.replica_height() is not None

        await wait_until(folded, timeout=90, interval=0.2, what=f"{name} to fold its first blocks")

    try:
        # The deliverer first: it creates the attestation store's tables the attesters then share.
        await up(["relayer", "run", "deliverer", "--evm-key-env", "TEST_DELIVERER_KEY"], "deliverer", settings.db_url, lambda v: v.store is not None)
        runs = {f"attester-{i}": ["relayer", "run", "attester", "--key", str(bridge.key_file(i))] for i in attesters}
        await asyncio.gather(
            *(up([*args, "--db", f"sqlite:///{where}/{name}.sqlite"], name, f"sqlite:///{where}/{name}.sqlite", lambda v: True) for name, args in runs.items())
        )
        yield
    finally:
        for proc in procs:
            stop_process(proc)
        for view in views:
            view.close()


async def test_deposit_withdraw_and_show_through_the_cli(evm, regtest, tmp_path):
    log.info("declare: a bridge with a 3-of-4 committee; attesters 0, 1, 2 and a deliverer run as `bridgectl relayer run` processes")
    bridge = await own_bridge(evm, tmp_path / "bridge")
    settings = bridge.settings(tmp_path / "service", regtest=regtest)
    user, key = await bridge.user()
    other, other_key = await _unapproved_user(bridge, 3_000 * TUSD)
    env = daemon_env(settings, {"BRIDGE_EVM_KEY": key, "OTHER_KEY": other_key, "TEST_DELIVERER_KEY": bridge.relayer_key})
    async with committee_daemons(env, bridge, settings, tmp_path):
        log.info("act: deposit 1.5 ETH; the command waits until the service replica credits it")
        held = await evm.balance(bridge.contract.address)
        done = await bridgectl(env, "deposit", "evm", "--asset", "eth", "--amount", "1.5")
        assert done.returncode == 0, done.stderr
        assert "Deposited event" in done.stdout and "1.5 ETH (1500000000000000000 base units)" in done.stdout
        assert "credited in the service replica" in done.stdout and f"margin of {user}: 1.5 ETH" in done.stdout
        assert await evm.balance(bridge.contract.address) == held + 3 * ONE_ETH // 2

        log.info("act: another account deposits 2,500.5 TUSD it never approved: approve, then depositERC20 (JSON)")
        done = await bridgectl(env, "deposit", "evm", "--asset", "TUSD", "--amount", "2500.5", "--key-env", "OTHER_KEY", "--json")
        assert done.returncode == 0, done.stderr
        deposit = json.loads(done.stdout)
        assert deposit["approve_tx"] and deposit["credited_base"] == str(2_500_500_000) and deposit["credited"] == "2500.5"
        assert deposit["credit"]["amount"] == "2500.5" and deposit["credit"]["asset"] == "TUSD" and deposit["credit"]["account"] == other
        assert await bridge.token.balance(other) == 3_000 * TUSD - 2_500_500_000

        log.info("act: withdraw 0.5 ETH; the command follows it until the quorum's release is paid")
        before = await evm.balance(user)
        done = await bridgectl(env, "withdraw", "evm", "--asset", "ETH", "--amount", "0.5", "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        nonce, paid = result["request"], result["paid_tx"]
        request_receipt = await evm.receipt(result["tx"])
        gas = request_receipt.gas_used * request_receipt.effective_gas_price
        assert await evm.balance(user) == before - gas + ONE_ETH // 2
        assert await bridge.contract.released(nonce)
        assert result["message"]["state"] == "delivered" and result["message"]["request"]["state"] == "released"

        log.info("check: `message show req:N` tells the whole story, and the same by message id")
        shown = await bridgectl(env, "message", "show", f"req:{nonce}")
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        assert "RELEASE  state: delivered" in text and f"#{nonce} released: 0.5 ETH to {user}" in text
        assert "amount 0.5 ETH (500000000000000000 base units" in text
        assert "3 of 4 signed, 3 needed (epoch 0: a quorum)" in text and re.search(r"missing: 3 0x", text), text
        steps = ("waiting_quorum", "-> submitting", "-> submitted", "-> delivered", "stored (3 of the 3 needed, epoch 0)", f"mined in block {result['block']}")
        for step in steps:
            assert step in text, step
        assert paid in text
        mid = result["message"]["id"]
        as_json = await bridgectl(env, "message", "show", mid.removeprefix("0x"), "--json")
        view = json.loads(as_json.stdout)
        assert view["id"] == mid and view["kind"] == "RELEASE" and view["state"] == "delivered"
        assert view["message"]["amount"] == "0.5" and view["message"]["amount_base"] == str(ONE_ETH // 2) and view["message"]["nonce"] == nonce
        tally = view["signatures"][0]
        assert [m["index"] for m in tally["signed"]] == [0, 1, 2] and [m["index"] for m in tally["missing"]] == [3] and tally["quorum"]
        assert [h["to_state"] for h in view["delivery"]["history"]] == ["waiting_quorum", "submitting", "submitted", "delivered"]
        assert view["delivery"]["tx_hash"] == paid and view["waiting"] is None

        log.info("act: ask for more than the margin: the chain refuses it, the command says why and exits 1; nothing is held")
        margin = await bridge.contract.balance_of(user, "0x" + "00" * 20)
        assert margin == ONE_ETH
        done = await bridgectl(env, "withdraw", "evm", "--asset", "eth", "--amount", "5")
        assert done.returncode == 1
        said = done.stdout + done.stderr
        assert "withdrawal refused by the bridge (InsufficientMargin)" in said and "nothing is held" in said, said
        assert await bridge.contract.request_nonce() == nonce + 1, "the refused request took no nonce"
        assert await bridge.contract.balance_of(user, "0x" + "00" * 20) == margin
        unknown = await bridgectl(env, "message", "show", f"req:{nonce + 1}", "--json")
        assert unknown.returncode != 0, unknown.stdout

        listed = await bridgectl(env, "message", "list", "--json")
        assert [v["id"] for v in json.loads(listed.stdout)] == [mid]


async def _unapproved_user(bridge, tusd: int) -> tuple[str, str]:
    acct = Account.create()
    await AnvilControls(bridge.evm).set_balance(acct.address, 2 * ONE_ETH)
    await bridge.evm.wait_for_receipt(await bridge.token.mint(bridge.deployer, acct.address, tusd))
    return acct.address, acct.key.to_0x_hex()


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
async def hostile(evm, tmp_path, monkeypatch):
    """A bridge, a funded user whose key is in $BRIDGE_EVM_KEY, and the environment of a service
    with no daemons running; yields ``(bridge, user)``."""
    bridge = await own_bridge(evm, tmp_path / "bridge")
    settings = bridge.settings(tmp_path / "service")
    user, key = await bridge.user()
    for name, value in daemon_env(settings, {"BRIDGE_EVM_KEY": key}).items():
        if name.startswith("BRIDGE_"):
            monkeypatch.setenv(name, value)
    for name in ("BRIDGE_CONFIG", "BRIDGE_DELIVERER_KEY", "TEST_DELIVERER_KEY"):
        monkeypatch.delenv(name, raising=False)
    return bridge, user


HOSTILE = [
    (["deposit", "evm", "--asset", "DOGE", "--amount", "1"], "unknown asset 'DOGE': this bridge lists ETH, TUSD"),
    (["deposit", "evm", "--asset", "eth\x1b[31m", "--amount", "1"], "unknown asset"),
    (["deposit", "evm", "--asset", "eth", "--amount", "0"], "must be positive"),
    (["deposit", "evm", "--asset", "eth", "--amount", "-1"], "must be positive"),
    (["deposit", "evm", "--asset", "eth", "--amount", "-0.5"], "must be positive"),
    (["deposit", "evm", "--asset", "TUSD", "--amount", "1.0000001"], "more than 6 decimals"),
    (["withdraw", "evm", "--asset", "eth", "--amount", "0.0000000000000000001"], "more than 18 decimals"),
    (["withdraw", "evm", "--asset", "eth", "--amount", "1e80"], "more than can exist"),
    (["deposit", "evm", "--asset", "eth", "--amount", "NaN"], "must be positive"),
    (["deposit", "evm", "--asset", "eth", "--amount", "1,5"], "is not a number"),
    (["deposit", "evm", "--asset", "eth", "--amount", "1.5", "--base-units"], "a whole number of base units"),
    (["withdraw", "evm", "--asset", "eth", "--amount", "0", "--base-units"], "must be positive"),
    (["deposit", "evm", "--asset", "eth", "--amount", "1", "--key-env", "NO_SUCH_VARIABLE_SET"], "no EVM key: put the key that signs in $NO_SUCH_VARIABLE_SET"),
    (["deposit", "evm", "--asset", "eth", "--amount", "1", "--account", "0"], "holds no devnet"),
    (["message", "show", "0x1234"], "message id must be 64 hex digits (0x optional) or req:N"),
    (["message", "show", "req:-1"], "message id must be 64 hex digits"),
    (["message", "show", "req:99999999999999999999"], "message id must be 64 hex digits"),
    (["message", "show", "zz" * 32], "message id must be 64 hex digits"),
    (["message", "show", "\x1b]0;pwned\x07" + "ab" * 31], "message id must be 64 hex digits"),
    (["message", "show", "cd" * 32], "no message 0x" + "cd" * 32),
    (["message", "show", "req:7"], "no withdrawal request 7"),
    (["relayer", "run", "attester"], "needs --key KEYFILE"),
    (["relayer", "run", "deliverer", "--key", "x.key"], "--key applies to `relayer run attester` only"),
    (["relayer", "run", "deliverer", "--evm-key-env", "NO_SUCH_VARIABLE_SET"], "put its EVM key in $NO_SUCH_VARIABLE_SET"),
]


async def test_hostile_input_is_refused_clearly_and_sends_nothing(hostile, evm, monkeypatch):
    bridge, user = hostile
    monkeypatch.setenv("BAD_KEY", "0x1234")
    requests, nonce, tusd = await bridge.contract.request_nonce(), await evm.nonce(user), await bridge.token.balance(user)
    key, rotation = str(bridge.key_file(0)), bridge.dir / "rotation.json"
    signers = [Account.create().address for _ in range(5)]
    rotation.write_text(json.dumps({"committee": {"epoch": 1, "threshold": 2, "signers": signers}, "expiry": 2_000_000_000}))
    cases = [
        *HOSTILE,
        (["deposit", "evm", "--asset", "eth", "--amount", "1", "--key-env", "BAD_KEY"], "$BAD_KEY does not hold an EVM private key"),
        (["relayer", "run", "attester", "--key", key, "--rotate-to", str(bridge.dir / "missing.json")], "cannot read it"),
        (["relayer", "run", "attester", "--key", key, "--rotate-to", str(rotation)], "committee refused: threshold: below ceil(2N/3)"),
    ]
    for argv, expected in cases:
        code, out, err = await asyncio.to_thread(run_cli, *argv)
        assert code == 1, (argv, code, out, err)
        assert err.startswith("error: ") and expected in err, (argv, err)
        assert "Traceback" not in err and "\x1b" not in out + err and "\x07" not in out + err, (argv, err)
        assert "0x1234" not in err or "message" in argv, "a key is never echoed"
    assert await evm.nonce(user) == nonce and await bridge.contract.request_nonce() == requests and await bridge.token.balance(user) == tusd

    log.info("check: a message id in JSON mode is an error object too")
    code, out, _err = await asyncio.to_thread(run_cli, "message", "show", "ef" * 32, "--json")
    assert code == 1 and json.loads(out)["error"] == "NotFound"
    code, out, _err = await asyncio.to_thread(run_cli, "message", "list")
    assert code == 0 and out.strip() == "no messages"


def test_rotate_to_reads_the_next_committee_in_any_signer_order(tmp_path):
    from bridge.cli.relayer import load_rotation

    signers = [Account.create().address for _ in range(4)]
    path = tmp_path / "rotation.json"
    path.write_text(json.dumps({"committee": {"epoch": 1, "threshold": 3, "signers": signers}, "expiry": 1_900_000_000}))
    plan = load_rotation(str(path))
    assert plan.expiry == 1_900_000_000 and plan.committee.epoch == 1 and plan.committee.threshold == 3
    assert plan.committee.signers == tuple(sorted(bytes.fromhex(s[2:]) for s in signers))
