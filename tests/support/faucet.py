"""One faucet key for a regtest node shared by many tests.

Regtest halves the block subsidy every 150 blocks and coinbases mature after 100, so mining
100+ blocks per test would run the shared node's subsidy dry; the faucet mines in rounds only
when it runs low and pays each test's keys from its matured coins.
"""

from __future__ import annotations

from chains.bitcoin import COINBASE_MATURITY, BitcoinAdapter
from chains.bitcoin_wallet import BtcKey
from chains.btc.primitives import block_subsidy
from devnets.controls import BitcoinDevnet

#: Left in the faucet beyond each payment, for the payment's fee.
FEE_RESERVE = 100_000


class Faucet:
    def __init__(self) -> None:
        self.key = BtcKey.generate()

    async def spendable(self, btc: BitcoinAdapter) -> int:
        tip = await btc.height()
        coins = await btc.utxos([self.key.p2wpkh_script], include_mempool=True)
        return sum(c.value_sats for c in coins if not c.coinbase or tip - c.height + 1 >= COINBASE_MATURITY)

    async def pay(self, btc: BitcoinAdapter, key: BtcKey, amount: int) -> int:
        """Pay ``amount`` sats to ``key``, confirmed; returns ``amount``."""
        while await self.spendable(btc) < amount + FEE_RESERVE:
            height = await btc.height() + 1
            assert block_subsidy(height) > 0, f"regtest subsidy exhausted at height {height}: no coins to test with"
            await BitcoinDevnet(btc).mine(10, self.key.p2wpkh_address())
            await BitcoinDevnet(btc).mine(COINBASE_MATURITY)
        await btc.send_to([self.key], [(key.p2wpkh_script, amount)], feerate=2)
        await BitcoinDevnet(btc).mine(1)
        return amount
