"""The gRPC front end: protobuf <-> core translation, the one error -> status map, auth, drain, the server.

`embedder.grpc.encoding` (the wire codec) is also what the client imports; nothing here imports the client.
"""
