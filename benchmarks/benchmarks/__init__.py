"""fastbp's asv benchmark suite (run from ``benchmarks/``; see ``benchmarks/README.md``)."""
