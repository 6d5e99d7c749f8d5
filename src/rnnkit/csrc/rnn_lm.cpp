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
// small operations). In each chunk: (1) the recurrence step by step (a row lookup for the one-hot
// product, one GEMM, tanh in its own vectorized loop); (2) the output layer over blocks of steps,
// transposed ((V, steps * rows): every softmax loop runs along the rows, contiguous), one GEMM
// each for the logits, dL/dH, dWq; the softmax cross-entropy and its gradient in one pass; (3) back
// through time step by step; (4) dW_hh as one GEMM over all steps. The weight gradients of the
// chunks are summed at the end. benchmarks/kernel_phases.py times each phase.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// Built with -DRNNKIT_PROFILE (benchmarks/kernel_phases.py), the step adds the seconds of each
// phase, per chunk, and rnn_lm_profile() returns them; otherwise TIMED(phase, statement) is the
// statement alone.
#ifdef RNNKIT_PROFILE
#include <chrono>
constexpr int kPhases = 12;
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

// The output layer runs over blocks of time steps whose logits take at most this many floats (16 MiB).
constexpr int64_t kHeadBlockElements = int64_t{1} << 16;

// exp(y), written so that loops over it vectorize (ATen's exp and tanh on (512, 32) blocks took a
// quarter of the step; kernel_phases.py): y = k ln2 + r with |r| <= ln2 / 2 (k rounded with the
// 1.5 * 2^23 trick, ln2 in two parts), exp(r) by its Taylor polynomial to degree 7 (truncation
// below 1e-8 relative), times 2^k put into the exponent bits. y is clamped to [-87, 88]: exp(-87)
// stands for everything smaller (1.6e-38; only ever added to terms of order 1 here).
inline float exp_approx(float y) {
  y = y < -87.0f ? -87.0f : (y > 88.0f ? 88.0f : y);
  const float k = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (y - k * 0.693145751953125f) - k * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

// tanh(x) to about 2 ulp: for |x| < 0.625, |x| + |x|^3 P(x^2) (P fitted by least squares to the
// relative error, 1.3 ulp at most); above, 1 - 2 / (exp(2|x|) + 1), whose cancellation costs at
// most a bit there; the sign put back. Vectorizes (no branch: both sides are computed).
inline float tanh_approx(float x) {
  const float magnitude = std::fabs(x);
  const float a = magnitude < 9.0f ? magnitude : 9.0f;  // tanh(9) rounds to 1
  const float u = a * a;
  float p = -0.005718891508877277f;
  p = p * u + 0.02065306343138218f;
  p = p * u - 0.053744640201330185f;
  p = p * u + 0.13331513106822968f;
  p = p * u - 0.3333328664302826f;
  const float small = a + a * u * p;
  const float large = 1.0f - 2.0f / (exp_approx(2.0f * a) + 1.0f);
  return std::copysign(a < 0.625f ? small : large, x);
}

void tanh_in_place(float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = tanh_approx(x[i]);
}

// For each of the b columns of logits z (V, b) (one column per batch row: the layout makes every
// loop below run along b, contiguous and vectorized, with no reduction across a vector): add
// -log softmax(z[:, i])[target_i] to *loss and, with probs, write softmax - one-hot(target)
// (dL/dlogits) there. One pass instead of ATen's log_softmax, a gather, exp and a scatter, which
// took a sixth of the step. top and sum are scratch of b floats. The normalisers are multiplied
// up in double (flushed before they could overflow), so that a log is taken about once per
// hundred columns.
void softmax_cross_entropy(const float* z, const int64_t* target, int64_t b, int64_t V,
                           double* loss, float* probs, float* top, float* sum) {
  std::memcpy(top, z, b * sizeof(float));
  for (int64_t v = 1; v < V; ++v) {
    const float* zv = z + v * b;
#pragma omp simd
    for (int64_t i = 0; i < b; ++i) top[i] = zv[i] > top[i] ? zv[i] : top[i];
  }
  std::memset(sum, 0, b * sizeof(float));
  for (int64_t v = 0; v < V; ++v) {
    const float* zv = z + v * b;
    if (probs != nullptr) {
      float* pv = probs + v * b;
#pragma omp simd
      for (int64_t i = 0; i < b; ++i) {
        pv[i] = exp_approx(zv[i] - top[i]);
        sum[i] += pv[i];
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < b; ++i) sum[i] += exp_approx(zv[i] - top[i]);
    }
  }
  double normalisers = 1.0;
  for (int64_t i = 0; i < b; ++i) {
    const int64_t y = target[i];
    *loss += static_cast<double>(top[i]) - static_cast<double>(z[y * b + i]);
    normalisers *= sum[i];  // each in [1, V]
    if (normalisers > 1e250) {
      *loss += std::log(normalisers);
      normalisers = 1.0;
    }
  }
  *loss += std::log(normalisers);
  if (probs == nullptr) return;
#pragma omp simd
  for (int64_t i = 0; i < b; ++i) sum[i] = 1.0f / sum[i];
  for (int64_t v = 0; v < V; ++v) {
    float* pv = probs + v * b;
#pragma omp simd
    for (int64_t i = 0; i < b; ++i) pv[i] *= sum[i];
  }
  for (int64_t i = 0; i < b; ++i) probs[target[i] * b + i] -= 1.0f;
}

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
  const at::Tensor Wt = W.t(), bq_column = bq.unsqueeze(1);
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
      float* hs = Hs.data_ptr<float>();
      // 1. the recurrence, step by step (each step needs the one before)
      for (int64_t t = 0; t < T; ++t) {
        float* pre = hs + (t + 1) * b * H;
        TIMED(0, for (int64_t i = 0; i < b; ++i)  // the one-hot product: a row of the table
                   std::memcpy(pre + i * H, rows + x[(b0 + i) * T + t] * H, H * sizeof(float)));
        TIMED(1, Hs[t + 1].addmm_(Hs[t], W));
        TIMED(2, if (relu) Hs[t + 1].relu_(); else tanh_in_place(pre, b * H));
      }
      h_last.narrow(0, b0, b).copy_(Hs[T]);
      // 2. the output layer over blocks of time steps at once (nothing in it feeds the recurrence):
      // transposed logits (V, n*b) in one GEMM, the softmax cross-entropy, and for training
      // dL/dH = probs^T Wq, dWq += probs H, dbq += probs 1, each one GEMM per block
      const int64_t block = std::max<int64_t>(1, std::min<int64_t>(T, kHeadBlockElements / (V * b)));
      at::Tensor logits = at::empty({V * block * b}, opts), scratch = at::empty({2 * block * b}, opts);
      at::Tensor probs = need_grad ? at::empty({V * block * b}, opts) : at::Tensor();
      at::Tensor dH = need_grad ? at::empty({T, b, H}, opts) : at::Tensor();  // dL/dH_t, then dL/dpre_t
      at::Tensor dWq = at::zeros({V, H}, opts), dbq = at::zeros({V}, opts);
      at::Tensor ones = need_grad ? at::ones({block * b}, opts) : at::Tensor();
      std::vector<int64_t> targets(block * b);
      for (int64_t t0 = 0; t0 < T; t0 += block) {
        const int64_t n = std::min(block, T - t0), columns = n * b;
        const at::Tensor h = Hs.narrow(0, t0 + 1, n).view({columns, H});
        at::Tensor z = logits.narrow(0, 0, V * columns).view({V, columns});
        for (int64_t k = 0; k < n; ++k)  // column k*b + i: row i at time t0 + k
          for (int64_t i = 0; i < b; ++i) targets[k * b + i] = y[(b0 + i) * T + t0 + k];
        TIMED(3, at::addmm_out(z, bq_column, Wq, h.t()));
        at::Tensor dz = need_grad ? probs.narrow(0, 0, V * columns).view({V, columns}) : at::Tensor();
        TIMED(4, softmax_cross_entropy(z.data_ptr<float>(), targets.data(), columns, V, &loss[c],
                                       need_grad ? dz.data_ptr<float>() : nullptr, scratch.data_ptr<float>(),
                                       scratch.data_ptr<float>() + columns));
        if (!need_grad) continue;
        at::Tensor dH_block = dH.narrow(0, t0, n).view({columns, H});
        TIMED(5, at::mm_out(dH_block, dz.t(), Wq));
        TIMED(6, dWq.addmm_(dz, h));
        TIMED(7, dbq.addmv_(dz, ones.narrow(0, 0, columns)));
      }
      if (!need_grad) continue;
      // 3. back through time, step by step: dL/dpre_t = (dL/dH_t + dL/dpre_{t+1} W^T) * phi'
      at::Tensor dtable = at::zeros({table.size(0), H}, opts);
      float* dt = dtable.data_ptr<float>();
      for (int64_t t = T - 1; t >= 0; --t) {
        at::Tensor g = dH[t];
        TIMED(8, if (t < T - 1) g.addmm_(dH[t + 1], Wt));
        TIMED(9, if (relu) at::threshold_backward_out(g, g, Hs[t + 1], 0);
                 else at::tanh_backward_out(g, g, Hs[t + 1]));
        const float* gp = g.data_ptr<float>();
        TIMED(10, for (int64_t i = 0; i < b; ++i) {
          float* row = dt + x[(b0 + i) * T + t] * H;
          for (int64_t k = 0; k < H; ++k) row[k] += gp[i * H + k];
        });
      }
      // 4. dW = sum_t H_{t-1}^T dL/dpre_t: one GEMM over all steps
      TIMED(11, grad_W[c] = at::mm(Hs.narrow(0, 0, T).view({T * b, H}).t(), dH.view({T * b, H})));
      at::Tensor dh0 = grad_h0.narrow(0, b0, b);
      at::mm_out(dh0, dH[0], Wt);
      grad_table[c] = dtable;
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
