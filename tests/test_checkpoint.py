import json

import pytest
import torch

from rnnkit.checkpoint import checkpoint_path, load_run, save_run
from rnnkit.errors import RnnkitError
from rnnkit.models import build_model
from rnnkit.text import Vocab
from rnnkit.train import TrainConfig


@pytest.fixture()
def run(tmp_path):
    vocab = Vocab(list("hello world"), unk_token=None)
    config = TrainConfig(model="lstm", hidden=6, layers=2, embedding=3)
    model = build_model("lstm", len(vocab), 6, layers=2, embedding=3)
    save_run(tmp_path / "run", model, vocab, config, epoch=4)
    return tmp_path / "run", model, vocab, config


def test_round_trip(run):
    path, model, vocab, config = run
    loaded, vocab2, config2, meta = load_run(path)
    assert config2 == config and vocab2.idx_to_token == vocab.idx_to_token and vocab2.unk_token is None
    assert meta["epoch"] == 4 and meta["format_version"] == 2
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_truncated_weights(run):
    path = checkpoint_path(run[0])
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(RnnkitError, match="truncated or corrupt"):
        load_run(run[0])


def test_pickle_renamed_to_safetensors(run):
    torch.save(run[1].state_dict(), checkpoint_path(run[0]))
    with pytest.raises(RnnkitError, match="never unpickles"):
        load_run(run[0])


def test_config_edited_to_other_hidden_size(run):
    path = run[0] / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["hidden"] = 7
    path.write_text(json.dumps(meta))
    with pytest.raises(RnnkitError, match="do not match"):
        load_run(run[0])


def test_newer_format_and_foreign_config(run):
    path = run[0] / "config.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(RnnkitError, match="newer"):
        load_run(run[0])
    path.write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(RnnkitError, match="not an rnnkit"):
        load_run(run[0])


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RnnkitError, match="not a run directory"):
        load_run(tmp_path)


def test_safetensors_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    from safetensors.torch import save

    from rnnkit.checkpoint import read_tensors

    for pad in range(300):  # find metadata whose header length has 0x80 as its low byte
        data = save({"w": torch.arange(4.0)}, metadata={"pad": "x" * pad})
        if data[0] == 0x80:
            break
    else:
        pytest.fail("no header of that length")
    (tmp_path / "w.safetensors").write_bytes(data)
    tensors, meta = read_tensors(tmp_path / "w.safetensors")
    assert torch.equal(tensors["w"], torch.arange(4.0)) and meta["pad"] == "x" * pad


def test_loaded_tensors_are_owned_and_aligned(run):
    from rnnkit.checkpoint import read_tensors

    tensors, _ = read_tensors(checkpoint_path(run[0]))
    for t in tensors.values():
        assert t.data_ptr() % 64 == 0  # not views into the file's bytes
        t.add_(1)  # writable


def test_commit_files_commits_then_removes_the_previous_checkpoint(tmp_path):
    from rnnkit.checkpoint import commit_files

    run = tmp_path / "run"
    commit_files(run, {"state-1-0123456789ab.safetensors": b"one"}, b'{"n": 1}\n', {"metrics.jsonl": b"1\n"})
    (run / ".config.json.killed.tmp").write_bytes(b"a killed write")
    commit_files(run, {"state-2-0123456789ab.safetensors": b"two"}, b'{"n": 2}\n')
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl", "state-2-0123456789ab.safetensors"]
    assert (run / "config.json").read_bytes() == b'{"n": 2}\n' and (run / "metrics.jsonl").read_bytes() == b"1\n"


def test_commit_files_turns_an_os_error_into_one_line(tmp_path):
    from rnnkit.checkpoint import commit_files

    (tmp_path / "afile").write_text("x")
    expected = "^cannot save checkpoint in .*afile/run: .*; the previous checkpoint, if any, is unchanged$"
    with pytest.raises(RnnkitError, match=expected):
        commit_files(tmp_path / "afile" / "run", {}, b"{}")
    with pytest.raises(RnnkitError, match="^could not: "):
        commit_files(tmp_path / "afile" / "run", {}, b"{}", failure="could not: {reason}")
