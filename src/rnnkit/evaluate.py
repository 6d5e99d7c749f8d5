"""Scoring text with a language model: summed negative log-likelihood, perplexity, bits per token.

Everything that turns a model and tokens into numbers lives here, and everything that reports a
score (``rnnkit eval``, training's validations, ``serve``'s ``/score``, :mod:`rnnkit.d2l`) calls
it, so they agree to the last digit:

- :func:`stream_nll` reads a text as one stream (or a few lanes side by side), carrying the state,
  so every token after the first is predicted once, from all the text before it;
- :func:`window_nll` scores independent windows from a fresh state (d2l's validation);
- :func:`dynamic_nll` scores a stream while a copy of the model keeps learning from what it has
  read (dynamic evaluation, Krause et al. 2018), a separate figure from the static one;
- :func:`perplexity` and :func:`bits_per_token` turn (summed nats, count) into the reported figures;
- :func:`evaluate_text` is ``rnnkit eval``: a text, read as the run read its training text.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from rnnkit.data import WindowBatches
from rnnkit.errors import RnnkitError
from rnnkit.models import RNNLM, State, detach_state, evaluating, join_states, split_state, state_batch_dim
from rnnkit.text import Vocab, preprocess
from rnnkit.tokens import tokenizer_for

EVAL_BATCH_TOKENS = 1 << 18  # evaluation needs no gradients: fewer, larger batches are faster
STREAM_WARMUP = 4096  # tokens each validation lane reads before its part (see stream_nll, validation_lanes)
VALIDATION_LANES = 8  # held-out text read as this many lanes side by side, at most
DYNAMIC_LR = 1e-3  # dynamic evaluation's step on each segment's mean loss (rnnkit eval --dynamic)
DYNAMIC_SEGMENT = 64  # tokens scored between two of dynamic evaluation's updates
DYNAMIC_DECAY = 0.99  # decay of dynamic evaluation's running mean of squared gradients


def window_nll(model: RNNLM, batches: WindowBatches) -> tuple[float, int]:
    """Summed NLL (nats) and token count over every window, each from a fresh state (d2l's validation)."""
    total, count = 0.0, 0
    with evaluating(model):
        for X, Y in batches:
            total += model.loss(X, Y, reduction="sum")[0].double().item()
            count += Y.numel()
    return total, count


def stream_nll(
    model: RNNLM, tokens: torch.Tensor, chunk: int = 1024, lanes: int = 1, warmup: int = STREAM_WARMUP
) -> tuple[float, int]:
    """Summed NLL (nats) and count over a token stream (N,), carrying the state across chunks so
    that every token after the first is predicted once, from all the text before it. ``tokens`` may
    be a memory-mapped file's tokens: they are read ``chunk`` at a time.

    With ``lanes`` > 1 the text is cut into that many consecutive parts read side by side as one
    batch (one token at a time keeps a CPU waiting: Tiny Shakespeare's 111k held-out characters
    took a 2x256 LSTM 4.5 s in one lane, 1.5 s in 32). Each part after the first first reads the
    ``warmup`` tokens before it, unscored, so every token is still predicted once, from at least
    ``warmup`` tokens of text before it (all of it where ``warmup`` covers the text: then the result
    equals one lane's up to float rounding). Used by training's validations; ``rnnkit eval`` reads
    the text as one lane."""
    targets = len(tokens) - 1
    length = targets // max(lanes, 1)
    with evaluating(model):
        if lanes <= 1 or length < 1:
            total, count, _ = _carried_nll(model, tokens, [0], targets, None, chunk)
            return total, count
        starts = [lane * length for lane in range(lanes)]
        dim = state_batch_dim(model)
        warm = min(warmup, starts[1])
        state = None
        if warm:  # lanes 1.. read the text before them; lane 0 starts the text with a fresh state
            _, warmed = model.hidden(torch.stack([tokens[s - warm : s] for s in starts[1:]]))
            row = split_state(warmed, dim)[0]
            fresh = tuple(map(torch.zeros_like, row)) if isinstance(row, tuple) else torch.zeros_like(row)
            state = join_states([fresh, warmed], dim)
        total, count, state = _carried_nll(model, tokens, starts, length, state, chunk)
        if targets > lanes * length:  # the last lane goes on to the end of the text
            last = split_state(state, dim)[-1]
            more, counted, _ = _carried_nll(model, tokens, [lanes * length], targets - lanes * length, last, chunk)
            total, count = total + more, count + counted
    return total, count


def check_dynamic_lr(lr: float | None) -> None:
    """Refuse a dynamic-evaluation rate outside (0, 1] (None: not asked for), before any scoring
    starts. The step moves each weight by about the rate (:func:`dynamic_segment_nlls`), so a rate
    above 1 moves every weight by more than 1 per segment: no longer evaluation."""
    if lr is not None and not (isinstance(lr, (int, float)) and 0 < lr <= 1):  # NaN fails both
        raise RnnkitError(f"the dynamic evaluation learning rate must be above 0 and at most 1, got {lr}")


def dynamic_segment_nlls(
    model: RNNLM, tokens: torch.Tensor, lr: float = DYNAMIC_LR, segment: int = DYNAMIC_SEGMENT
) -> Iterator[tuple[float, int]]:
    """Dynamic evaluation (Krause et al., 2018), one ``(summed nats, count)`` per ``segment``-token
    piece of a token stream (N,): the pieces are read in order with the state carried, and after a
    piece has been scored a copy of the model takes one step on that piece's mean loss, so each
    token is predicted by a model that has learned from all the text before it (never from itself
    or what follows). ``model`` is left as it was; the copy runs in evaluation mode (no dropout,
    no weight drop), one lane, on the model's device. ``tokens`` may be memory-mapped tokens: a
    piece is sliced as it is read.

    The step is RMSprop-like: Adam without momentum (beta1 0, squared-gradient decay
    :data:`DYNAMIC_DECAY`, bias-corrected), a rate per weight, since the trained weights'
    gradients differ in scale by orders of magnitude (``docs/guides/evaluation.md`` has the rates
    tried). Unlike Krause et al. there is no pull back toward the trained weights. A step that makes
    the loss of a model that scored finitely infinite or NaN raises :class:`RnnkitError` (the rate is
    too large)."""
    check_dynamic_lr(lr)
    if not (isinstance(segment, int) and segment >= 1):
        raise RnnkitError(f"the dynamic evaluation segment must be a whole number of tokens >= 1, got {segment}")
    learner = copy.deepcopy(model).eval()
    device = next(learner.parameters()).device
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr, betas=(0.0, DYNAMIC_DECAY))
    targets, state, finite_so_far = len(tokens) - 1, None, True
    # gradients even under a caller's no_grad; cuDNN's RNNs refuse backward in evaluation mode
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        for start in range(0, targets, segment):
            piece = torch.as_tensor(tokens[start : min(start + segment, targets) + 1]).to(device).unsqueeze(0)
            loss, state = learner.loss(piece[:, :-1], piece[:, 1:], state, reduction="sum")
            nll, steps = loss.double().item(), piece.shape[1] - 1
            if start and finite_so_far and not math.isfinite(nll):  # the steps broke a model that scored
                raise RnnkitError(
                    f"dynamic evaluation diverged after {start} tokens at learning rate {lr:g} "
                    "(the loss became infinite or NaN): use a smaller rate"
                )
            finite_so_far &= math.isfinite(nll)
            yield nll, steps
            if start + segment >= targets:
                break  # nothing left to predict: the last step would be thrown away
            optimizer.zero_grad(set_to_none=True)
            (loss / steps).backward()
            optimizer.step()
            state = detach_state(state)


