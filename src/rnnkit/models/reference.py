"""The reference path: the language model in plain PyTorch, readable top to bottom.

This is what an :class:`~rnnkit.models.RNNLM` computes; every fast path (see
:mod:`rnnkit.models.paths`) must give the same loss, final state and gradients
(``tests/test_model_paths.py`` holds each one to it). Nothing here is fused or differentiated by
hand: one-hot vectors or an embedding, a Python loop over layers and time steps whose body is the
cell's textbook equations, the output layer, cross-entropy, and autograd for backpropagation
through time. It is slow (T x L small steps) and it is the only path that keeps every layer's
states, so introspection (:func:`layer_states`) reads them from here.

Shapes: X, Y (B, T) token ids; T steps, B sequences, V vocabulary, D input size (V one-hot, or E
for an embedding), H hidden units, L layers, G gates (1 rnn, 3 gru, 4 lstm). Inside, time comes
first: x (T, B, D), outputs (T, B, H), logits (T, B, V).

Randomness (training only) is drawn in this order, the order of the fast paths, so that one seed
gives every path the same masks: dropout of the embedding (``io_dropout``), the DropConnect masks
of ``W_hh`` layer by layer (``weight_drop``), dropout between layers (``nn.RNN``'s ``dropout``),
dropout of the last layer's outputs (``io_dropout``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from rnnkit.models.layers import RNNScratch
from rnnkit.models.state import State, evaluating

if TYPE_CHECKING:
    from rnnkit.models.lm import RNNLM

LayerStates = list[tuple[torch.Tensor, torch.Tensor | None]]  # per layer: h (T, B, H), LSTM's c or None


def reference_loss(
    model: RNNLM, X: torch.Tensor, Y: torch.Tensor, state: State = None, reduction: str = "mean"
) -> tuple[torch.Tensor, State]:
    """Cross-entropy of predicting ``Y`` (B, T) from ``X`` (B, T) (mean or sum), and the final state."""
    logits, state = reference_forward(model, X, state)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.T.reshape(-1).long(), reduction="sum")
    return (loss / Y.numel() if reduction == "mean" else loss), state


def reference_forward(model: RNNLM, X: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
    """Logits (T, B, V) for tokens X (B, T), and the final state."""
    outputs, state, _ = reference_hidden(model, X, state)
    return F.linear(outputs, model.head.weight, model.head.bias), state


def reference_hidden(model: RNNLM, X: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State, LayerStates]:
    """The last layer's outputs (T, B, H) for tokens X (B, T), the final state (the model's format:
    (B, H) for RNNScratch; (L, B, H), an LSTM's (h, c), for PyTorch's layers) and every layer's
    states at every step."""
    rnn, training = model.rnn, model.training
    io_drop = model.io_dropout if training else 0.0
    layers = _layer_weights(rnn)  # per layer: (W_ih (G*H, D), W_hh (G*H, H), b_ih, b_hh); RNNScratch its own
    if model.embedding is None:  # one-hot vectors (T, B, V)
        x = F.one_hot(X.T.long(), model.vocab_size).to(layers[0][0].dtype)
    else:  # a learned embedding (T, B, E)
        x = F.dropout(model.embedding(X.T), io_drop, training)
    if training and model.weight_drop:  # DropConnect: one mask per W_hh, the same at every step
        layers = [(W_ih, F.dropout(W_hh, model.weight_drop), *biases) for W_ih, W_hh, *biases in layers]
    h0, c0 = _initial_state(model, state, X.shape[0], x)
    between = rnn.rnn.dropout if training and not isinstance(rnn, RNNScratch) else 0.0
    kind, phi = _cell(rnn)
    per_layer = []
    for layer, weights in enumerate(layers):
        h, c = _run_layer(kind, phi, x, h0[layer], c0[layer], weights)
        per_layer.append((h, c))
        x = F.dropout(h, between, True) if between and layer < len(layers) - 1 else h
    outputs = F.dropout(x, io_drop, True) if io_drop else x
    return outputs, _final_state(rnn, per_layer), per_layer


def _run_layer(
    kind: str, phi, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, weights: tuple
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One layer over the sequence: x (T, B, D), h and c (B, H) -> h_t and c_t for every t (T, B, H)."""
    hs, cs = [], []
    for x_t in x:
        if kind == "lstm":
            h, c = lstm_step(x_t, h, c, *weights)
            cs.append(c)
        elif kind == "gru":
            h = gru_step(x_t, h, *weights)
        elif kind == "rnn":
            h = rnn_step(x_t, h, *weights, phi)
        else:
            h = scratch_step(x_t, h, *weights, phi)
        hs.append(h)
    return torch.stack(hs), (torch.stack(cs) if cs else None)


