#!/usr/bin/env python3
"""Other recurrent cells against the recipe's LSTM at a fixed wall-clock budget; prints one JSON line.

A probe, not rnnkit: a few dozen lines of plain PyTorch train a candidate the way
``rnnkit train --time-budget`` trains its LSTM (the text's first 90% as ``--rows`` running lanes
with the state carried, ``--steps``-step windows, AdamW with a 2% warmup and a cosine decay to a
tenth laid over the budget, clipping at 1), then score the last 10% as 8 lanes with the state
carried. A cell that wins here at equal time is worth making a ``--model`` choice; one that loses
is not. Cells:

- ``lstm``: one-hot input, ``nn.LSTM`` (the recipe's model, for a paired baseline);
- ``mingru``: Feng et al. (2024)'s minGRU, gates from the input only (``h_t = (1 - z_t) h_{t-1} +
  z_t h~_t``), so a window's GEMMs have rows x steps rows; ``--layers`` residual blocks of
  LayerNorm -> minGRU (-> LayerNorm -> MLP of ``--mlp`` x width), an embedding in, the scan over
  time as a loop of element-wise steps with a hand-written backward;
- ``attn``: the LSTM, then one causal attention block over the window (``--layers`` heads) with a
  residual (Merity's SHA-RNN idea, at this scale).

``--bf16 1`` runs the GEMMs outside the LSTM under CPU autocast (bfloat16: AMX or AVX-512 BF16
where the CPU has them).

    .venv/bin/python benchmarks/cell_probe.py --cell lstm --width 256 --rows 8 --lr 1e-2 --bf16 0
    .venv/bin/python benchmarks/cell_probe.py --cell mingru --layers 2 --width 256 --rows 32 --lr 3e-3
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import cpu_model

SHARED = Path(__file__).resolve().parents[2] / "shared"


class LinearScan(torch.autograd.Function):
    """``h_t = a_t * h_{t-1} + b_t`` along dim 1 of ``a``, ``b`` (B, T, d) from ``h0`` (B, d)."""

    @staticmethod
    def forward(ctx, a, b, h0):
        out, h = torch.empty_like(b), h0
        for t in range(a.shape[1]):
            h = torch.addcmul(b[:, t], a[:, t], h)
            out[:, t] = h
        ctx.save_for_backward(a, out, h0)
        return out

    @staticmethod
    def backward(ctx, grad):
        a, out, h0 = ctx.saved_tensors
        grad_a, grad_b, carry = torch.empty_like(a), torch.empty_like(a), torch.zeros_like(h0)
        for t in range(a.shape[1] - 1, -1, -1):
            total = grad[:, t] + carry
            grad_b[:, t] = total
            grad_a[:, t] = total * (out[:, t - 1] if t > 0 else h0)
            carry = total * a[:, t]
        return grad_a, grad_b, carry


class MinGRUBlock(nn.Module):
    """x + minGRU(LN(x)), then x + MLP(LN(x)) where ``mlp`` > 0; the state is the last h (B, d)."""

    def __init__(self, width: int, mlp: int) -> None:
        super().__init__()
        self.norm, self.gates = nn.LayerNorm(width), nn.Linear(width, 2 * width)
        self.mlp = None
        if mlp:
            self.mlp = nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, mlp * width), nn.GELU(), nn.Linear(mlp * width, width)
            )

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, candidate = self.gates(self.norm(x)).float().chunk(2, dim=-1)
        z = torch.sigmoid(k)
        h = LinearScan.apply((1 - z).contiguous(), (z * candidate).contiguous(), h0)
        x = x + h
        return (x + self.mlp(x) if self.mlp is not None else x), h[:, -1]


class MinGRULM(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, mlp: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(MinGRUBlock(width, mlp) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def initial_state(self, rows: int) -> list[torch.Tensor]:
        return [torch.zeros(rows, self.head.in_features) for _ in self.blocks]

    def forward(self, X: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, new = self.embedding(X), []
        for block, h0 in zip(self.blocks, state, strict=True):
            x, h = block(x, h0)
            new.append(h)
        return self.head(self.norm(x)), new


class LSTMLM(nn.Module):
    """One-hot input, ``nn.LSTM`` (kept in float32), and with ``heads`` an attention block on top."""

    def __init__(self, vocab: int, width: int, heads: int = 0, bf16: bool = False) -> None:
        super().__init__()
        self.vocab, self.heads, self.bf16 = vocab, heads, bf16
        self.rnn, self.head = nn.LSTM(vocab, width, batch_first=True), nn.Linear(width, vocab)
        if heads:
            self.norm, self.qkv, self.proj = nn.LayerNorm(width), nn.Linear(width, 3 * width), nn.Linear(width, width)

    def initial_state(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros(1, rows, self.head.in_features)
        return zeros, zeros.clone()

    def forward(self, X: torch.Tensor, state) -> tuple[torch.Tensor, tuple]:
        with torch.autocast("cpu", enabled=False):
            h, state = self.rnn(F.one_hot(X, self.vocab).float(), state)
        if self.heads:
            B, T, d = h.shape
            q, k, v = self.qkv(self.norm(h)).view(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + self.proj(y.transpose(1, 2).reshape(B, T, d))
        return self.head(h), state


def detach(state):
    return type(state)(s.detach() for s in state)


def learning_rate(peak: float, progress: float) -> float:
    """2% linear warmup, then a cosine decay to a tenth of ``peak`` at ``progress`` 1."""
    if progress < 0.02:
        return peak * progress / 0.02
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train(model: nn.Module, lanes: torch.Tensor, args) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    rows, steps, position, updates = lanes.shape[0], args.steps, 0, 0
    state, started = model.initial_state(rows), time.perf_counter()
    while (elapsed := time.perf_counter() - started) < args.budget:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.lr, elapsed / args.budget)
        if position + steps + 1 > lanes.shape[1]:
            position, state = 0, model.initial_state(rows)
        X, Y = lanes[:, position : position + steps], lanes[:, position + 1 : position + steps + 1]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
            logits, state = model(X, state)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), Y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state, position, updates = detach(state), position + steps, updates + 1
    seconds = time.perf_counter() - started
    return {"updates": updates, "train_s": round(seconds, 1), "tokens_per_s": round(updates * rows * steps / seconds)}


@torch.no_grad()
def held_out_loss(model: nn.Module, tokens: torch.Tensor, bf16: bool, lanes: int = 8, chunk: int = 256) -> float:
    model.eval()
    length = (len(tokens) - 1) // lanes
    X, Y = tokens[: lanes * length].view(lanes, length), tokens[1 : lanes * length + 1].view(lanes, length)
    total, state = 0.0, model.initial_state(lanes)
    for i in range(0, length, chunk):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, state = model(X[:, i : i + chunk], state)
        total += F.cross_entropy(logits.float().flatten(0, 1), Y[:, i : i + chunk].reshape(-1), reduction="sum").item()
    return total / Y.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(SHARED / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--cell", choices=["lstm", "mingru", "attn"], default="mingru")
    parser.add_argument("--layers", type=int, default=2, help="minGRU blocks, or attention heads for attn")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--mlp", type=int, default=2, help="minGRU blocks' MLP width, in widths (0: none)")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--budget", type=float, default=100.0, help="training seconds")
    parser.add_argument("--bf16", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    text = Path(args.corpus).read_text(encoding="utf-8")
    alphabet = {c: i for i, c in enumerate(sorted(set(text)))}
    tokens = torch.tensor([alphabet[c] for c in text])
    cut = int(len(tokens) * 0.9)
    lane = cut // args.rows
    if args.cell == "mingru":
        model = MinGRULM(len(alphabet), args.width, args.layers, args.mlp)
    else:
        model = LSTMLM(len(alphabet), args.width, args.layers if args.cell == "attn" else 0)
    trained = train(model, tokens[: lane * args.rows].view(args.rows, lane), args)
    loss = held_out_loss(model, tokens[cut:], bool(args.bf16))
    parameters = sum(p.numel() for p in model.parameters())
    print(
        json.dumps({**vars(args), "cpu": cpu_model(), "parameters": parameters, **trained, "val_loss": round(loss, 4)})
    )


if __name__ == "__main__":
    main()
