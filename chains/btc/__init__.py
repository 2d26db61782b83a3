"""The one Bitcoin codec: wire format (``primitives``), Script (``script``), addresses (``address``)
and signature digests (``sighash``).  Pure byte-level code checked against Bitcoin Core, shared by the
adapter, the HTLC builders and the embedded regtest node."""
