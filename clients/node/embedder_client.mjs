// A small Node.js client for streamrec.embedder.v1, on @grpc/grpc-js + @grpc/proto-loader (no codegen:
// the .proto is loaded at run time from the repository's protos/ directory).
//
//   import { connect, decodeEmbeddings } from "./embedder_client.mjs";
//   const client = connect("127.0.0.1:50051");  // or ["emb-1:50051", "emb-2:50051"]: round-robin + retries
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

/** Promise wrapper around one unary call that must end by `deadline` (a Date). */
function unary(client, method, request, metadata, deadline) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

// The retry policy of the Python client (embedder/client.py), with its defaults. Retried: UNAVAILABLE,
// RESOURCE_EXHAUSTED, and CANCELLED, which this client never causes itself (its own deadline ends a
// call as DEADLINE_EXCEEDED), so it comes from a server that stopped mid-call; Embed, GetModelInfo and
// Explain are idempotent. Anything else is thrown at once.
export const RETRYABLE = Object.freeze([
  grpc.status.UNAVAILABLE,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.CANCELLED,
]);
// As ClientOptions' timeout_s, max_attempts, backoff_initial_s and backoff_max_s (here in ms).
export const CALL_DEFAULTS = Object.freeze({
  deadlineMs: 30_000,
  maxAttempts: 5,
  backoffInitialMs: 50,
  backoffMaxMs: 2_000,
});

/** Full jitter: uniform in [0, min(max, initial * 2**attempt)] ms; `attempt` counts from 0. */
export function backoffMs(attempt, { backoffInitialMs, backoffMaxMs } = CALL_DEFAULTS) {
  return Math.random() * Math.min(backoffMaxMs, backoffInitialMs * 2 ** attempt);
}

/** Whether a failed attempt is tried again: a retryable code, attempts left, and the pause ends before
 * the call's own deadline (a retry is never started after it). */
export function shouldRetry(err, attempt, pauseMs, deadline, { maxAttempts } = CALL_DEFAULTS) {
  const inTime = Date.now() + pauseMs < deadline.getTime();
  return RETRYABLE.includes(err?.code) && attempt + 1 < maxAttempts && inTime;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** One call with retries, all within one deadline; attempt i goes to address (first + i) of the list. */
async function withRetries(stubs, first, method, request, metadata, policy) {
  const deadline = new Date(Date.now() + policy.deadlineMs);
  for (let attempt = 0; ; attempt += 1) {
    const at = (first + attempt) % stubs.length;
    try {
      return await unary(stubs[at].stub, method, request, metadata(), deadline);
    } catch (err) {
      const pauseMs = backoffMs(attempt, policy);
      if (policy.closed() || !shouldRetry(err, attempt, pauseMs, deadline, policy)) throw err;
      policy.onRetry?.({ method, attempt, code: err.code, address: stubs[at].address, pauseMs });
      await sleep(pauseMs);
    }
  }
}

/**
 * An Embedder client over one address or several (`connect(["emb-1:50051", "emb-2:50051"])`): calls
 * start at the next address in turn and each retry goes to the next one. `apiKey` (if the server wants
 * one) goes in `authorization: Bearer <key>`. `deadlineMs` bounds each call, its retries included.
 * embed, getModelInfo and explain retry as the Python client does (RETRYABLE above; `maxAttempts`,
 * `backoffInitialMs`, `backoffMaxMs`; `onRetry({method, attempt, code, address, pauseMs})` is told
 * of each retry); health and embedStream are not retried. `cache: false` sends every Embed/EmbedStream
 * request with `cache: false` (bypass the server's embedding cache) unless the request sets `cache`
 * itself. Methods return promises; embedStream(requests) sends all requests to the first address and
 * resolves to the responses in request order (each carries its request_id); health asks the first
 * address.
 */
export function connect(addresses, options = {}) {
  const { apiKey = "", tls = {}, cache = true, onRetry } = options;
  const {
    deadlineMs = CALL_DEFAULTS.deadlineMs,
    maxAttempts = CALL_DEFAULTS.maxAttempts,
    backoffInitialMs = CALL_DEFAULTS.backoffInitialMs,
    backoffMaxMs = CALL_DEFAULTS.backoffMaxMs,
  } = options;
  const list = [addresses].flat();
  if (list.length === 0) throw new Error("at least one server address is needed");
  const api = loadApi();
  const creds = credentials(tls);
  const stubs = list.map((address) => ({ address, stub: new api.Embedder(address, creds) }));
  const health = new (grpc.makeClientConstructor(healthService, "Health"))(list[0], creds);
  const metadata = () => {
    const md = new grpc.Metadata();
    if (apiKey) md.set("authorization", `Bearer ${apiKey}`);
    return md;
  };
  let closed = false;
  let next = 0;
  const policy = { deadlineMs, maxAttempts, backoffInitialMs, backoffMaxMs, onRetry, closed: () => closed };
  const call = (method, request) => {
    const first = next++ % stubs.length;
    return withRetries(stubs, first, method, request, metadata, policy);
  };
  const withCache = (request) => ({ cache, ...request });
  const deadline = () => new Date(Date.now() + deadlineMs);
  return {
    embed: (request) => call("Embed", withCache(request)),
    getModelInfo: (request = {}) => call("GetModelInfo", request),
    explain: (request) => call("Explain", request),
    health: async (service = "") => (await unary(health, "check", { service }, metadata(), deadline())).status,
    embedStream: (requests) => embedStream(stubs[0].stub, requests.map(withCache), metadata(), deadlineMs),
    close: () => {
      closed = true;
      for (const { stub } of stubs) stub.close();
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
