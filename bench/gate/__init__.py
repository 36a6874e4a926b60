"""Statistics, comparison of result files, the regression gate, the pytest-benchmark front door."""
