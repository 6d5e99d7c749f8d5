"""The ``rnnkit`` command: ``train``, ``generate``, ``eval``.

Bad input (files, corpora, settings, prefixes, run directories) ends with a one-line
``rnnkit: error: ...`` on stderr and exit status 2; Ctrl-C ends with status 130.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import asdict, fields
from pathlib import Path

from rnnkit.errors import RnnkitError

SAMPLE_PREFIX = "time traveller"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from rnnkit import __version__
    from rnnkit.data import SPLITS
    from rnnkit.models import MODEL_KINDS
    from rnnkit.train import OPTIMIZERS, TrainConfig

    d = TrainConfig()
    parser = argparse.ArgumentParser(prog="rnnkit", description="Character-level RNN language models.")
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model; writes model.safetensors, config.json, metrics.jsonl",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--corpus", default=d.corpus, help="built-in corpus name or path to a UTF-8 text file")
    t.add_argument("--encoding", default=d.encoding, help="text encoding of the corpus file")
    t.add_argument("--preprocess", default=d.preprocess, choices=["d2l", "raw"])
    t.add_argument("--split", default=d.split, choices=SPLITS)
    t.add_argument("--num-train", type=_positive_int, default=d.num_train, help="d2l split: training windows")
    t.add_argument("--num-val", type=int, default=d.num_val, help="d2l split: validation windows")
    t.add_argument("--val-fraction", type=float, default=d.val_fraction, help="other splits: held-out tail")
    t.add_argument("--model", default=d.model, choices=MODEL_KINDS)
    t.add_argument("--hidden", type=int, default=d.hidden)
    t.add_argument("--layers", type=int, default=d.layers)
    t.add_argument("--dropout", type=float, default=d.dropout)
    t.add_argument("--embedding", type=int, default=d.embedding, metavar="DIM",
                   help="learned embedding size (0: one-hot input, as the book)")
    t.add_argument("--activation", default=d.activation, choices=["tanh", "relu"])
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--num-steps", type=int, default=d.num_steps)
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--clip", type=float, default=d.clip, help="max global gradient norm (0: off)")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, mps")
    t.add_argument("--out", default="runs/tm", help="run directory to write")
    t.add_argument("--save-every", type=int, default=10, help="save a checkpoint every N epochs (0: end only)")
    t.add_argument("--sample-chars", type=int, default=100, help="length of the sample printed at the end")

    g = sub.add_parser("generate", help="generate text from a trained run")
    g.add_argument("run_dir")
    g.add_argument("--prefix", default=SAMPLE_PREFIX)
    g.add_argument("-n", "--num-chars", type=int, default=200)
    g.add_argument("--greedy", action="store_true", help="always take the most likely character (d2l)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--alpha", type=float, default=1.0, help="sample from q ∝ p^alpha (alpha > 1 sharpens)")
    g.add_argument("--seed", type=int, default=None)

    e = sub.add_parser("eval", help="perplexity and bits per character of a run on a corpus")
    e.add_argument("run_dir")
    e.add_argument("--corpus", default=None, help="built-in name or path (default: the run's own corpus)")
    e.add_argument("--encoding", default=None)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from rnnkit.checkpoint import METRICS_FILE, atomic_write, save_run
    from rnnkit.generate import predict
    from rnnkit.train import TrainConfig, Trainer

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise RnnkitError(f"--out {out}: exists and is not a directory")
    trainer = Trainer(config)
    print(f"corpus {config.corpus}: {len(trainer.corpus)} tokens, vocab {len(trainer.vocab)}, "
          f"{len(trainer.data.train)} batches/epoch; model {config.model} hidden {config.hidden} "
          f"({sum(p.numel() for p in trainer.model.parameters())} parameters) on {trainer.device}", flush=True)
    lines: list[str] = []

    def on_epoch(stats) -> None:
        lines.append(json.dumps(asdict(stats)))
        print(f"epoch {stats.epoch:4d}  train loss {stats.train_loss:.4f}  train ppl {stats.train_ppl:8.3f}  "
              f"val ppl {stats.val_ppl:8.3f}  {stats.tokens_per_s:,.0f} tok/s  {stats.seconds:.1f}s", flush=True)
        if args.save_every and stats.epoch % args.save_every == 0:
            save_run(out, trainer.model, trainer.vocab, config, stats.epoch)
            atomic_write(out / METRICS_FILE, "".join(line + "\n" for line in lines).encode())

    try:
        history = trainer.fit(on_epoch)
    except KeyboardInterrupt:
        done = len(trainer.history)
        save_run(out, trainer.model, trainer.vocab, config, done)
        atomic_write(out / METRICS_FILE, "".join(line + "\n" for line in lines).encode())
        print(f"\ninterrupted: saved the model after {done} epoch(s) in {out}", file=sys.stderr)
        return 130
    save_run(out, trainer.model, trainer.vocab, config, len(history))
    atomic_write(out / METRICS_FILE, "".join(line + "\n" for line in lines).encode())
    if history:
        last = history[-1]
        print(f"done: val ppl {last.val_ppl:.3f}, val bpc {last.val_bpc:.3f}, {last.seconds:.1f}s training; "
              f"saved in {out}")
    prefix = SAMPLE_PREFIX if not trainer.vocab.unknown(SAMPLE_PREFIX) else trainer.vocab.idx_to_token[0]
    print("sample:", predict(trainer.model, trainer.vocab, prefix, args.sample_chars))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from rnnkit.checkpoint import load_run
    from rnnkit.generate import Sampling, generate

    model, vocab, _, _ = load_run(args.run_dir)
    sampling = Sampling(args.greedy, args.temperature, args.top_k, args.top_p, args.alpha)
    stream = generate(model, vocab, args.prefix, args.num_chars, sampling, args.seed)
    first = next(stream, "")  # errors (unknown prefix, bad settings) surface before anything prints
    sys.stdout.write(args.prefix + first)
    for token in stream:
        sys.stdout.write(token)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from rnnkit.checkpoint import load_run
    from rnnkit.text import load_corpus_text, preprocess, tokenize
    from rnnkit.train import bits_per_token, perplexity, stream_nll

    model, vocab, config, _ = load_run(args.run_dir)
    corpus = args.corpus or config.corpus
    tokens = tokenize(preprocess(load_corpus_text(corpus, args.encoding or config.encoding), config.preprocess))
    unknown = vocab.unknown(tokens)
    skipped = 0
    if unknown and vocab.unk_token is None:
        known = [t for t in tokens if t in vocab.token_to_idx]
        skipped = len(tokens) - len(known)
        tokens = known
    if len(tokens) < 2:
        raise RnnkitError(f"{corpus}: fewer than 2 tokens the model knows; nothing to evaluate")
    ids = torch.tensor(vocab[tokens], dtype=torch.int64)
    nll, count = stream_nll(model, ids)
    result = {"ppl": perplexity(nll, count), "bpc": bits_per_token(nll, count), "tokens": count,
              "corpus": str(corpus), "unknown_chars": "".join(unknown)[:100], "skipped": skipped}
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        note = ""
        if unknown:
            how = f"{skipped} skipped" if skipped else f"read as {vocab.unk_token}"
            note = f"  ({len(unknown)} character types not in the vocabulary, {how})"
        print(f"{corpus}: perplexity {result['ppl']:.4f}  bits/char {result['bpc']:.4f}  "
              f"tokens {count}{note}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"rnnkit: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval}[args.command]
    try:
        return command(args)
    except RnnkitError as exc:
        print(f"rnnkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `rnnkit generate ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
