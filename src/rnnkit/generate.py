"""Text generation: d2l's greedy ``predict`` plus sampling (temperature, top-k, top-p, p^alpha).

Like d2l's ``predict``, the model first reads the prefix (warm-up), then emits one token at a
time, feeding each back in. :func:`generate` streams the new tokens; :func:`predict` returns
``prefix + num_preds`` tokens as one string.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple, dataclass

import torch

from rnnkit.errors import RnnkitError
from rnnkit.models import RNNLM, State, evaluating
from rnnkit.text import Vocab, tokenize
from rnnkit.tokens import tokenizer_for

MIN_SCALE = 1e-3  # temperature and alpha are kept in [1e-3, 1e3]: beyond, sampling is greedy or uniform anyway
StepFn = Callable[[Sequence[int], State], tuple[torch.Tensor, State]]


@dataclass
class Sampling:
    """How the next token is chosen from the model's logits.

    ``greedy`` takes the argmax (d2l). Otherwise sample from ``q ∝ p^(alpha / temperature)``
    (``alpha > 1`` sharpens, the §9.5 exercise), keeping only the ``top_k`` most likely tokens
    (0 = all) and the smallest set whose probability reaches ``top_p`` (1 = all).
    """

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    alpha: float = 1.0

    def validate(self) -> None:
        for name in ("temperature", "alpha"):  # 1e-310 would turn every logit into +-inf
            value = getattr(self, name)
            if not (MIN_SCALE <= value <= 1 / MIN_SCALE):
                raise RnnkitError(f"{name} must be between {MIN_SCALE:g} and {1 / MIN_SCALE:g}, got {value}")
        if self.top_k < 0:
            raise RnnkitError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise RnnkitError(f"top_p must be in (0, 1], got {self.top_p}")

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution that :meth:`choose` samples from: (V,) for logits (V,), or one row per
        row of logits (B, V)."""
        logits = logits.double() * (self.alpha / self.temperature)
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, dim=-1)
        if not torch.isfinite(probs).all():
            raise RnnkitError(
                "the model's output is not a probability distribution (NaN or infinite values: "
                "its weights are not finite, or --temperature/--alpha are extreme)"
            )
        if self.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, -1) - sorted_probs  # mass of strictly more likely tokens
            drop = torch.zeros_like(before, dtype=torch.bool).scatter_(-1, order, before >= self.top_p)
            probs = probs.masked_fill(drop, 0)
            probs /= probs.sum(-1, keepdim=True)
        return probs

    def choose(self, logits: torch.Tensor, generator: torch.Generator | None) -> int:
        """The next token from logits (V,)."""
        if self.greedy:
            if torch.isnan(logits).any():
                raise RnnkitError("the model's output is NaN (its weights are not finite)")
            return int(logits.argmax())
        return int(torch.multinomial(self.probabilities(logits).cpu(), 1, generator=generator))

    def choose_rows(self, logits: torch.Tensor) -> list[int]:
        """One next token per row of logits (B, V), drawn in one call from the global generator
        (for many streams at once; :meth:`choose` with a generator of its own reproduces a stream)."""
        if self.greedy:
            if torch.isnan(logits).any():
                raise RnnkitError("the model's output is NaN (its weights are not finite)")
            return logits.argmax(-1).tolist()
        return torch.multinomial(self.probabilities(logits).cpu(), 1).view(-1).tolist()

    def key(self) -> tuple:
        """The settings as a tuple: streams with equal keys can be sampled together."""
        return astuple(self)


