"""rnnkit: train, evaluate and sample character-level RNN language models (d2l §9.5/§9.6, for real).

Start with :func:`train` (``rnnkit.train(corpus="my.txt", time_budget="3m", out="runs/mine")``)
and :class:`Run` (``rnnkit.Run.load("runs/mine").generate("ROMEO:")``): the command line calls the
same. The names below are imported on first use, so that ``import rnnkit`` (and ``rnnkit --help``)
does not load torch.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "RnnkitError": "rnnkit.errors",
    "Sampling": "rnnkit.generate",
    "predict": "rnnkit.generate",
    "RNNLM": "rnnkit.models",
    "Recurrent": "rnnkit.models",
    "RNNScratch": "rnnkit.models",
    "build_model": "rnnkit.models",
    "Vocab": "rnnkit.text",
    "build_corpus": "rnnkit.text",
    "load_corpus_text": "rnnkit.text",
    "TrainConfig": "rnnkit.config",
    "RunOptions": "rnnkit.config",
    "Trainer": "rnnkit.training",
    "Callback": "rnnkit.training",
    "Run": "rnnkit.run",
    "resume": "rnnkit.run",
    "RunStopped": "rnnkit.run",
    "Evaluation": "rnnkit.evaluate",
    "evaluate_text": "rnnkit.evaluate",
    "Tokenizer": "rnnkit.tokens",
    "tokenizer_for": "rnnkit.tokens",
}
__all__ = [*sorted(_EXPORTS), "train", "__version__"]

if TYPE_CHECKING:  # the same names for type checkers and the API reference (mkdocstrings)
    from rnnkit.config import RunOptions as RunOptions
    from rnnkit.config import TrainConfig as TrainConfig
    from rnnkit.errors import RnnkitError as RnnkitError
    from rnnkit.evaluate import Evaluation as Evaluation
    from rnnkit.evaluate import evaluate_text as evaluate_text
    from rnnkit.generate import Sampling as Sampling
    from rnnkit.generate import predict as predict
    from rnnkit.models import RNNLM as RNNLM
    from rnnkit.models import Recurrent as Recurrent
    from rnnkit.models import RNNScratch as RNNScratch
    from rnnkit.models import build_model as build_model
    from rnnkit.run import Run as Run
    from rnnkit.run import RunStopped as RunStopped
    from rnnkit.run import resume as resume
    from rnnkit.run import train as train
    from rnnkit.text import Vocab as Vocab
    from rnnkit.text import build_corpus as build_corpus
    from rnnkit.text import load_corpus_text as load_corpus_text
    from rnnkit.tokens import Tokenizer as Tokenizer
    from rnnkit.tokens import tokenizer_for as tokenizer_for
    from rnnkit.training import Callback as Callback
    from rnnkit.training import Trainer as Trainer


def __getattr__(name: str):
    if name == "train":  # the module rnnkit.train, which is also the function that trains a run
        return importlib.import_module("rnnkit.train")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")
