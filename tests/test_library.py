"""The library and the command line are one: every option declared once, and the same options give the
same run through ``rnnkit train`` and through ``rnnkit.train(...)``, bit for bit."""

import json
from dataclasses import fields

import pytest
from safetensors.torch import load_file

import rnnkit
from rnnkit.checkpoint import checkpoint_files, read_config
from rnnkit.cli import build_parser, main
from rnnkit.config import GROUPS, RESUMABLE, SIZING, RunOptions, TrainConfig, option_fields
from rnnkit.text import preprocess

TINY = dict(hidden=16, batch_size=32, num_steps=16, num_train=256, num_val=64, epochs=3, sample_every=0)


def flags(options: dict) -> list[str]:
    """``rnnkit train``'s arguments for Python keyword options (each option's flag, from its field)."""
    by_name = {f.name: f for f in option_fields()}
    args = []
    for name, value in options.items():
        flag = by_name[name].metadata["flag"] or f"--{name.replace('_', '-')}"
        if value is True:
            args.append(flag)
        elif isinstance(value, list):
            args += [part for item in value for part in (flag, item)]
        else:
            args += [flag, str(value)]
    return args


def test_every_option_has_its_flag_in_its_group_and_every_flag_its_option(capsys):
    parser = build_parser()
    dests = {action.dest for action in parser.train_parser._actions} - {"help", "resume"}
    assert dests == {f.name for f in option_fields()}
    for f in option_fields():
        assert f.metadata["help"] and f.metadata["group"] in GROUPS, f.name
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    for group in GROUPS:
        assert f"\n{group} options:\n" in help_text
    assert "--weight-drop P" in help_text.split("model options:")[1].split("optimisation options:")[0]


def test_the_rules_come_from_the_fields():
    assert {"epochs", "max_steps", "device", "cuda_graphs", "save_every", "quiet", "sample_prefixes"} <= RESUMABLE
    assert not {"corpus", "hidden", "lr", "out", "force", "seed"} & RESUMABLE
    assert {"model", "hidden", "layers", "lr", "batch_size", "ema", "weight_drop", "schedule"} <= SIZING
    assert not {"corpus", "seed", "epochs", "time_budget", "device"} & SIZING
    assert {f.name for f in fields(RunOptions)}.isdisjoint(SIZING)
    for f in fields(TrainConfig):
        if f.metadata["choices"]:
            with pytest.raises(rnnkit.RnnkitError, match=f.name):
                TrainConfig(**{f.name: "no-such-choice"}).validate()


def run_files(run_dir):
    """What must be equal between two runs: config.json but the checkpoint's id, every tensor of
    every checkpoint file, the state's JSON skeleton, metrics.jsonl and evals.jsonl."""
    meta = read_config(run_dir)
    files = checkpoint_files(meta)
    tensors = {kind: load_file(str(run_dir / name)) for kind, name in files.items()}
    from safetensors import safe_open

    skeleton = None
    if "state" in files:
        with safe_open(str(run_dir / files["state"]), "pt") as f:
            skeleton = f.metadata()["state"]
    meta = {k: v for k, v in meta.items() if k not in ("checkpoint", "files")}
    logs = {
        name: (run_dir / name).read_text() for name in ("metrics.jsonl", "evals.jsonl") if (run_dir / name).exists()
    }
    return meta, tensors, skeleton, logs


def assert_same_run(a, b):
    meta_a, tensors_a, skeleton_a, logs_a = run_files(a)
    meta_b, tensors_b, skeleton_b, logs_b = run_files(b)
    assert meta_a == meta_b
    assert skeleton_a == skeleton_b and logs_a == logs_b
    assert tensors_a.keys() == tensors_b.keys()
    for kind in tensors_a:
        assert tensors_a[kind].keys() == tensors_b[kind].keys()
        for name, tensor in tensors_a[kind].items():
            assert tensor.numpy().tobytes() == tensors_b[kind][name].numpy().tobytes(), (kind, name)


