"""How a point runs: worker processes and the runner (isolation, faults, resume)."""