def scratch_step(x, h, W_xh, W_hh, b_h, phi):
    """d2l §9.5: ``H_t = phi(X_t W_xh + b_h + H_{t-1} W_hh)`` (``addmm(A, H, W) = A + H @ W``)."""
    return phi(torch.addmm(x @ W_xh + b_h, h, W_hh))


def rnn_step(x, h, W_ih, W_hh, b_ih, b_hh, phi):
    """``nn.RNN``: ``h_t = phi(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``."""
    return phi(F.linear(x, W_ih, b_ih) + F.linear(h, W_hh, b_hh))


def gru_step(x, h, W_ih, W_hh, b_ih, b_hh):
    """``nn.GRU`` (d2l §10.2): reset gate r, update gate z, candidate n; ``h_t = z h + (1 - z) n``,
    written ``n + z (h - n)``, as PyTorch computes it."""
    r_x, z_x, n_x = F.linear(x, W_ih, b_ih).chunk(3, 1)
    r_h, z_h, n_h = F.linear(h, W_hh, b_hh).chunk(3, 1)
    r = torch.sigmoid(r_x + r_h)
    z = torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    return n + z * (h - n)


def lstm_step(x, h, c, W_ih, W_hh, b_ih, b_hh):
    """``nn.LSTM`` (d2l §10.1): input, forget and output gates i, f, o and candidate g;
    ``c_t = f c + i g``, ``h_t = o tanh(c_t)``."""
    i, f, g, o = (F.linear(x, W_ih, b_ih) + F.linear(h, W_hh, b_hh)).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _cell(rnn) -> tuple[str, object]:
    """(cell kind: scratch, rnn, gru or lstm; the activation phi of the simple ones)."""
    if isinstance(rnn, RNNScratch):
        return "scratch", torch.tanh if rnn.activation == "tanh" else torch.relu
    return rnn.kind, torch.relu if getattr(rnn.rnn, "nonlinearity", "tanh") == "relu" else torch.tanh


def _layer_weights(rnn) -> list[tuple]:
    """Per layer the cell's weights, as the layer holds them."""
    if isinstance(rnn, RNNScratch):
        return [(rnn.W_xh, rnn.W_hh, rnn.b_h)]
    module = rnn.rnn
    return [
        tuple(getattr(module, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        for layer in range(module.num_layers)
    ]


def _initial_state(model: RNNLM, state: State, batch: int, x: torch.Tensor) -> tuple[list, list]:
    """Per layer h_0 (B, H) and an LSTM's c_0 (else None), from the model's state (None: zeros)."""
    rnn = model.rnn
    if isinstance(rnn, RNNScratch):
        if isinstance(state, (tuple, list)):
            (state,) = state
        return [x.new_zeros(batch, rnn.num_hiddens) if state is None else state], [None]
    layers, lstm = rnn.rnn.num_layers, rnn.kind == "lstm"
    if state is None:
        zeros = x.new_zeros(layers, batch, rnn.num_hiddens)
        state = (zeros, zeros) if lstm else zeros
    h, c = state if lstm else (state, None)
    return list(h.unbind(0)), (list(c.unbind(0)) if lstm else [None] * layers)


def _final_state(rnn, per_layer: LayerStates) -> State:
    """The last step's states in the layer's format."""
    if isinstance(rnn, RNNScratch):
        return per_layer[0][0][-1]
    h = torch.stack([hs[-1] for hs, _ in per_layer])
    return (h, torch.stack([cs[-1] for _, cs in per_layer])) if rnn.kind == "lstm" else h


def layer_states(model: RNNLM, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """What each recurrent layer holds after each token of one sequence ``ids`` (T,), from a fresh
    state, in evaluation: per layer ``(h (T, H), c (T, H) or None)``, ``c`` being an LSTM's cell
    state. The last layer's ``h`` is :meth:`RNNLM.hidden`'s output. For looking inside a model."""
    with evaluating(model):
        _, _, per_layer = reference_hidden(model, ids.view(1, -1))
    return [(h[:, 0], None if c is None else c[:, 0]) for h, c in per_layer]
