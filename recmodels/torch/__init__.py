"""GenRec in PyTorch: blocks.py, model.py, losses.py, engine.py (mirroring recmodels/jax/
module by module); hostmem.py (glibc's malloc for CPU steps) is torch's only."""
