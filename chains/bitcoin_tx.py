"""Amounts and addresses in the adapter's terms, on top of the one codec in ``chains.btc``.

bitcoind's JSON gives BTC as decimals and the adapter takes addresses per network;
everything below the adapter works in int sats and output scripts.
"""

from __future__ import annotations

from decimal import Decimal

from bridge.core.errors import InputError
from chains.btc.address import InvalidAddress, decode_destination, network as bitcoin_network
from chains.btc.primitives import COIN


def btc_to_sats(amount: Decimal | str | int) -> int:
    """bitcoind's BTC amount (a ``Decimal`` from ``parse_float=Decimal``) as int sats, exactly."""
    if isinstance(amount, float):
        raise InputError("BTC amounts must be Decimal or str, never float (precision)")
    sats = Decimal(amount) * COIN
    if sats != sats.to_integral_value():
        raise InputError(f"{amount} BTC is not a whole number of satoshis")
    return int(sats)


def address_to_script(address: str, network: str = "regtest") -> bytes:
    """scriptPubKey for a Bitcoin Core address of ``network``; ``InvalidAddress`` with bitcoind's reason otherwise."""
    script, error, locations = decode_destination(address, bitcoin_network(network))
    if script is None:
        raise InvalidAddress(f"address {address} is not a {network} address: {error}", address=address, error_locations=locations)
    return script
