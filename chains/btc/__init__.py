"""The one Bitcoin codec: wire format (``primitives``), Script (``script``), addresses (``address``),
signature digests (``sighash``) and bitcoind's RPC error codes (``rpc_errors``).  Pure byte-level
code checked against Bitcoin Core, shared by the adapter, the HTLC code and the embedded regtest node."""
