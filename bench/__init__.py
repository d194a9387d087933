"""Benchmarks (issue 7): each script is one command and measures a baseline in the same run.

    .venv/bin/python -m bench.transitions [--servers 2000] [--write-docs]
    .venv/bin/python -m bench.fleet_scale [--servers 10000] [--write-docs]
    .venv/bin/python -m bench.api [--write-docs]
    .venv/bin/python -m bench.enqueue [--servers 10000] [--write-docs]

`--tiny` runs a few seconds (the test suite's smoke test); `--write-docs` updates the script's section of
docs/BENCHMARKS.md. Each run creates its own `patchaas_bench_*` PostgreSQL database and drops it at the end.
"""
