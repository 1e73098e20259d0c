"""The embedded default's world: a generated support domain, general skills and simulated
users whose feedback follows answer quality; `kaizen demo` and the benchmarks drive it."""
