"""Developer and operator tooling: process launcher, demo, benchmarks (not service code)."""
