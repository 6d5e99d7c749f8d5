// The book's model on the CPU, forward and backward in one pass (see rnnkit/kernels.py).
//
//   H_t = phi(table[X_t] + H_{t-1} @ W)        phi = tanh or relu, H_0 = h0
//   loss = sum_t sum_b CE(H_t @ Wq^T + bq, Y_t)
//
// X, Y: (B, T) token ids; h0: (B, H); table: (V_in, H); W: (H, H); Wq: (V, H); bq: (V).
//
// Why it is faster than the same math as PyTorch operations: the batch rows are independent, so
// the batch is cut into one chunk per thread and each thread runs the whole step on its rows with
// single-threaded operations (no thread hand-off per operation: the book's step is hundreds of
// small operations); and the output layer, softmax and the gradient reaching H_t are done per
// time step while H_t is in cache, instead of over (T*B, V) arrays. The weight gradients of the
// chunks are summed at the end.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <array>
#include <cstring>
#include <vector>

// Built with -DRNNKIT_PROFILE (benchmarks/kernel_phases.py), the step adds the seconds of each
// phase, per chunk, and rnn_lm_profile() returns them; otherwise TIMED(phase, statement) is the
// statement alone.
#ifdef RNNKIT_PROFILE
#include <chrono>
constexpr int kPhases = 16;
static std::vector<std::array<double, kPhases>> profile_seconds;
#define TIMED(phase, statement)                                                            \
  do {                                                                                     \
    const auto started_ = std::chrono::steady_clock::now();                                \
    statement;                                                                             \
    profile_seconds[c][phase] +=                                                           \
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count(); \
  } while (0)
#else
#define TIMED(phase, statement) statement
#endif

namespace {

void check_ids(const at::Tensor& ids, int64_t limit, const char* name) {
  TORCH_CHECK(ids.scalar_type() == at::kLong, name, " must be int64");
  if (ids.numel() == 0) return;
  auto [lo, hi] = at::aminmax(ids);
  TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < limit, name, " holds ids outside [0, ", limit, ")");
}

}  // namespace

// Returns {loss (float32 scalar), h_last (B, H)} and, with need_grad,
// {grad_table, grad_W, grad_h0, grad_Wq, grad_bq} of the summed loss.
std::vector<at::Tensor> rnn_lm_loss(at::Tensor X, at::Tensor Y, at::Tensor h0, at::Tensor table, at::Tensor W,
                                    at::Tensor Wq, at::Tensor bq, bool relu, bool need_grad) {
  for (const at::Tensor* t : {&X, &Y, &h0, &table, &W, &Wq, &bq})
    TORCH_CHECK(t->device().is_cpu(), "rnn_lm_loss runs on the CPU");
  for (const at::Tensor* t : {&h0, &table, &W, &Wq, &bq})
    TORCH_CHECK(t->scalar_type() == at::kFloat, "rnn_lm_loss needs float32 weights and state");
  TORCH_CHECK(X.dim() == 2 && Y.sizes() == X.sizes(), "X and Y must be (batch, steps) of the same shape");
  const int64_t B = X.size(0), T = X.size(1), H = W.size(0), V = Wq.size(0);
  TORCH_CHECK(W.size(1) == H && table.dim() == 2 && table.size(1) == H && Wq.size(1) == H && bq.size(0) == V &&
              h0.size(0) == B && h0.size(1) == H, "rnn_lm_loss: inconsistent shapes");
  check_ids(X, table.size(0), "inputs");
  check_ids(Y, V, "targets");
  // The gradients are computed here, not by autograd.
  X = X.contiguous();
  Y = Y.contiguous();
  table = table.detach().contiguous();
  W = W.detach();
  Wq = Wq.detach();
  bq = bq.detach();
  h0 = h0.detach();
  const at::Tensor Wt = W.t(), Wqt = Wq.t();
  const auto opts = table.options();
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B / 64));

  std::vector<double> loss(chunks, 0.0);
  std::vector<at::Tensor> grad_table(chunks), grad_W(chunks), grad_Wq(chunks), grad_bq(chunks);
  at::Tensor h_last = at::empty({B, H}, opts);
  at::Tensor grad_h0 = need_grad ? at::empty({B, H}, opts) : at::Tensor();
  const int64_t* x = X.data_ptr<int64_t>();
  const int64_t* y = Y.data_ptr<int64_t>();
  const float* rows = table.data_ptr<float>();

#ifdef RNNKIT_PROFILE
  profile_seconds.resize(std::max<size_t>(profile_seconds.size(), chunks));
