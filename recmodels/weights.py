"""Weights as safetensors: one file loads into both frameworks.

Tensors are stored under the torch state_dict keys (which are also the JAX params keys),
in torch's [out, in] layout, as fp32; the model config travels in the file's metadata so a
file can be loaded without knowing how it was made. safetensors holds only raw arrays and
a JSON header, so loading an untrusted file cannot execute code (unlike pickle).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from recmodels.config import GenRecConfig
from recmodels.errors import InputError

CONFIG_KEY = "recbench.config"


def save(tensors: dict[str, np.ndarray], cfg: GenRecConfig, path: str | Path) -> Path:
    """Write fp32 tensors and the config to `path` (written to a temp file, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    try:
        save_file(arrays, str(tmp), metadata={CONFIG_KEY: json.dumps(dataclasses.asdict(cfg))})
        tmp.replace(path)
    except (OSError, SafetensorError) as e:  # a missing directory, no permission, a full disk
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {e}; check that its directory exists and is "
                         "writable") from None
    return path


def load(path: str | Path) -> tuple[dict[str, np.ndarray], GenRecConfig | None]:
    """Read tensors and, when the file carries one, the config it was saved with."""
    path = Path(path)
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(header_len)).get("__metadata__", {})
    except (OSError, SafetensorError, ValueError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    if CONFIG_KEY not in meta:
        return tensors, None
    try:
        fields = json.loads(meta[CONFIG_KEY])
        cfg = GenRecConfig(**fields)
    except InputError as e:
        raise InputError(f"{path}: the config saved in this file is invalid ({e})") from None
    except (TypeError, ValueError) as e:  # not JSON, not an object, or unknown fields
        raise InputError(f"{path}: the config saved in this file is unreadable ({e}); "
                         "was it written by another recbench version?") from None
    return tensors, cfg
