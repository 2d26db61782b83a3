// What a user of the `bitcoin-core` npm client does against a node, run by tests/test_rpc_clients.py:
// read blocks and transactions, build and sign a transaction through the node's raw-transaction RPCs,
// send it, look up its output, and read bitcoind's code and message for a bad request.
// Usage: node bitcoin_core_npm.js URL USER PASSWORD COINBASE_TXID WIF ADDRESS; prints one JSON object.
'use strict';
const Client = require('bitcoin-core');

async function main() {
  const [url, username, password, coinbaseTxid, wif, address] = process.argv.slice(2);
  const client = new Client({ host: url, username, password });
  const out = {};
  out.height = await client.command('getblockcount');
  const hash = await client.command('getblockhash', 1);
  const block = await client.command('getblock', hash, 2);
  out.block_hash = block.hash;
  out.coinbase_in_block = block.tx[0].txid;
  const coinbase = await client.command('getrawtransaction', coinbaseTxid, true, hash);
  out.coinbase_value = coinbase.vout[0].value;
  const raw = await client.command('createrawtransaction', [{ txid: coinbaseTxid, vout: 0 }], [{ [address]: 49.999 }]);
  const signed = await client.command('signrawtransactionwithkey', raw, [wif]);
  out.signed_complete = signed.complete;
  out.sent_txid = await client.command('sendrawtransaction', signed.hex);
  const txout = await client.command('gettxout', out.sent_txid, 0, true);
  out.txout_value = txout.value;
  try {
    await client.command('getblockhash', 1000000);
    out.error = null;
  } catch (error) {
    out.error = { code: error.code, message: error.message };
  }
  try {
    await client.command('sendrawtransaction', '00');
    out.decode_error = null;
  } catch (error) {
    out.decode_error = { code: error.code, message: error.message };
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ crashed: String(error && error.stack || error) }) + '\n');
  process.exit(1);
});
