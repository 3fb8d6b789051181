"""Explain: which tokens make two texts similar (attribution math, its ONNX runtime, terminal/HTML views).

Built on the core (bundle, tokenizer, sessions); the core never imports it. docs/explain.md.
"""
