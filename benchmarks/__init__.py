"""streamrec-bench: throughput and quality benchmarks over the real serving stack."""
