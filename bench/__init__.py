"""The recbench harness: suites, workloads, meters, runner, results, plots, gate."""
