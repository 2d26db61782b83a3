"""Well-known third-party Bitcoin RPC clients against the embedded regtest node, unchanged.

Each does what its users do: read blocks and transactions, send a transaction it built and
signed itself, look up an output, and get bitcoind's error code and message for a bad request.
python-bitcoinlib builds and signs in Python; python-bitcoinrpc's AuthServiceProxy and the
``bitcoin-core`` npm client go through the node's raw-transaction RPCs, as their users do.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

log = logging.getLogger("tests.clients")
REPO = Path(__file__).resolve().parents[1]


def _url_with_auth(node) -> str:
    user, password = node.rpc_auth
    return node.rpc_url.replace("http://", f"http://{user}:{password}@")


def test_python_bitcoinlib_proxy(own_regtest):
    import bitcoin
    import bitcoin.rpc
    from bitcoin.core import COIN, COutPoint, CMutableTransaction, CMutableTxIn, CMutableTxOut, b2lx, lx
    from bitcoin.core.script import SIGHASH_ALL, CScript, SignatureHash
    from bitcoin.core.scripteval import SCRIPT_VERIFY_P2SH, VerifyScript
    from bitcoin.wallet import CBitcoinSecret, P2PKHBitcoinAddress

    bitcoin.SelectParams("regtest")
    proxy = bitcoin.rpc.Proxy(service_url=_url_with_auth(own_regtest))
    key = CBitcoinSecret.from_secret_bytes(os.urandom(32))
    address = P2PKHBitcoinAddress.from_pubkey(key.pub)
    log.info("mine 101 blocks to %s", address)
    hashes = proxy.call("generatetoaddress", 101, str(address))
    assert proxy.getblockcount() == 101 and b2lx(proxy.getblockhash(1)) == hashes[0]
    block = proxy.getblock(lx(hashes[0]))  # the raw block, parsed by the client
    assert b2lx(block.GetHash()) == hashes[0]
    coinbase = block.vtx[0]
    assert proxy.getrawtransaction(coinbase.GetTxid(), block_hash=lx(hashes[0])).GetTxid() == coinbase.GetTxid()

    log.info("spend the first coinbase with a P2PKH signature made by the client")
    txin = CMutableTxIn(COutPoint(coinbase.GetTxid(), 0))
    tx = CMutableTransaction([txin], [CMutableTxOut(coinbase.vout[0].nValue - COIN // 1000, address.to_scriptPubKey())])
    sighash = SignatureHash(address.to_scriptPubKey(), tx, 0, SIGHASH_ALL)
    txin.scriptSig = CScript([key.sign(sighash) + bytes([SIGHASH_ALL]), key.pub])
    VerifyScript(txin.scriptSig, address.to_scriptPubKey(), tx, 0, (SCRIPT_VERIFY_P2SH,))
    txid = proxy.sendrawtransaction(tx)
    assert txid == tx.GetTxid()
    found = proxy.gettxout(COutPoint(txid, 0), includemempool=True)
    assert found["txout"].nValue == coinbase.vout[0].nValue - COIN // 1000 and found["confirmations"] == 0

    with pytest.raises(bitcoin.rpc.JSONRPCError) as refused:
        proxy.call("getblockhash", 10**6)
    assert refused.value.error == {"code": -8, "message": "Block height out of range"}
    with pytest.raises(bitcoin.rpc.JSONRPCError) as refused:
        proxy.call("sendrawtransaction", "00")
    assert refused.value.error["code"] == -22 and refused.value.error["message"].startswith("TX decode failed")


def _fund_wif(node) -> tuple[str, str, str]:
    """A WIF key whose address got a mature coinbase: (wif, address, coinbase txid)."""
    import bitcoin
    from bitcoin.wallet import CBitcoinSecret, P2PKHBitcoinAddress

    bitcoin.SelectParams("regtest")
    key = CBitcoinSecret.from_secret_bytes(os.urandom(32))
    address = str(P2PKHBitcoinAddress.from_pubkey(key.pub))
    [first, *_] = node.rpc("generatetoaddress", 101, address)
    return str(key), address, node.rpc("getblock", first)["tx"][0]


def test_python_bitcoinrpc_authserviceproxy(own_regtest):
    from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException

    wif, address, coinbase_txid = _fund_wif(own_regtest)
    proxy = AuthServiceProxy(_url_with_auth(own_regtest))
    assert proxy.getblockcount() == 101
    block = proxy.getblock(proxy.getblockhash(1), 2)
    assert block["tx"][0]["txid"] == coinbase_txid and block["tx"][0]["vout"][0]["value"] == Decimal(50)
    raw = proxy.createrawtransaction([{"txid": coinbase_txid, "vout": 0}], [{address: Decimal("49.999")}])
    signed = proxy.signrawtransactionwithkey(raw, [wif])
    assert signed["complete"] is True
    txid = proxy.sendrawtransaction(signed["hex"])
    assert proxy.gettxout(txid, 0, True)["value"] == Decimal("49.999")
    assert proxy.getrawtransaction(txid, True)["txid"] == txid
    with pytest.raises(JSONRPCException) as refused:
        proxy.getblockhash(10**6)
    assert refused.value.error == {"code": -8, "message": "Block height out of range"}


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not on PATH")
def test_bitcoin_core_npm_client(own_regtest):
    wif, address, coinbase_txid = _fund_wif(own_regtest)
    user, password = own_regtest.rpc_auth
    script = REPO / "tests" / "clients" / "bitcoin_core_npm.js"
    run = subprocess.run(
        ["node", str(script), own_regtest.rpc_url, user, password, coinbase_txid, wif, address],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "NODE_PATH": str(REPO / "node_modules")},
    )
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0, answer
    assert answer["height"] == 101 and answer["coinbase_in_block"] == coinbase_txid and answer["coinbase_value"] == 50
    assert answer["signed_complete"] is True and len(answer["sent_txid"]) == 64 and answer["txout_value"] == 49.999
    assert answer["error"] == {"code": -8, "message": "Block height out of range"}
    assert answer["decode_error"]["code"] == -22 and answer["decode_error"]["message"].startswith("TX decode failed")
