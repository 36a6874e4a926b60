"""GenRec in JAX: blocks.py, model.py, losses.py, engine.py
(mirroring recmodels/torch/ module by module)."""
