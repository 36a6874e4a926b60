"""Reference generative recommenders (a GPT over item IDs) in PyTorch and JAX.

Nothing in this package knows about benchmarking; the harness lives in ``bench``.
"""

__version__ = "0.1.0"
