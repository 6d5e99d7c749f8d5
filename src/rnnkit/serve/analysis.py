"""What the API computes about a text: per-token surprisal (``/api/score``) and hidden states
(``/api/activations``).

Rules: a text is read as the run read its training text (:meth:`ServedRun.encode`); the totals of
:func:`score` are computed by :func:`rnnkit.evaluate.stream_nll`, as ``rnnkit eval`` computes them,
so the two agree to the last digit. Numbers are rounded for short JSON (probabilities to 6
decimals, states to 4): the page shows them, nothing computes on. Each function returns the JSON
object its route answers, described by :mod:`rnnkit.serve.schemas`.
"""

import math

import torch

from rnnkit.errors import RnnkitError
from rnnkit.evaluate import bits_per_token, perplexity, stream_nll
from rnnkit.models import layer_states
from rnnkit.serve.runs import ServedRun

TOP = 5  # alternatives reported per character


def alternatives(idx_to_token: list[str], probs: list[float], ids: list[int]) -> list[list]:
    """``[[token, probability], ...]`` of a row of top-k probabilities and their token ids."""
    return [[idx_to_token[i], round(p, 6)] for p, i in zip(probs, ids, strict=True)]


def score(run: ServedRun, text: str) -> dict:
    """Per character: log-probability (nats), surprisal (bits), rank and top alternatives given all
    the text before it; totals equal to ``rnnkit eval`` on the same text (the first character has
    no prediction)."""
    text, token_list, ids, unknown = run.encode(text, "text")
    if len(ids) < 2:
        raise RnnkitError("text must have at least 2 characters to score")
    tokens = torch.tensor(ids, dtype=torch.int64)
    nll, count = stream_nll(run.model, tokens)  # the totals exactly as rnnkit eval computes them
    with torch.inference_mode():
        logits, _ = run.model(tokens[:-1].view(1, -1))
        logp = torch.log_softmax(logits[:, 0].double(), dim=-1)  # (T-1, V): prediction of token t+1
    chosen = logp.gather(1, tokens[1:].view(-1, 1)).squeeze(1)
    ranks = (logp > chosen.unsqueeze(1)).sum(1) + 1
    top_p, top_i = torch.topk(logp.exp(), min(TOP, logp.shape[1]), dim=1)
    pieces = run.pieces(token_list)
    chars = [{"char": pieces[0], "logp": None, "bits": None, "rank": None, "top": None}]
    for piece, lp, rank, tp, ti in zip(
        pieces[1:], chosen.tolist(), ranks.tolist(), top_p.tolist(), top_i.tolist(), strict=True
    ):
        chars.append(
            {
                "char": piece,
                "logp": round(lp, 6),
                "bits": round(-lp / math.log(2), 6),
                "rank": rank,
                "top": alternatives(run.vocab.idx_to_token, tp, ti),
            }
        )
    bpc = bits_per_token(nll, run.tokenizer.characters_predicted(token_list))  # as rnnkit eval
    return {
        "run": run.name,
        "text": text,
        "unknown": unknown,
        "ppl": perplexity(nll, count),
        "bpc": bpc,
        "tokens": count,
        "nll": nll,
        "chars": chars,
    }


def rounded(values: torch.Tensor, decimals: int = 4) -> list:
    """Nested lists of ``values`` rounded in double precision (short JSON numbers)."""
    return values.double().round(decimals=decimals).tolist()


def activations(run: ServedRun, text: str, layer: int | None) -> dict:
    """The hidden state (and an LSTM's cell state) of one layer after each character, ``[T x units]``,
    and per unit summary statistics for ranking units."""
    text, token_list, ids, unknown = run.encode(text, "text")
    if not ids:
        raise RnnkitError("text is empty")
    layers = run.config.layers if run.config.model != "scratch" else 1
    layer = layers - 1 if layer is None else layer
    if not 0 <= layer < layers:
        raise RnnkitError(f"layer must be between 0 and {layers - 1} for run {run.name!r}, got {layer}")
    h, c = layer_states(run.model, torch.tensor(ids, dtype=torch.int64))[layer]
    tanh = run.config.activation == "tanh"
    return {
        "run": run.name,
        "text": text,
        "unknown": unknown,
        "layer": layer,
        "layers": layers,
        "units": h.shape[1],
        "chars": run.pieces(token_list),
        "saturation": "|h| > 0.9" if tanh else "h = 0",
        "h": rounded(h),
        "c": None if c is None else rounded(c),
        "stats": unit_stats(h, (h.abs() > 0.9) if tanh else (h == 0)),
    }


def unit_stats(h: torch.Tensor, saturated: torch.Tensor) -> list[dict]:
    """Per unit of ``h`` (T, units): mean, standard deviation, min, max and the fraction of steps
    where ``saturated`` (T, units) holds (near tanh's bounds; a ReLU unit at 0)."""
    columns = (
        h.mean(0).tolist(),
        h.std(0, unbiased=False).tolist(),
        h.min(0).values.tolist(),
        h.max(0).values.tolist(),
        saturated.double().mean(0).tolist(),
    )
    return [
        {
            "unit": i,
            "mean": round(m, 5),
            "std": round(s, 5),
            "min": round(lo, 5),
            "max": round(hi, 5),
            "saturated": round(f, 5),
        }
        for i, (m, s, lo, hi, f) in enumerate(zip(*columns, strict=True))
    ]
