"""StreamRec embedder: the online serving package (torch-free)."""

__version__ = "0.1.0"