#endif
  auto run_chunks = [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const int64_t b0 = B * c / chunks, b = B * (c + 1) / chunks - b0;
      at::Tensor Hs = at::empty({T + 1, b, H}, opts);  // Hs[t] = H_t of this chunk's rows
      Hs[0].copy_(h0.narrow(0, b0, b));
      at::Tensor logits = at::empty({b, V}, opts), probs = at::empty({b, V}, opts);
      at::Tensor dH = need_grad ? at::empty({T, b, H}, opts) : at::Tensor();  // dL/dH_t, then dL/dpre_t
      at::Tensor dWq = at::zeros({V, H}, opts), dbq = at::zeros({V}, opts), ones = at::ones({b}, opts);
      float* hs = Hs.data_ptr<float>();
      float* p = probs.data_ptr<float>();
      for (int64_t t = 0; t < T; ++t) {
        at::Tensor h = Hs[t + 1];
        float* pre = hs + (t + 1) * b * H;
        TIMED(0, for (int64_t i = 0; i < b; ++i)  // the one-hot product: a row of the table
                   std::memcpy(pre + i * H, rows + x[(b0 + i) * T + t] * H, H * sizeof(float)));
        TIMED(1, h.addmm_(Hs[t], W));
        TIMED(2, if (relu) h.relu_(); else h.tanh_());
        TIMED(3, at::addmm_out(logits, bq, h, Wqt));
        TIMED(4, at::_log_softmax_out(probs, logits, 1, false));
        TIMED(5, for (int64_t i = 0; i < b; ++i) loss[c] -= p[i * V + y[(b0 + i) * T + t]]);
        if (!need_grad) continue;
        TIMED(6, probs.exp_();  // softmax; minus one-hot(target) is dL/dlogits
                 for (int64_t i = 0; i < b; ++i) p[i * V + y[(b0 + i) * T + t]] -= 1.0f);
        at::Tensor dH_t = dH[t];
        TIMED(7, at::mm_out(dH_t, probs, Wq));
        TIMED(8, dWq.addmm_(probs.t(), h));
        TIMED(9, dbq.addmv_(probs.t(), ones));
      }
      h_last.narrow(0, b0, b).copy_(Hs[T]);
      if (!need_grad) continue;
      at::Tensor dtable = at::zeros({table.size(0), H}, opts), dW = at::zeros({H, H}, opts);
      float* dt = dtable.data_ptr<float>();
      for (int64_t t = T - 1; t >= 0; --t) {
        at::Tensor g = dH[t];
        TIMED(10, if (t < T - 1) g.addmm_(dH[t + 1], Wt));  // + dL/dpre_{t+1} @ W^T
        TIMED(11, if (relu) at::threshold_backward_out(g, g, Hs[t + 1], 0);
                  else at::tanh_backward_out(g, g, Hs[t + 1]));
        const float* gp = g.data_ptr<float>();
        TIMED(12, for (int64_t i = 0; i < b; ++i) {
          float* row = dt + x[(b0 + i) * T + t] * H;
          for (int64_t k = 0; k < H; ++k) row[k] += gp[i * H + k];
        });
        TIMED(13, dW.addmm_(Hs[t].t(), g));
      }
      at::Tensor dh0 = grad_h0.narrow(0, b0, b);
      at::mm_out(dh0, dH[0], Wt);
      grad_table[c] = dtable;
      grad_W[c] = dW;
      grad_Wq[c] = dWq;
      grad_bq[c] = dbq;
    }
  };
  if (chunks == 1) {  // a small batch: one chunk, whose operations may use every thread themselves
    run_chunks(0, 1);
  } else {
    const at::ThreadLocalState caller_state;  // grad mode, inference mode...: workers take the caller's
    at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
      at::ThreadLocalStateGuard same_state(caller_state);
      run_chunks(first, last);
    });
  }

  double total = 0.0;
  for (double l : loss) total += l;
  at::Tensor loss_tensor = at::scalar_tensor(total, opts);
  if (!need_grad) return {loss_tensor, h_last};
  auto sum = [](const std::vector<at::Tensor>& parts) {
    at::Tensor s = parts[0].clone();
    for (size_t i = 1; i < parts.size(); ++i) s.add_(parts[i]);
    return s;
  };
  return {loss_tensor, h_last, sum(grad_table), sum(grad_W), grad_h0, sum(grad_Wq), sum(grad_bq)};
}

#ifdef RNNKIT_PROFILE
// Seconds per phase summed over the chunks since the last call (which resets them).
std::vector<double> rnn_lm_profile() {
  std::vector<double> total(kPhases, 0.0);
  for (auto& chunk : profile_seconds)
    for (int i = 0; i < kPhases; ++i) { total[i] += chunk[i]; chunk[i] = 0.0; }
  return total;
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rnn_lm_loss", &rnn_lm_loss, "loss and gradients of the one-layer one-hot RNN language model");
#ifdef RNNKIT_PROFILE
  m.def("rnn_lm_profile", &rnn_lm_profile, "seconds per phase since the last call");
#endif
}
