"""`bridgectl htlc evm-*` against a real Anvil: what a person debugging a swap would type."""

from __future__ import annotations

import asyncio
import json

import pytest
from eth_account import Account

from bridge.cli import main
from chains.evm import EvmAdapter
from devnets.anvil import rpc
from htlc.evm import Erc20


@pytest.fixture
def bridgectl(anvil, tmp_path, capsys):
    """Run a bridgectl command with --json against the session Anvil; returns (exit code, JSON)."""

    def run(*argv: str, key: str) -> tuple[int, dict]:
        capsys.readouterr()
        code = main(["--data-dir", str(tmp_path), *argv, "--rpc-url", anvil.url, "--key", key, "--json"])
        out = capsys.readouterr().out
        return code, json.loads(out) if out.strip() else {}

    return run


def fresh(anvil, wei: int = 10**19) -> Account:
    acct = Account.create()
    rpc(anvil.url, "anvil_setBalance", [acct.address, hex(wei)])
    return acct


async def mint(url: str, token: str, to: Account, amount: int) -> None:
    chain = await EvmAdapter.connect(url)
    try:
        await Erc20(chain, token).mint(to.key.to_0x_hex(), to.address, amount)
    finally:
        await chain.close()


def test_lock_show_claim_and_refused_refund(anvil, bridgectl):
    deployer, sender, relayer = fresh(anvil), fresh(anvil), fresh(anvil)
    recipient = Account.create()
    code, deployed = bridgectl("htlc", "evm-deploy", key=deployer.key.to_0x_hex())
    assert code == 0 and deployed["htlc"].startswith("0x")

    code, locked = bridgectl("htlc", "evm-lock", "--to", recipient.address, "--amount", "1_000_000", key=sender.key.to_0x_hex())
    assert code == 0 and locked["amount"] == 1_000_000 and len(bytes.fromhex(locked["secret"][2:])) == 32

    code, shown = bridgectl("htlc", "evm-show", "--id", locked["id"], key=relayer.key.to_0x_hex())
    assert shown["status"] == "locked" and shown["recipient"] == recipient.address and shown["nonce"] == 0

    code, refused = bridgectl("htlc", "evm-refund", "--id", locked["id"], key=relayer.key.to_0x_hex())
    assert code == 1 and refused["error"] == "ContractReverted" and refused["reason"] == "NotExpired"

    code, _ = bridgectl("htlc", "evm-claim", "--id", locked["id"], "--secret", locked["secret"], key=relayer.key.to_0x_hex())
    assert code == 0
    assert int(rpc(anvil.url, "eth_getBalance", [recipient.address, "latest"]), 16) == 1_000_000
    code, shown = bridgectl("htlc", "evm-show", "--id", locked["id"], key=relayer.key.to_0x_hex())
    assert shown["status"] == "claimed" and shown["secret"] == locked["secret"]


def test_token_lock_then_refund_after_expiry(anvil, bridgectl):
    deployer, sender = fresh(anvil), fresh(anvil)
    code, deployed = bridgectl("htlc", "evm-deploy", "--tokens", "--decimals", "6", key=deployer.key.to_0x_hex())
    token = deployed["tokens"]["TestToken"]
    asyncio.run(mint(anvil.url, token, sender, 500))

    code, locked = bridgectl(
        "htlc",
        "evm-lock",
        "--to",
        sender.address,
        "--token",
        token,
        "--amount",
        "500",
        "--expires-in",
        "30",
        key=sender.key.to_0x_hex(),
    )
    assert code == 0 and locked["token"] == token
    rpc(anvil.url, "evm_increaseTime", [31])
    rpc(anvil.url, "evm_mine")
    code, _ = bridgectl("htlc", "evm-refund", "--id", locked["id"], key=sender.key.to_0x_hex())
    assert code == 0
    code, shown = bridgectl("htlc", "evm-show", "--id", locked["id"], key=sender.key.to_0x_hex())
    assert shown["status"] == "refunded" and "refund_tx" in shown


def test_unknown_htlc_address_is_a_clear_error(anvil, bridgectl):
    code, out = bridgectl("htlc", "evm-show", "--id", "0x" + "00" * 32, "--htlc", Account.create().address, key=fresh(anvil).key.to_0x_hex())
    assert code == 1 and out["error"] == "NotFound" and "no contract at" in out["message"]
