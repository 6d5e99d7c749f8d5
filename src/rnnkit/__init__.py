"""rnnkit: train, evaluate and sample character-level RNN language models (d2l §9.5/§9.6, for real).

The names below are imported on first use, so that ``import rnnkit`` (and ``rnnkit --help``)
does not load torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "RnnkitError": "rnnkit.errors",
    "Sampling": "rnnkit.generate", "generate": "rnnkit.generate", "predict": "rnnkit.generate",
    "RNNLM": "rnnkit.models", "Recurrent": "rnnkit.models", "RNNScratch": "rnnkit.models",
    "build_model": "rnnkit.models",
    "Vocab": "rnnkit.text", "build_corpus": "rnnkit.text", "load_corpus_text": "rnnkit.text",
    "TrainConfig": "rnnkit.train", "Trainer": "rnnkit.train",
}
__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")
