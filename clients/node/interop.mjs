// Interop check: node interop.mjs HOST:PORT < request.json > result.json
//
// request.json: {"texts": [...], "stream": [[...texts of message 1], [...message 2], ...]}
// Calls health (overall and the Embedder service), GetModelInfo, Embed in every encoding, EmbedStream
// with one message per entry of "stream", and one bad request; prints what came back as JSON, vectors
// decoded to numbers. tests/integration/test_node_client.py compares them with Python's.

import { readFileSync } from "node:fs";

import { SERVICE_NAME, connect, decodeEmbeddings } from "./embedder_client.mjs";

const ENCODINGS = ["ENCODING_FLOAT32", "ENCODING_FLOAT16", "ENCODING_INT8"];

const rows = (resp) => decodeEmbeddings(resp).map((row) => Array.from(row));

async function main(address) {
  const input = JSON.parse(readFileSync(0, "utf8"));
  const client = connect(address);
  try {
    const out = { health: {}, embed: {}, stream: [] };
    for (const service of ["", SERVICE_NAME]) out.health[service] = await client.health(service);
    const info = await client.getModelInfo();
    out.model = { name: info.name, dim: info.dim, encodings: info.encodings };
    for (const encoding of ENCODINGS) {
      const resp = await client.embed({ texts: input.texts, encoding, request_id: `node-${encoding}` });
      out.embed[encoding] = {
        request_id: resp.request_id,
        encoding: resp.encoding,
        token_counts: resp.token_counts,
        rows: rows(resp),
      };
    }
    const requests = input.stream.map((texts, i) => ({ texts, request_id: `node-stream-${i}` }));
    for (const resp of await client.embedStream(requests)) {
      out.stream.push({ request_id: resp.request_id, error: resp.error, rows: rows(resp) });
    }
    try {
      await client.embed({ texts: [] });
      out.empty_request = "OK";
    } catch (err) {
      out.empty_request = { code: err.code, details: err.details };
    }
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    client.close();
  }
}

if (process.argv.length !== 3) {
  process.stderr.write("usage: node interop.mjs HOST:PORT < request.json\n");
  process.exit(2);
}
main(process.argv[2]).catch((err) => {
  process.stderr.write(`interop failed: ${err.stack ?? err}\n`);
  process.exit(1);
});
