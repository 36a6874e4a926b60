"""GenRec in PyTorch: blocks.py, model.py, losses.py, engine.py
(mirroring recmodels/jax/ module by module)."""