def train_both_ways(tmp_path, fixed_clock, options: dict):
    fixed_clock()
    assert main(["train", *flags(options), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    fixed_clock()
    run = rnnkit.train(**options, out=str(tmp_path / "python"), quiet=True)
    assert isinstance(run, rnnkit.Run) and run.directory == tmp_path / "python"
    assert_same_run(tmp_path / "cli", tmp_path / "python")
    return run


PARITY_CASES = {
    "the book's default": dict(TINY),
    "gru with dropout": dict(TINY, model="gru", layers=2, dropout=0.2, optimizer="adam", lr=0.01),
    "sequential split": dict(
        TINY,
        split="sequential",
        model="lstm",
        preprocess="raw",
        eval_every=5,
        schedule="cosine",
        warmup=0.1,
        ema=0.9,
        sample_prefixes=["the ", "a"],
    ),
}


@pytest.mark.parametrize("case", PARITY_CASES)
def test_the_cli_and_python_train_the_same_run(tmp_path, fixed_clock, tm_text, case):
    corpus = tmp_path / "book.txt"
    corpus.write_text(tm_text[:30_000])
    train_both_ways(tmp_path, fixed_clock, {"corpus": str(corpus), **PARITY_CASES[case]})


def test_a_prepared_corpus_trains_the_same_run_both_ways(tmp_path, fixed_clock, tm_text):
    (tmp_path / "book.txt").write_text(tm_text[:30_000])
    assert main(["prepare", str(tmp_path / "book.txt"), "--out", str(tmp_path / "data")]) == 0
    train_both_ways(tmp_path, fixed_clock, dict(TINY, data=str(tmp_path / "data"), max_steps=12))


def test_a_resumed_run_is_the_same_both_ways(tmp_path, fixed_clock, tm_text):
    (tmp_path / "book.txt").write_text(tm_text[:30_000])
    options = dict(TINY, corpus=str(tmp_path / "book.txt"), epochs=2)
    train_both_ways(tmp_path, fixed_clock, options)
    fixed_clock()
    assert main(["train", "--resume", str(tmp_path / "cli"), "--epochs", "4", "--quiet"]) == 0
    fixed_clock()
    rnnkit.Run.load(tmp_path / "python").resume(epochs=4, quiet=True)
    assert_same_run(tmp_path / "cli", tmp_path / "python")
    assert read_config(tmp_path / "python")["epoch"] == 4


def test_a_budget_run_sizes_and_trains_the_same_both_ways(tmp_path, fixed_clock, capsys):
    corpus = tmp_path / "own.txt"
    corpus.write_text("It was a bright cold day in April, and the clocks were striking thirteen.\n" * 60)
    run = train_both_ways(tmp_path, fixed_clock, dict(corpus=str(corpus), time_budget="20s"))
    config = run.config
    assert config.model == "lstm" and config.preprocess == "raw" and config.split == "sequential"
    assert config.time_budget == 20.0 and "time budget of 20 s spent" in read_config(run.directory)["finished"]
    fixed_clock()  # the speeds given instead of measured: the same decision
    given = rnnkit.train(
        corpus=str(corpus),
        time_budget=20,
        out=str(tmp_path / "given"),
        quiet=True,
        speeds={128: 40_000, 256: 12_000, 384: 5_000, 512: 2_000},
    )
    assert_same_run(tmp_path / "cli", given.directory)


def test_generate_and_evaluate_say_what_the_commands_print(tmp_path, fixed_clock, tm_text, capsys):
    (tmp_path / "book.txt").write_text(tm_text[:30_000])
    run = train_both_ways(tmp_path, fixed_clock, dict(TINY, corpus=str(tmp_path / "book.txt")))
    capsys.readouterr()
    assert (
        main(
            ["generate", str(run.directory), "--prefix", "the time", "-n", "40", "--temperature", "0.8", "--seed", "3"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert run.generate("the time", n=40, temperature=0.8, seed=3) + "\n" == printed
    assert main(["eval", str(run.directory), "--json"]) == 0
    evaluation = run.evaluate()
    assert json.loads(capsys.readouterr().out) == evaluation.to_dict()
    assert evaluation.tokens == len(preprocess(tm_text[:30_000])) - 1 and 1 < evaluation.bpc < 5


def test_python_options_are_checked_like_flags(tmp_path):
    with pytest.raises(rnnkit.RnnkitError, match="unknown option.*hiddn"):
        rnnkit.train(hiddn=16, out=str(tmp_path / "x"))
    with pytest.raises(rnnkit.RnnkitError, match="not a duration"):
        rnnkit.train(time_budget="soon", out=str(tmp_path / "x"))
    with pytest.raises(rnnkit.RnnkitError, match="hidden must be of type int"):
        rnnkit.train(hidden="16", out=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_tensorboard_logs_what_the_run_records(tmp_path, tm_text):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "book.txt").write_text(tm_text[:30_000])
    assert (
        main(
            [
                "train",
                *flags(dict(TINY, corpus=str(tmp_path / "book.txt"), eval_every=4)),
                "--out",
                str(tmp_path / "run"),
                "--tensorboard",
                str(tmp_path / "tb"),
                "--quiet",
            ]
        )
        == 0
    )
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {
        "train/loss",
        "train/lr",
        "val/loss",
        "val/ppl",
        "val/bpc",
        "epoch/train_loss",
        "epoch/val_ppl",
        "epoch/val_bpc",
        "epoch/tokens_per_s",
    } <= set(scalars)
    evals = [json.loads(line) for line in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()]
    logged = events.Scalars("val/loss")
    assert [e.step for e in logged] == [e["step"] for e in evals]
    assert [e.value for e in logged] == pytest.approx([e["val_loss"] for e in evals], rel=1e-6)
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([e["lr"] for e in evals], rel=1e-6)
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("epoch/val_bpc")] == pytest.approx([e["val_bpc"] for e in epochs])


def test_tensorboard_into_a_file_is_one_line_and_leaves_no_run(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    status = main(["train", *flags(TINY), "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "file")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("rnnkit: error: --tensorboard")
    assert not (tmp_path / "run").exists()


OLD_IMPORTS = {  # names that code outside rnnkit imported before the library-first refactor: they stay
    "rnnkit": [
        "TrainConfig",
        "Trainer",
        "Sampling",
        "predict",
        "generate",
        "RNNLM",
        "RNNScratch",
        "Recurrent",
        "build_model",
        "Vocab",
        "build_corpus",
        "load_corpus_text",
        "RnnkitError",
        "d2l",
    ],
    "rnnkit.train": [
        "TrainConfig",
        "Trainer",
        "EvalPoint",
        "EpochStats",
        "CapturedGradients",
        "select_device",
        "keep_freed_memory",
        "clip_gradients",
        "compute_gradients",
        "compute_shared_gradients",
        "window_nll",
        "stream_nll",
        "validation_lanes",
        "perplexity",
        "bits_per_token",
        "characters_predicted",
        "make_optimizer",
        "lr_factor",
        "check_memory",
        "memory_needed",
        "OPTIMIZERS",
        "SCHEDULES",
        "CUDA_GRAPHS",
    ],
    "rnnkit.checkpoint": ["load_run", "save_run", "load_state", "read_config", "checkpoint_path"],
    "rnnkit.models": ["RNNLM", "build_model", "MODEL_KINDS", "State", "layer_states", "state_batch_dim"],
    "rnnkit.serve": ["Limits", "ServedRun", "create_app", "load_runs", "score", "activations", "serve"],
    "rnnkit.text": ["TOKEN_KINDS", "tokenize", "preprocess", "Vocab"],
    "rnnkit.generate": ["Sampling", "generate", "predict", "join_tokens"],
}


@pytest.mark.parametrize("module", OLD_IMPORTS)
def test_public_names_keep_their_old_imports(module):
    import importlib
    import importlib.util

    imported = importlib.import_module(module)
    missing = [
        name
        for name in OLD_IMPORTS[module]
        if not hasattr(imported, name) and importlib.util.find_spec(f"{module}.{name}") is None
    ]
    assert missing == []
    assert callable(rnnkit.train) and rnnkit.Run.load.__name__ == "load"


def test_the_lazy_exports_and_the_type_checking_imports_name_the_same_objects():
    """``rnnkit/__init__.py`` lists its exports twice: the lazy map (so ``import rnnkit`` does not load
    torch) and the ``TYPE_CHECKING`` imports (for type checkers and the API reference); they must agree."""
    import ast
    import importlib
    from pathlib import Path

    tree = ast.parse(Path(rnnkit.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    imported = {alias.asname or alias.name: node.module for node in block.body for alias in node.names}
    assert imported == {**rnnkit._EXPORTS, "train": "rnnkit.run"}
    for name, module in rnnkit._EXPORTS.items():  # (rnnkit.train is the callable module, tested above)
        assert getattr(rnnkit, name) is getattr(importlib.import_module(module), name)
