// Retry check: node retry_check.mjs < scenario.json > result.json
//
// scenario.json: {"addresses": [...], "texts": [...], "options": {...connect() options}}
// Makes one embed call through connect(addresses, options), recording every retry the client makes
// (onRetry, with the time since the call began), and prints what happened as JSON: ok, the vectors or
// the error's code and details, the retries, the elapsed time, and the client's retry policy
// (RETRYABLE, CALL_DEFAULTS). tests/integration/test_node_retries.py runs it against real servers.

import { readFileSync } from "node:fs";

import { CALL_DEFAULTS, RETRYABLE, connect, decodeEmbeddings } from "./embedder_client.mjs";

async function main() {
  const scenario = JSON.parse(readFileSync(0, "utf8"));
  const retries = [];
  let started = 0; // set when the call begins: loading the proto in connect() is not the call's time
  const onRetry = (retry) => retries.push({ ...retry, at_ms: Date.now() - started });
  const client = connect(scenario.addresses, { ...scenario.options, onRetry });
  const out = { policy: { retryable: RETRYABLE, defaults: CALL_DEFAULTS }, retries };
  started = Date.now();
  try {
    const resp = await client.embed({ texts: scenario.texts });
    out.ok = true;
    out.rows = decodeEmbeddings(resp).map((row) => Array.from(row));
  } catch (err) {
    out.ok = false;
    out.code = err.code;
    out.details = err.details;
  } finally {
    out.elapsed_ms = Date.now() - started;
    client.close();
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((err) => {
  process.stderr.write(`retry check failed: ${err.stack ?? err}\n`);
  process.exit(1);
});
