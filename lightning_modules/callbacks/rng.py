"""The random-number state a training run consumes, so a resumed run draws what it would have.

The main process draws from torch's (CPU and CUDA), NumPy's and Python's global generators
(dropout, RAZN's zoom sampling). DataLoader workers draw nothing that depends on their own
streams: augmentation seeds travel with the sample indices (`EpochSampler(tag_seeds=True)`),
and the loaders draw their worker base seeds from their own generators, not torch's global one.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {  # plain types: checkpoints load with torch.load(weights_only=True)
        "torch": torch.get_rng_state(),
        "numpy": [str(name), keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
