"""The paper's experiments, their reproduction and the benchmarks: consumers of the library."""
