"""Benchmarks run by ``avi bench``: time to a converged ELBO, throughput, memory.

Every timed figure is a warm call (the compiled program is built by an identical untimed run
first); compilation is reported separately. Results go to ``benchmarks/RESULTS.md`` and
``benchmarks/results.json`` with the machine and package versions.
"""
