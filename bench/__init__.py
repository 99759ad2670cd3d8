"""Benchmarks; each script documents itself and has a section in bench/README.md."""