def check_seed(seed: int | None) -> None:
    """Seeds are integers in [0, 2^63) (what ``torch.Generator.manual_seed`` takes without overflow)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 63):
        raise RnnkitError(f"seed must be an integer between 0 and 2^63 - 1, got {seed!r}")


def encode_prefix(vocab: Vocab, prefix: Sequence[str]) -> list[int]:
    """Token indices of a prefix (its characters, or a list of tokens). Unknown tokens: ``<unk>``
    with a warning if the vocabulary has it, otherwise an error naming them."""
    unknown = vocab.unknown(prefix)
    if unknown:
        shown = " ".join(repr(t) for t in unknown)
        if vocab.unk_token is None:
            raise RnnkitError(f"prefix has characters the model's vocabulary lacks: {shown}")
        warnings.warn(f"prefix tokens not in the vocabulary, read as {vocab.unk_token}: {shown}", stacklevel=3)
    return [vocab[t] for t in prefix]


def generate_steps(
    step: StepFn,
    prefix_ids: Sequence[int],
    num_preds: int,
    initial_logits: torch.Tensor,
    sampling: Sampling,
    seed: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``num_preds`` pairs (token index, the logits (V,) it was chosen from).
    ``step(ids, state) -> (logits of the last id (V,), state)``; ``initial_logits`` are used when
    the prefix is empty (a fresh state)."""
    sampling.validate()
    check_seed(seed)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    state: State = None
    logits = initial_logits
    if prefix_ids:
        logits, state = step(prefix_ids, state)
    for i in range(num_preds):
        token = sampling.choose(logits, generator)
        yield token, logits
        if i + 1 < num_preds:  # the step after the last token would feed nothing
            logits, state = step([token], state)


def generate_ids(
    step: StepFn,
    prefix_ids: Sequence[int],
    num_preds: int,
    initial_logits: torch.Tensor,
    sampling: Sampling,
    seed: int | None = None,
) -> Iterator[int]:
    """:func:`generate_steps` without the logits."""
    for token, _ in generate_steps(step, prefix_ids, num_preds, initial_logits, sampling, seed):
        yield token


def model_step(
    forward: Callable[[torch.Tensor, State], tuple[torch.Tensor, State]], device: torch.device | str | None
) -> StepFn:
    """The step function of a model whose ``forward(X (1, T) int64, state)`` returns
    ``(logits (T, 1, V), state)`` (an :class:`RNNLM`; the d2l layer adapts the book's models)."""

    def step(ids: Sequence[int], state: State) -> tuple[torch.Tensor, State]:
        X = torch.tensor([list(ids)], dtype=torch.int64, device=device)
        logits, state = forward(X, state)
        return logits[-1, 0], state

    return step


def generate(
    model: RNNLM,
    vocab: Vocab,
    prefix: str,
    num_preds: int,
    sampling: Sampling | None = None,
    seed: int | None = None,
    token: str = "char",
) -> Iterator[str]:
    """Stream ``num_preds`` new tokens after ``prefix`` (greedy unless ``sampling`` says otherwise);
    ``token``: how the prefix is cut into tokens, ``char`` or ``word`` (as the model was trained)."""
    if num_preds < 0:
        raise RnnkitError(f"number of tokens to generate must be >= 0, got {num_preds}")
    sampling = sampling or Sampling(greedy=True)
    prefix_ids = encode_prefix(vocab, tokenize(prefix, token))
    with evaluating(model):
        step = model.lean_step() or model_step(model, next(model.parameters()).device)
        for token in generate_ids(step, prefix_ids, num_preds, model.initial_logits(), sampling, seed):
            yield vocab.idx_to_token[token]


def predict(
    model: RNNLM,
    vocab: Vocab,
    prefix: str,
    num_preds: int,
    sampling: Sampling | None = None,
    seed: int | None = None,
    token: str = "char",
) -> str:
    """d2l's ``predict``: the prefix followed by ``num_preds`` generated characters (or words,
    joined with spaces)."""
    new = list(generate(model, vocab, prefix, num_preds, sampling, seed, token))
    return join_tokens(prefix, new, token)


def join_tokens(prefix: str, tokens: Sequence[str], token: str = "char") -> str:
    """Text of ``prefix`` followed by generated ``tokens`` (:meth:`rnnkit.tokens.Tokenizer.join`)."""
    return tokenizer_for(token).join(prefix, tokens)
