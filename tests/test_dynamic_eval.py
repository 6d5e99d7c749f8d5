"""Dynamic evaluation (``rnnkit eval --dynamic``): a copy of the model learns from the text it has
already scored; the static score stays as it was, and the dynamic one is reported beside it."""

import json

import pytest
import torch

from rnnkit.cli import main
from rnnkit.errors import RnnkitError
from rnnkit.evaluate import dynamic_nll, stream_nll
from rnnkit.models import build_model


def _model(kind: str = "lstm") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(kind, 5, 16)


@pytest.mark.parametrize("kind", ["lstm", "rnn", "scratch"])
def test_first_segment_is_scored_before_any_update_and_the_model_is_left_alone(kind):
    model = _model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 5, (65,), generator=torch.Generator().manual_seed(1))
    static, count = stream_nll(model, tokens)
    dynamic, dynamic_count = dynamic_nll(model, tokens, lr=0.5, segment=64)  # one segment: no update before it
    assert dynamic_count == count == 64
    assert dynamic == pytest.approx(static, rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_model_that_learns_as_it_reads_scores_a_repetitive_text_lower():
    model = _model()
    tokens = torch.tensor([0, 1, 2, 3, 4] * 200)
    static, count = stream_nll(model, tokens)
    dynamic, dynamic_count = dynamic_nll(model, tokens, lr=0.01, segment=20)
    assert dynamic_count == count == 999
    assert dynamic / count < 0.5 * static / count  # untrained: ~ln 5 = 1.61 nats; it learns the cycle


def test_later_text_does_not_change_the_score_of_earlier_segments():
    model = _model()
    tokens = torch.randint(0, 5, (201,), generator=torch.Generator().manual_seed(2))
    other = tokens.clone()
    other[121:] = (other[121:] + 1) % 5  # changed after the second 60-token segment's targets
    head = dynamic_nll(model, tokens[:121], lr=0.01, segment=60)
    assert dynamic_nll(model, other[:121], lr=0.01, segment=60) == head
    assert dynamic_nll(model, tokens, lr=0.01, segment=60) != dynamic_nll(model, other, lr=0.01, segment=60)


@pytest.mark.parametrize("lr", [0.0, -1.0, float("nan"), float("inf")])
def test_a_learning_rate_that_is_not_positive_is_refused(lr):
    with pytest.raises(RnnkitError, match="learning rate must be a positive number"):
        dynamic_nll(_model(), torch.arange(10) % 5, lr=lr)


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
    assert dynamic["lr"] == 1e-3 and dynamic["segment"] == 64 and 0 < dynamic["bpc"] < 8
    assert main(["eval", str(run), "--dynamic", "0.01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "dynamic evaluation" not in lines[0] and f"bits/char {static['bpc']:.4f}" in lines[0]
    assert "dynamic evaluation" in lines[1] and "RMSprop 0.01 every 64 tokens" in lines[1]
    assert main(["eval", str(run), "--dynamic", "nan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learning rate must be a positive number, got nan" in err[0]
