"""Dynamic evaluation (``rnnkit eval --dynamic``): a copy of the model learns from the text it has
already scored; the static score stays as it was, and the dynamic one is reported beside it."""

import copy
import json

import pytest
import torch

from rnnkit.cli import main
from rnnkit.errors import RnnkitError
from rnnkit.evaluate import DYNAMIC_DECAY, DynamicScore, Evaluation, dynamic_nll, dynamic_segment_nlls, stream_nll
from rnnkit.models import build_model, detach_state

MODELS = {  # name: build_model's arguments (vocabulary 5, 16 units)
    "lstm": dict(kind="lstm"),
    "gru": dict(kind="gru"),
    "rnn": dict(kind="rnn"),
    "scratch": dict(kind="scratch"),
    "2-layer lstm, dropout, weight drop, embedding": dict(
        kind="lstm", layers=2, dropout=0.3, io_dropout=0.2, weight_drop=0.3, embedding=8
    ),
}


def _model(kind: str = "lstm", **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(kind, 5, 16, **options)


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(seed))


def _score_then_step(model, tokens, lr: float, segment: int) -> list[float]:
    """The rule written out the long way: each segment scored by its own forward pass without
    gradients, then a second forward pass from the same state for the copy's step."""
    learner = copy.deepcopy(model).eval()
    optimizer = torch.optim.Adam(learner.parameters(), lr, betas=(0.0, DYNAMIC_DECAY))
    scores, state = [], None
    for start in range(0, len(tokens) - 1, segment):
        piece = tokens[start : start + segment + 1].unsqueeze(0)
        with torch.no_grad():
            scored, after = learner.loss(piece[:, :-1], piece[:, 1:], state, reduction="sum")
        scores.append(scored.double().item())
        loss, _ = learner.loss(piece[:, :-1], piece[:, 1:], state, reduction="sum")
        optimizer.zero_grad()
        (loss / (piece.shape[1] - 1)).backward()
        optimizer.step()
        state = detach_state(after)
    return scores


@pytest.mark.parametrize("name", MODELS)
def test_each_segment_is_scored_before_the_copy_learns_from_it_and_the_model_is_left_alone(name):
    model = _model(**MODELS[name]).train()  # in training mode: dynamic evaluation must not drop out
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = _tokens(193, 1)
    static, count = stream_nll(model, tokens[:65])
    segments = list(dynamic_segment_nlls(model, tokens, lr=0.05, segment=64))
    assert [n for _, n in segments] == [64, 64, 64]
    assert segments[0][0] == pytest.approx(static, rel=1e-5)  # nothing learned before the first segment
    assert [s for s, _ in segments] == pytest.approx(_score_then_step(model, tokens, 0.05, 64), rel=1e-4)
    assert segments[2][0] != pytest.approx(stream_nll(model, tokens)[0] - stream_nll(model, tokens[:129])[0], rel=1e-5)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_model_that_learns_as_it_reads_scores_a_repetitive_text_lower_even_under_no_grad():
    model = _model()
    tokens = torch.tensor([0, 1, 2, 3, 4] * 200)
    static, count = stream_nll(model, tokens)
    with torch.no_grad():  # the copy's steps need gradients whatever the caller's mode
        dynamic, dynamic_count = dynamic_nll(model, tokens, lr=0.01, segment=20)
    assert dynamic_count == count == 999
    assert dynamic / count < 0.5 * static / count  # untrained: ~ln 5 = 1.61 nats; it learns the cycle


def test_later_text_does_not_change_the_score_of_earlier_segments():
    model = _model()
    tokens = _tokens(201, 2)
    other = tokens.clone()
    other[121:] = (other[121:] + 1) % 5  # changed after the second 60-token segment's targets
    ours, theirs = (list(dynamic_segment_nlls(model, t, lr=0.01, segment=60)) for t in (tokens, other))
    assert ours[:2] == theirs[:2] and ours[2] != theirs[2]


@pytest.mark.parametrize("lr", [0.0, -1.0, 1.5, float("nan"), float("inf")])
def test_a_learning_rate_outside_zero_to_one_is_refused(lr):
    with pytest.raises(RnnkitError, match="learning rate must be above 0 and at most 1"):
        dynamic_nll(_model(), torch.arange(10) % 5, lr=lr)


@pytest.mark.parametrize("segment", [0, -3, 2.5])
def test_a_segment_that_is_not_a_positive_whole_number_is_refused(segment):
    with pytest.raises(RnnkitError, match="segment must be a whole number of tokens >= 1"):
        dynamic_nll(_model(), torch.arange(10) % 5, segment=segment)


def test_a_step_that_breaks_the_model_is_said_not_reported_as_a_score(monkeypatch):
    def ruinous_step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.data.fill_(float("nan"))

    monkeypatch.setattr(torch.optim.Adam, "step", ruinous_step)
    with pytest.raises(RnnkitError, match="diverged after 20 tokens at learning rate 0.5"):
        dynamic_nll(_model(), _tokens(100, 3), lr=0.5, segment=20)


def test_a_word_models_dynamic_line_has_the_static_lines_units():
    dynamic_score = DynamicScore(1600.0, 1e-3, 64)
    evaluation = Evaluation("w.txt", 2000.0, 400, 2000, "word", spans_characters=True, dynamic=dynamic_score)
    static, dynamic = evaluation.describe().splitlines()
    assert "bits/word 7.2135" in static and "bits/char 1.4427" in static  # 2000 nats: 400 words, 2000 chars
    assert "per word  bits/word 5.7708  bits/char 1.1542" in dynamic
    assert evaluation.to_dict()["dynamic"]["bits_per_word"] == pytest.approx(1600 / 400 / 0.6931471805599453)


def test_eval_dynamic_reports_both_scores_apart(tmp_path, capsys, tm_text):
    corpus = tmp_path / "text.txt"
    corpus.write_text(tm_text[:6000], encoding="utf-8")
    run = tmp_path / "run"
    train = ["train", "--corpus", str(corpus), "--hidden", "32", "--batch-size", "16", "--num-steps", "16"]
    assert main([*train, "--max-steps", "30", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    static = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run), "--json", "--dynamic"]) == 0
    both = json.loads(capsys.readouterr().out)
    dynamic = both.pop("dynamic")
    assert both == static  # the static figures are untouched by asking for the dynamic ones
    assert dynamic["lr"] == 1e-3 and dynamic["segment"] == 64
    assert abs(dynamic["bpc"] - static["bpc"]) < 0.1  # 1e-3 adapts an undertrained model a little, not wildly
    assert main(["eval", str(run), "--dynamic", "0.01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "dynamic evaluation" not in lines[0] and f"bits/char {static['bpc']:.4f}" in lines[0]
    assert "dynamic evaluation" in lines[1] and "an RMSprop-like step of 0.01 every 64 tokens" in lines[1]
    assert main(["eval", str(run), "--dynamic", "nan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learning rate must be above 0 and at most 1, got nan" in err[0]
    with pytest.raises(SystemExit) as exit_info:  # the run directory taken for the rate: argparse's usage line, then
        main(["eval", "--dynamic", str(run)])
    assert exit_info.value.code == 2 and "give it after the run directory" in capsys.readouterr().err.splitlines()[-1]
