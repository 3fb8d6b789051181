"""Offline training job for the StreamRec CNN encoder (needs torch; never imported by embedder/)."""
