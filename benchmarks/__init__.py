"""The benchmark harness behind ``make bench`` (docs/performance.md): not tests, not shipped."""
