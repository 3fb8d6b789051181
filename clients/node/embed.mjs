// Embed texts through a running server from the shell, like `streamrec-embedder embed` does in-process:
//   node embed.mjs [--address HOST:PORT] "a text" "another"     # JSON lines: {"text", "embedding"}
// Plaintext; for TLS or an API key use connect()'s options (embedder_client.mjs, docs/clients.md).

import { connect, decodeEmbeddings } from "./embedder_client.mjs";

const args = process.argv.slice(2);
let address = "127.0.0.1:50051";
if (args[0] === "--address") {
  address = args[1];
  args.splice(0, 2);
}
if (args.length === 0) {
  process.stderr.write("usage: node embed.mjs [--address HOST:PORT] TEXT...\n");
  process.exit(2);
}
const client = connect(address);
try {
  const resp = await client.embed({ texts: args });
  decodeEmbeddings(resp).forEach((row, i) => {
    process.stdout.write(`${JSON.stringify({ text: args[i], embedding: Array.from(row) })}\n`);
  });
} catch (err) {
  process.stderr.write(`${address}: ${err.details ?? err.message}\n`);
  process.exitCode = 1;
} finally {
  client.close();
}
