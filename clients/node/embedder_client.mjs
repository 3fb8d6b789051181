// A small Node.js client for streamrec.embedder.v1, on @grpc/grpc-js + @grpc/proto-loader (no codegen:
// the .proto is loaded at run time from the repository's protos/ directory).
//
//   import { connect, decodeEmbeddings } from "./embedder_client.mjs";
//   const client = connect("127.0.0.1:50051");
//   const resp = await client.embed({ texts: ["a text"] });
//   const rows = decodeEmbeddings(resp);  // Float32Array per text
//
// Embeddings arrive packed little-endian (docs/api.md): FLOAT32 (default), FLOAT16, or INT8 with one
// scale per row. decodeEmbeddings turns all three into Float32Array rows.

import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { service as healthService } from "grpc-health-check";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const PROTO_ROOT = path.resolve(HERE, "..", "..", "protos", "streamrec");
export const PROTO_FILE = "embedder/v1/embedder.proto";
export const SERVICE_NAME = "streamrec.embedder.v1.Embedder";

const LOADER_OPTIONS = {
  keepCase: true, // field names as in the .proto (request_id, token_counts)
  longs: Number, // uint64 counters (total_tokens, timing) fit in a double
  enums: String, // "ENCODING_FLOAT32"
  defaults: true,
  includeDirs: [PROTO_ROOT],
};

/** The generated-at-run-time package object: `.streamrec.embedder.v1.Embedder` etc. */
export function loadApi() {
  const definition = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
  return grpc.loadPackageDefinition(definition).streamrec.embedder.v1;
}

/** Credentials: plaintext, or TLS with a CA bundle (PEM Buffers) and optionally a client cert for mTLS. */
export function credentials({ ca, key, cert } = {}) {
  return ca ? grpc.credentials.createSsl(ca, key ?? null, cert ?? null) : grpc.credentials.createInsecure();
}

/** Promise wrapper around a unary call; `deadlineMs` bounds the call. */
function unary(client, method, request, metadata, deadlineMs) {
  const deadline = new Date(Date.now() + deadlineMs);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

/**
 * An Embedder client. `apiKey` (if the server wants one) goes in `authorization: Bearer <key>`.
 * `cache: false` sends every Embed/EmbedStream request with `cache: false` (bypass the server's
 * embedding cache) unless the request sets `cache` itself. Methods return promises;
 * embedStream(requests) sends all requests and resolves to the responses in request order (each
 * carries its request_id).
 */
export function connect(address, { apiKey = "", deadlineMs = 30_000, tls = {}, cache = true } = {}) {
  const api = loadApi();
  const creds = credentials(tls);
  const stub = new api.Embedder(address, creds);
  const health = new (grpc.makeClientConstructor(healthService, "Health"))(address, creds);
  const metadata = () => {
    const md = new grpc.Metadata();
    if (apiKey) md.set("authorization", `Bearer ${apiKey}`);
    return md;
  };
  const withCache = (request) => ({ cache, ...request });
  return {
    embed: (request) => unary(stub, "Embed", withCache(request), metadata(), deadlineMs),
    getModelInfo: () => unary(stub, "GetModelInfo", {}, metadata(), deadlineMs),
    explain: (request) => unary(stub, "Explain", request, metadata(), deadlineMs),
    health: async (service = "") => (await unary(health, "check", { service }, metadata(), deadlineMs)).status,
    embedStream: (requests) => embedStream(stub, requests.map(withCache), metadata(), deadlineMs),
    close: () => {
      stub.close();
      health.close();
    },
  };
}

function embedStream(stub, requests, metadata, deadlineMs) {
  const call = stub.EmbedStream(metadata, { deadline: new Date(Date.now() + deadlineMs) });
  const responses = [];
  const done = new Promise((resolve, reject) => {
    call.on("data", (resp) => responses.push(resp));
    call.on("error", reject);
    call.on("end", () => resolve(responses));
  });
  for (const request of requests) call.write(request);
  call.end();
  return done;
}

/** float16 (IEEE half) bits -> number. */
function halfToNumber(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/** An EmbedResponse's packed `embeddings` as one Float32Array per text (count rows of dim values). */
export function decodeEmbeddings(resp) {
  const { count, dim, encoding } = resp;
  const bytes = resp.embeddings;
  const width = { ENCODING_FLOAT32: 4, ENCODING_FLOAT16: 2, ENCODING_INT8: 1 }[encoding];
  if (width === undefined) throw new Error(`unknown encoding ${encoding}`);
  if (bytes.length !== count * dim * width) {
    throw new Error(`embeddings: ${bytes.length} bytes for ${count} x ${dim} ${encoding}`);
  }
  const rows = [];
  for (let r = 0; r < count; r += 1) {
    const row = new Float32Array(dim);
    for (let c = 0; c < dim; c += 1) {
      const at = (r * dim + c) * width;
      if (width === 4) row[c] = bytes.readFloatLE(at);
      else if (width === 2) row[c] = halfToNumber(bytes.readUInt16LE(at));
      else row[c] = bytes.readInt8(at) * resp.scales[r];
    }
    rows.push(row);
  }
  return rows;
}