def dynamic_nll(
    model: RNNLM, tokens: torch.Tensor, lr: float = DYNAMIC_LR, segment: int = DYNAMIC_SEGMENT
) -> tuple[float, int]:
    """Summed NLL (nats) and count over a token stream (N,) with dynamic evaluation
    (:func:`dynamic_segment_nlls`' pieces added up).

    A model adapting to the text it reads scores lower than the same model frozen: report this
    figure beside :func:`stream_nll`'s, never in its place."""
    total, count = 0.0, 0
    for nll, steps in dynamic_segment_nlls(model, tokens, lr, segment):
        total, count = total + nll, count + steps
    return total, count


def validation_lanes(tokens: int) -> int:
    """How many lanes training's validations read a held-out text of ``tokens`` in: up to
    :data:`VALIDATION_LANES`, each at least twice :data:`STREAM_WARMUP` long. Lanes keep a CPU busy
    (one token at a time keeps it waiting); the long warmup keeps what they measure what ``rnnkit
    eval``'s one stream measures, since a carried state remembers far back (the runs behind both
    numbers: ``docs/design/sizing.md``, "Validation lanes")."""
    return max(1, min(VALIDATION_LANES, tokens // (2 * STREAM_WARMUP)))


def _carried_nll(
    model: RNNLM, tokens: torch.Tensor, starts: list[int], length: int, state: State, chunk: int
) -> tuple[float, int, State]:
    """Summed NLL and count of lanes side by side: lane i predicts ``tokens[s_i + 1 : s_i + length + 1]``
    from the tokens before them, ``chunk`` steps at a time with the state carried; and the state
    after the last step."""
    total, count = 0.0, 0
    for offset in range(0, length, chunk):
        steps = min(chunk, length - offset)
        piece = torch.stack([tokens[s + offset : s + offset + steps + 1] for s in starts])
        loss, state = model.loss(piece[:, :-1], piece[:, 1:], state, reduction="sum")
        total += loss.double().item()
        count += piece[:, 1:].numel()
    return total, count, state


def safe_exp(x: float) -> float:
    """exp(x), ``inf`` where it overflows (a diverged loss) instead of raising OverflowError."""
    return math.inf if x >= 709.0 else math.exp(x)  # NaN stays NaN


def perplexity(nll: float, count: int) -> float:
    """exp(mean token cross-entropy); ``inf`` where that overflows, NaN for no tokens."""
    return safe_exp(nll / count) if count else float("nan")


def bits_per_token(nll: float, count: int) -> float:
    """Mean cross-entropy in bits (bits per character for character models)."""
    return nll / count / math.log(2) if count else float("nan")


def characters_predicted(tokens: Sequence[str], kind: str = "char") -> int:
    """Characters of the text that the predicted tokens (all but the first) stand for
    (:meth:`rnnkit.tokens.Tokenizer.characters_predicted`)."""
    return tokenizer_for(kind).characters_predicted(tokens)


@dataclass
class DynamicScore:
    """The same tokens scored with dynamic evaluation (:func:`dynamic_nll`): ``nll`` summed nats,
    at rate ``lr`` on ``segment``-token pieces. Kept apart from the static score it sits beside."""

    nll: float
    lr: float
    segment: int


@dataclass
class Evaluation:
    """A model's score on a text: ``nll`` summed nats over ``tokens`` predicted tokens, which stand
    for ``characters`` characters of the text (bits per character are over those)."""

    corpus: str
    nll: float
    tokens: int
    characters: int
    unit: str = "char"  # what a token is: char, word or byte
    spans_characters: bool = False  # a token stands for several characters (words): both rates reported
    skipped: int = 0  # tokens left out: characters a vocabulary without <unk> lacks
    unknown: list[str] = field(default_factory=list)  # distinct tokens the vocabulary lacks
    unknown_tokens: int = 0  # predicted tokens read as <unk>
    from_text: bool = True  # False: token ids scored as they are (a prepared corpus), nothing to report unknown
    note: str = field(default="", repr=False)  # which checkpoint was scored (rnnkit.Run.evaluate), for display
    dynamic: DynamicScore | None = None  # the same tokens under dynamic evaluation, where asked for

    @property
    def ppl(self) -> float:
        return perplexity(self.nll, self.tokens)

    @property
    def bpc(self) -> float:
        """Bits per character of the text (per byte for byte tokens)."""
        return bits_per_token(self.nll, self.characters)

    @property
    def bits_per_token(self) -> float:
        return bits_per_token(self.nll, self.tokens)

    def to_dict(self) -> dict:
        """``rnnkit eval --json``'s object."""
        result = {"ppl": self.ppl, "bpc": self.bpc, "tokens": self.tokens, "corpus": self.corpus}
        if self.dynamic is not None:
            dynamic = self.dynamic
            result["dynamic"] = {**self._figures(dynamic.nll), "lr": dynamic.lr, "segment": dynamic.segment}
        if not self.from_text:
            return result
        result["skipped"] = self.skipped
        if self.spans_characters:
            result.update(
                {
                    "bits_per_word": self.bits_per_token,
                    "chars": self.characters,
                    "unknown_words": self.unknown_tokens,
                    "unknown_word_types": len(self.unknown),
                }
            )
        else:
            result["unknown_chars"] = "".join(self.unknown)
        return result

    def _figures(self, nll: float) -> dict:
        """``nll`` summed nats over these tokens as perplexity (per token) and bits per character, and
        bits per word for word tokens: the keys ``rnnkit eval --json`` reports."""
        figures = {"ppl": perplexity(nll, self.tokens), "bpc": bits_per_token(nll, self.characters)}
        if self.spans_characters:
            figures["bits_per_word"] = bits_per_token(nll, self.tokens)
        return figures

    def _rates(self, nll: float) -> str:
        """``nll`` summed nats over these tokens as the line's rates: perplexity and bits per
        character (per word and per character for word tokens; per ``unit`` for token ids)."""
        figures = self._figures(nll)
        if not self.from_text:
            return f"perplexity {figures['ppl']:.4f}  bits/{self.unit} {figures['bpc']:.4f}"
        if self.spans_characters:
            return (
                f"perplexity {figures['ppl']:.4f} per word  bits/word {figures['bits_per_word']:.4f}  "
                f"bits/char {figures['bpc']:.4f}"
            )
        return f"perplexity {figures['ppl']:.4f}  bits/char {figures['bpc']:.4f}"

    def describe(self) -> str:
        """``rnnkit eval``'s line: perplexity, bits per character (and per word), tokens, and what the
        vocabulary lacked; and a second line with the dynamic evaluation's figures where there is one."""
        if self.dynamic is None:
            return self._describe_static()
        dynamic = self.dynamic
        return (
            f"{self._describe_static()}\n{self.corpus}, dynamic evaluation (a copy of the model learning as "
            f"it reads: an RMSprop-like step of {dynamic.lr:g} every {dynamic.segment} tokens): "
            f"{self._rates(dynamic.nll)}"
        )

    def _describe_static(self) -> str:
        """The static score's line (the model as trained)."""
        rates = self._rates(self.nll)
        if not self.from_text:
            return f"{self.corpus}: {rates}  tokens {self.tokens}"
        if self.spans_characters:
            return (
                f"{self.corpus}: {rates} (of the {self.characters} characters those words span)  words "
                f"{self.tokens}  ({self.unknown_tokens} of them, {len(self.unknown)} word types, read as <unk>: "
                "their spelling is not scored)"
            )
        note = ""
        if self.unknown:
            how = f"{self.skipped} skipped" if self.skipped else "read as <unk>"
            note = f"  ({len(self.unknown)} character types not in the vocabulary, {how})"
        return f"{self.corpus}: {rates}  tokens {self.tokens}{note}"


def evaluate_tokens(
    model: RNNLM, ids: torch.Tensor, corpus: str, unit: str = "char", dynamic_lr: float | None = None
) -> Evaluation:
    """Score a token stream (N,) as one stream: a prepared corpus's held-out tokens, say; with
    ``dynamic_lr``, also with dynamic evaluation at that rate (:func:`dynamic_nll`)."""
    check_dynamic_lr(dynamic_lr)
    if len(ids) < 2:
        raise RnnkitError(f"{corpus}: fewer than 2 tokens; nothing to evaluate")
    nll, count = stream_nll(model, ids)
    return Evaluation(corpus, nll, count, count, unit, from_text=False, dynamic=score_dynamic(model, ids, dynamic_lr))


def score_dynamic(model: RNNLM, ids: torch.Tensor, lr: float | None) -> DynamicScore | None:
    """``ids`` (a tensor, or memory-mapped tokens: sliced a segment at a time) scored with dynamic
    evaluation at ``lr`` on :data:`DYNAMIC_SEGMENT`-token pieces; None where ``lr`` is None (not
    asked for)."""
    if lr is None:
        return None
    return DynamicScore(dynamic_nll(model, ids, lr, DYNAMIC_SEGMENT)[0], lr, DYNAMIC_SEGMENT)


def evaluate_text(
    model: RNNLM,
    vocab: Vocab,
    text: str,
    corpus: str,
    preprocessing: str = "raw",
    kind: str = "char",
    dynamic_lr: float | None = None,
) -> Evaluation:
    """Score ``text`` as one stream, read as the run read its training text (``preprocessing`` and
    token ``kind``). Tokens the vocabulary lacks are read as ``<unk>`` where it has one, otherwise
    left out and counted in ``skipped``. With ``dynamic_lr``, the same tokens are also scored with
    dynamic evaluation at that rate (:func:`dynamic_nll`), reported apart."""
    check_dynamic_lr(dynamic_lr)
    tokenizer = tokenizer_for(kind)
    tokens = tokenizer.split(preprocess(text, preprocessing))
    unknown = vocab.unknown(tokens)
    skipped = 0
    if unknown and vocab.unk_token is None:
        known = [t for t in tokens if t in vocab.token_to_idx]
        skipped, tokens = len(tokens) - len(known), known
    if len(tokens) < 2:
        raise RnnkitError(f"{corpus}: fewer than 2 tokens the model knows; nothing to evaluate")
    ids = torch.tensor(vocab[tokens], dtype=torch.int64)
    nll, count = stream_nll(model, ids)
    unknown_set = set(unknown)
    return Evaluation(
        str(corpus),
        nll,
        count,
        tokenizer.characters_predicted(tokens),
        tokenizer.unit,
        tokenizer.spans_characters,
        skipped,
        unknown,
        sum(t in unknown_set for t in tokens[1:]),
        dynamic=score_dynamic(model, ids, dynamic_lr),
    )
