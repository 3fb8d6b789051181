"""The core: bundle, tokenizer, sessions, the batch queue and its scheduler, the engine, post-processing.

It speaks numpy and typed errors (`embedder.errors`), never protobuf or HTTP: a front end (`embedder.grpc`)
translates its wire format to calls on `EmbeddingEngine` and maps the errors to its status codes.
"""
