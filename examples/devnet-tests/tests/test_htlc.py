"""Pay to a Bitcoin HTLC and claim it with the secret: the story every swap is made of."""

import hashlib
import secrets

from chains.bitcoin_wallet import BtcKey
from htlc.bitcoin_script import p2wsh_htlc_script
from htlc.bitcoin_tx import build_claim, fund_htlc
from htlc.secret import extract_secret


async def test_pay_to_an_htlc_and_claim_it(bridge_devnet, bridge_btc):
    alice = BtcKey.from_hex(bridge_devnet.btc_keys[1]["private_key"])  # a funded devnet key
    bob = BtcKey.generate()
    secret = secrets.token_bytes(32)
    hashlock = hashlib.sha256(secret).digest()
    script = p2wsh_htlc_script(hashlock, bob.pubkey, alice.pubkey, await bridge_btc.height() + 20)

    coin, funding = await fund_htlc(bridge_btc, [alice], script, 300_000, feerate=2)
    bridge_devnet.mine_until_confirmed(funding.txid)

    claim = build_claim(coin, secret, bob, bob.p2wpkh_script, feerate=2)
    await bridge_btc.send(claim.hex)
    assert bridge_devnet.mine_until_confirmed(claim.txid) == 1

    assert await bridge_btc.balance([bob.p2wpkh_script]) == 300_000 - claim.fee
    assert extract_secret(claim.raw, hashlock) == secret  # the claim reveals it to the other chain
