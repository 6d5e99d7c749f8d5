"""rnnkit: train, evaluate and sample character-level RNN language models (d2l §9.5/§9.6, for real).

Start with :func:`train` (``rnnkit.train(corpus="my.txt", time_budget="3m", out="runs/mine")``)
and :class:`Run` (``rnnkit.Run.load("runs/mine").generate("ROMEO:")``): the command line calls the
same. The names below are imported on first use, so that ``import rnnkit`` (and ``rnnkit --help``)
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
    "TrainConfig": "rnnkit.config", "RunOptions": "rnnkit.config", "Trainer": "rnnkit.training",
    "Callback": "rnnkit.training", "Run": "rnnkit.run", "resume": "rnnkit.run", "RunStopped": "rnnkit.run",
    "Evaluation": "rnnkit.evaluate", "evaluate_text": "rnnkit.evaluate", "Tokenizer": "rnnkit.tokens",
    "tokenizer_for": "rnnkit.tokens",
}
__all__ = [*sorted(_EXPORTS), "train", "__version__"]


def __getattr__(name: str):
    if name == "train":  # the module rnnkit.train, which is also the function that trains a run
        return importlib.import_module("rnnkit.train")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")
