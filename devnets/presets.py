"""The devnet scenario's presets, defined once for the tests, ``bench/`` and the demo.

Short but policy-valid swap timelocks and the LP's markets, in the shape ``SwapConfig`` reads
(``timelock = TIMELOCK``, ``lp.markets = MARKETS``).
"""

from __future__ import annotations

ONE_BTC = 100_000_000
ONE_ETH = 10**18

#: The trader's BTC lock expires 120 blocks out (60 s a block assumed), the LP's 60 blocks / 1 hour;
#: the gap leaves the LP time to claim.
TIMELOCK = {
    "safety_gap": 1800,
    "initiator_lock": 7200,
    "participant_lock": 3600,
    "min_participant_lock": 600,
    "claim_margin": 300,
    "btc_seconds_per_block": 60,
}

#: 1 BTC = 15 ETH = 60,000 TUSD, as integer rates of base units.
MARKETS = {
    "btc/eth": {"rate": "150000000000/1", "min_sell": 10_000, "max_sell": 10 * ONE_BTC},
    "eth/btc": {"rate": "1/150000000000", "min_sell": 10**15, "max_sell": 100 * ONE_ETH},
    "tusd/btc": {"rate": "1/600", "min_sell": 10**6, "max_sell": 10**12},
}
#: The demo's LP also sells TUSD for BTC.
DEMO_MARKETS = {**MARKETS, "btc/tusd": {"rate": "600/1", "min_sell": 10_000, "max_sell": 10 * ONE_BTC}}
