"""`swap status` and `swap list` print each leg in whole units of its asset: a token by the decimals
the swap config gives it (6,000 TUSD, not 6000000000), a token the config does not know in base
units that say so.  ``--json`` keeps base units (``describe``)."""

from __future__ import annotations

from bridge.cli.swap import _amount
from bridge.swaps.assets import AssetBook
from bridge.swaps.models import SwapLeg

TUSD = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def leg(asset: str, amount: int) -> SwapLeg:
    return SwapLeg(swap_id="s", leg="INITIATOR", chain="evm", asset=asset, amount=str(amount))


def test_a_configured_token_is_shown_in_whole_units():
    book = AssetBook({"TUSD": (TUSD, 6)})
    assert _amount(leg("tusd", 6_000 * 10**6), book) == "6000"
    assert _amount(leg("tusd", 1_500_001), book) == "1.500001"
    assert _amount(leg("eth", 15 * 10**17), book) == "1.5"
    assert _amount(SwapLeg(swap_id="s", leg="PARTICIPANT", chain="bitcoin", asset="btc", amount="50000000"), book) == "0.5"


def test_a_token_the_config_does_not_know_is_shown_in_base_units_that_say_so():
    assert _amount(leg("tusd", 6_000 * 10**6)) == "6000000000 (base units)"
    assert _amount(leg("tusd", 6_000 * 10**6), AssetBook({"OTHER": (TUSD, 18)})) == "6000000000 (base units)"
