"""DriftSched benchmark suite: ``python -m benchmarks.run [--quick]`` writes docs/BENCHMARKS.md."""
