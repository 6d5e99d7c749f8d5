"""rnnkit: train, evaluate and sample character-level RNN language models (d2l §9.5/§9.6, for real)."""

__version__ = "0.1.0"

from rnnkit.errors import RnnkitError  # noqa: E402
from rnnkit.generate import Sampling, generate, predict  # noqa: E402
from rnnkit.models import RNNLM, Recurrent, RNNScratch, build_model  # noqa: E402
from rnnkit.text import Vocab, build_corpus, load_corpus_text  # noqa: E402
from rnnkit.train import TrainConfig, Trainer  # noqa: E402

__all__ = [
    "RNNLM", "Recurrent", "RNNScratch", "RnnkitError", "Sampling", "TrainConfig", "Trainer", "Vocab",
    "__version__", "build_corpus", "build_model", "generate", "load_corpus_text", "predict",
]
