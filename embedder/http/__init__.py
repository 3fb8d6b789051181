"""The HTTP front: an OpenAI-compatible `POST /v1/embeddings` (and `GET /v1/models`, liveness and
readiness) on the same engine, limits, API keys and metrics as the gRPC front (docs/http.md)."""
