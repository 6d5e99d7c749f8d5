// rnnkit compress's compiled parts: the adaptive model's byte loop and the portable network's
// float32 primitives. Each computes exactly what its Python original computes (rnnkit/compress/
// mixer.py, rnnkit/compress/network.py); tests/test_compress_native.py holds them to it bit for bit.
//
// Compiled with -ffp-contract=off: every a * b + c is rounded twice, as numpy's separate
// operations are (a fused multiply-add would round once and give other bits).

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// ---------------------------------------------------------------- the adaptive model (mixer.py)

struct MixerSettings {
    std::vector<int> squash;      // 4095 entries: index d + 2047
    std::vector<int> stretch;     // 4096 entries
    std::vector<int> reciprocal;  // LIMIT + 1 entries
    std::vector<int> orders;
    int limit, learning_rate, refine_rate;
    int64_t initial_weight, prior_weight;
    int match_bits, match_table_bits, min_match, max_verify, max_match, match_rate;
};

using Sums = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// The bits of the byte decided so far: c0 holds them after a leading 1 (Python's c0.bit_length() - 1).
static int depth_of(int c0) {
    int depth = 0;
    while ((c0 >> (depth + 1)) != 0) ++depth;
    return depth;
}

// mixer.py's prior_logit: the logit of a 1 from a byte distribution's prefix sums (257,).
static int prior_logit(const int64_t *sums, int c0, const std::vector<int> &stretch) {
    const int depth = depth_of(c0);
    const int width = 256 >> depth, low = (c0 - (1 << depth)) * width;
    const int64_t total = sums[low + width] - sums[low];
    if (total <= 0) return 0;
    const int64_t ones = sums[low + width] - sums[low + width / 2];
    int64_t p = (ones * 4096 + total / 2) / total;
    p = p < 1 ? 1 : (p > 4095 ? 4095 : p);
    return stretch[p];
}

// mixer.py's MatchModel: where the last min_match bytes occurred before, predict the byte that followed.
class Match {
  public:
    explicit Match(const MixerSettings &s)
        : s_(s), mask_((uint32_t(1) << s.match_bits) - 1), buffer_(size_t(1) << s.match_bits, 0),
          table_(size_t(1) << s.match_table_bits, 0), confidence_(64, 49152) {}

    int logit(int c0) {
        expected_ = -1;
        if (!length_) return 0;
        const int predicted = buffer_[pointer_ & mask_] | 256;
        const int depth = depth_of(c0);
        if ((predicted >> (8 - depth)) != c0) return 0;
        expected_ = (predicted >> (7 - depth)) & 1;
        const int confidence = s_.stretch[confidence_[std::min(length_, 63)] >> 4];
        return expected_ ? confidence : -confidence;
    }

    int length() const { return length_; }

    void learn_bit(int bit) {
        if (expected_ < 0) return;
        uint16_t &c = confidence_[std::min(length_, 63)];
        c = uint16_t(int(c) + (((bit == expected_ ? 65535 : 0) - int(c)) >> s_.match_rate));
    }

    void learn_byte(int value, uint64_t history) {
        if (length_) {
            if (buffer_[pointer_ & mask_] == value) {
                length_ = std::min(length_ + 1, s_.max_match);
                pointer_ += 1;
            } else {
                length_ = 0;
            }
        }
        buffer_[position_ & mask_] = uint8_t(value);
        position_ += 1;
        const uint64_t recent = history & ((uint64_t(1) << (8 * s_.min_match)) - 1);
        const size_t key = size_t((recent * 0x9E3779B97F4A7C15ull) >> (64 - s_.match_table_bits));
        const uint32_t candidate = table_[key];
        if (!length_ && candidate && uint64_t(uint32_t(position_ - candidate)) + s_.max_verify < mask_) {
            int agree = 0;
            while (agree < s_.max_verify &&
                   buffer_[(candidate - 1 - agree) & mask_] == buffer_[(position_ - 1 - agree) & mask_])
                ++agree;
            if (agree >= s_.min_match) {
                length_ = agree;
                pointer_ = candidate;
            }
        }
        table_[key] = position_;
    }

  private:
    const MixerSettings &s_;
    uint32_t mask_;
    std::vector<uint8_t> buffer_;
    std::vector<uint32_t> table_;
    std::vector<uint16_t> confidence_;
    uint32_t position_ = 0, pointer_ = 0;
    int length_ = 0, expected_ = -1;
};

class Mixer {
  public:
    Mixer(int table_bits, MixerSettings s, bool prior)
        : s_(std::move(s)),
          kinds_(static_cast<int>(s_.orders.size()) + 2),
          prior_(prior),
          inputs_(kinds_ + 1 + (prior ? 1 : 0) + 1),
          mask_((uint64_t(1) << table_bits) - 1),
          probabilities_(size_t(kinds_) << table_bits, 32768),
          counts_(size_t(kinds_) << table_bits, 0),
          weights_(size_t(3 * 256) * inputs_, s_.initial_weight),
          refined_(size_t(33) * 65536),
          match_(s_) {
        if (prior_)
            for (size_t c = 0; c < 3 * 256; ++c) weights_[c * inputs_ + kinds_ + 1] = s_.prior_weight;
        for (int j = 0; j < 33; ++j) {
            int d = (j - 16) * 128 + 2047;
            d = d < 0 ? 0 : (d > 4094 ? 4094 : d);
            for (size_t c = 0; c < 65536; ++c) refined_[c * 33 + j] = uint16_t(s_.squash[d] * 16);
        }
        contexts_.resize(kinds_);
        update_contexts();
    }

    // Run over known bytes: their bits (most significant first) and the probability of a 1 before
    // each; priors: the prior's prefix sums before each byte (n, 257), with a prior.
    py::tuple learn(py::bytes block, std::optional<Sums> priors) {
        std::string data = block;
        if (prior_ && (!priors || priors->ndim() != 2 || priors->shape(0) != py::ssize_t(data.size()) ||
                       priors->shape(1) != 257))
            throw std::invalid_argument("learn: a prior's sums (n, 257) are needed");
        py::array_t<int32_t> bits(data.size() * 8), probabilities(data.size() * 8);
        int32_t *b = bits.mutable_data(), *p = probabilities.mutable_data();
        size_t at = 0;
        for (size_t i = 0; i < data.size(); ++i) {
            const unsigned char byte = data[i];
            code_byte(
                [&](int prob) {
                    int bit = (byte >> (7 - at % 8)) & 1;
                    b[at] = bit;
                    p[at++] = prob;
                    return bit;
                },
                prior_ ? priors->data() + i * 257 : nullptr);
        }
        return py::make_tuple(bits, probabilities);
    }

    // Decode count bytes: decide(p) returns each bit; with a prior, sums() gives it before each
    // byte and observe(byte) is told the byte.
    py::bytes decode(size_t count, const std::function<int(int)> &decide, std::optional<py::function> sums,
                     std::optional<py::function> observe) {
        std::string out(count, '\0');
        for (size_t i = 0; i < count; ++i) {
            if (!prior_) {
                out[i] = char(code_byte(decide, nullptr));
                continue;
            }
            Sums given = (*sums)().cast<Sums>();
            if (given.size() != 257) throw std::invalid_argument("decode: a prior's sums (257,) are needed");
            out[i] = char(code_byte(decide, given.data()));
            (*observe)(int((unsigned char)out[i]));
        }
        return py::bytes(out);
    }

  private:
    template <typename Decide>
    int code_byte(Decide &&decide, const int64_t *sums) {
        const int n = inputs_;
        const size_t table = mask_ + 1;
        const int previous = int(history_ & 255);
        const int length = match_.length();
        const int weight_set = length == 0 ? 0 : (length < 16 ? 1 : 2);  // no match, a short one, a long one
        uint64_t slots[16];
        int64_t logits[16];
        int c0 = 1;
        while (c0 < 256) {
            const uint64_t offset = uint64_t(c0) * 0x2F0B4CA3ull;
            for (int k = 0; k < kinds_; ++k) {
                slots[k] = (contexts_[k] + offset) & mask_;
                logits[k] = s_.stretch[probabilities_[k * table + slots[k]] >> 4];
            }
            logits[kinds_] = match_.logit(c0);
            if (prior_) logits[kinds_ + 1] = prior_logit(sums, c0, s_.stretch);
            logits[n - 1] = 256;
            int64_t *weight = &weights_[(size_t(weight_set) * 256 + c0) * n];
            int64_t dot = 0;
            for (int i = 0; i < n; ++i) dot += weight[i] * logits[i];
            dot >>= 16;
            dot = dot > 2047 ? 2047 : (dot < -2047 ? -2047 : dot);
            const int mixed = s_.squash[dot + 2047];
            const int knot = s_.stretch[mixed] + 2048;
            const int low = knot >> 7, w = knot & 127;
            const size_t at = size_t(previous | (c0 << 8)) * 33 + low;
            const int refined = (int(refined_[at]) * (128 - w) + int(refined_[at + 1]) * w) >> 11;
            int p = (mixed + 3 * refined) >> 2;
            p = p < 1 ? 1 : (p > 4095 ? 4095 : p);
            const int bit = decide(p) ? 1 : 0;
            const size_t near = at + (w >> 6);
            refined_[near] = uint16_t(int(refined_[near]) + (((bit ? 65535 : 0) - int(refined_[near])) >> s_.refine_rate));
            const int64_t error = int64_t((bit << 12) - mixed) * s_.learning_rate;
            for (int i = 0; i < n; ++i) weight[i] += (logits[i] * error) >> 14;
            match_.learn_bit(bit);
            const int target = bit ? 65535 : 0;
            for (int k = 0; k < kinds_; ++k) {
                uint16_t &prob = probabilities_[k * table + slots[k]];
                uint8_t &seen = counts_[k * table + slots[k]];
                prob = uint16_t(int(prob) + ((int64_t(target - int(prob)) * s_.reciprocal[seen]) >> 16));
                if (seen < s_.limit) ++seen;
            }
            c0 = (c0 << 1) | bit;
        }
        const int value = c0 & 255;
        history_ = (history_ << 8) | uint64_t(value);
        match_.learn_byte(value, history_);
        const int letter = value >= 128 ? value : value | 32;  // a byte of a non-ASCII letter counts as one
        word_ = (value >= 128 || (97 <= letter && letter <= 122)) ? uint32_t(uint64_t(word_) * 0x3F + letter) : 0;
        update_contexts();
        return value;
    }

    void update_contexts() {
        contexts_[0] = 0;
        for (size_t i = 0; i < s_.orders.size(); ++i) {
            const int k = s_.orders[i];
            const uint64_t recent = k >= 8 ? history_ : history_ & ((uint64_t(1) << (8 * k)) - 1);
            contexts_[i + 1] = ((recent + (uint64_t(k) << 56)) * 0x9E3779B97F4A7C15ull) >> 20;
        }
        contexts_[kinds_ - 1] = ((uint64_t(word_) + 0x5BD1E995ull) * 0x9E3779B97F4A7C15ull) >> 20;
    }

    MixerSettings s_;
    int kinds_;
    bool prior_;
    int inputs_;
    uint64_t mask_;
    std::vector<uint16_t> probabilities_;
    std::vector<uint8_t> counts_;
    std::vector<int64_t> weights_;
    std::vector<uint16_t> refined_;
    std::vector<uint64_t> contexts_;
    Match match_;
    uint64_t history_ = 0;
    uint32_t word_ = 0;
};

// ---------------------------------------------------------------- the portable network (network.py)

// The constants as network.py makes them: the double rounded to float32.
const float LOG2E = float(1.4426950408889634), LN2_HIGH = float(0.693145751953125),
            LN2_LOW = float(1.4286067653301870e-06), EXP_LIMIT = 80.0f;
const float EXP_COEFFICIENTS[7] = {float(1.0 / 720), float(1.0 / 120), float(1.0 / 24), float(1.0 / 6),
                                   float(1.0 / 2),   float(1.0),       float(1.0)};

static inline float exp32(float x) {
    x = x < -EXP_LIMIT ? -EXP_LIMIT : (x > EXP_LIMIT ? EXP_LIMIT : x);
    const float n = std::nearbyint(x * LOG2E);
    const float r = (x - n * LN2_HIGH) - n * LN2_LOW;
    float p = EXP_COEFFICIENTS[0];
    for (int i = 1; i < 7; ++i) p = p * r + EXP_COEFFICIENTS[i];
    // ldexp(p, n): |n| <= 116 here, so 2^n is a normal float and the product is exact
    const uint32_t bits = uint32_t(int(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float sigmoid32(float x) { return 1.0f / (1.0f + exp32(-x)); }
static inline float tanh32(float x) { return 2.0f * sigmoid32(2.0f * x) - 1.0f; }

template <float (*f)(float)>
FloatArray elementwise(FloatArray x) {
    FloatArray out(x.size());
    const float *in = x.data();
    float *o = out.mutable_data();
    for (py::ssize_t i = 0; i < x.size(); ++i) o[i] = f(in[i]);
    return out;
}

// One block of B columns: products W^T[k, n0 + j] x[k] (K, B) in `buffer`, summed over k in
// fold_rows' pairwise order; the sums land in buffer[0 .. B).
template <int B>
static void fold_block(const float *__restrict W, py::ssize_t N, py::ssize_t K, const float *__restrict x,
                       float *__restrict buffer) {
    for (py::ssize_t k = 0; k < K; ++k)
        for (int j = 0; j < B; ++j) buffer[k * B + j] = W[k * N + j] * x[k];
    py::ssize_t rows = K;
    while (rows > 1) {
        const py::ssize_t half = rows / 2;
        for (py::ssize_t i = 0; i < half; ++i)
            for (int j = 0; j < B; ++j) buffer[i * B + j] += buffer[(half + i) * B + j];
        if (rows % 2)
            for (int j = 0; j < B; ++j) buffer[half * B + j] = buffer[(rows - 1) * B + j];
        rows = half + rows % 2;
    }
}

// x -> W x for a fixed W, given as W^T (K, N): each column's sum is its own, so blocks of B columns
// are summed in cache with exactly fold_rows' order. The weights are kept block by block (each
// block's K x B products contiguous); the last columns, fewer than a block, one at a time.
class MatVec {
  public:
    static constexpr int B = 32;

    explicit MatVec(FloatArray transposed)
        : K_(transposed.shape(0)), N_(transposed.shape(1)), blocked_(size_t(K_) * N_), buffer_(size_t(K_) * B) {
        const float *W = transposed.data();
        float *to = blocked_.data();
        py::ssize_t n0 = 0;
        for (; n0 + B <= N_; n0 += B)  // a full block: K rows of B
            for (py::ssize_t k = 0; k < K_; ++k)
                for (py::ssize_t j = 0; j < B; ++j) *to++ = W[k * N_ + n0 + j];
        for (; n0 < N_; ++n0)  // the last columns: each one K long
            for (py::ssize_t k = 0; k < K_; ++k) *to++ = W[k * N_ + n0];
    }

    FloatArray operator()(FloatArray x) {
        if (x.size() != K_) throw std::invalid_argument("matvec: shapes do not match");
        FloatArray out(N_);
        const float *v = x.data(), *W = blocked_.data();
        float *o = out.mutable_data();
        py::ssize_t n0 = 0;
        for (; n0 + B <= N_; n0 += B, W += K_ * B) {
            fold_block<B>(W, B, K_, v, buffer_.data());
            std::memcpy(o + n0, buffer_.data(), B * sizeof(float));
        }
        for (; n0 < N_; ++n0, W += K_) {
            fold_block<1>(W, 1, K_, v, buffer_.data());
            o[n0] = buffer_[0];
        }
        return out;
    }

  private:
    py::ssize_t K_, N_;
    std::vector<float> blocked_, buffer_;
};

FloatArray matvec(FloatArray transposed, FloatArray x) { return MatVec(transposed)(x); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    py::class_<MixerSettings>(m, "MixerSettings")
        .def(py::init<std::vector<int>, std::vector<int>, std::vector<int>, std::vector<int>, int, int, int, int64_t,
                      int64_t, int, int, int, int, int, int>());
    py::class_<Mixer>(m, "Mixer")
        .def(py::init<int, MixerSettings, bool>())
        .def("learn", &Mixer::learn, py::arg("block"), py::arg("priors") = py::none())
        .def("decode", &Mixer::decode, py::arg("count"), py::arg("decide"), py::arg("sums") = py::none(),
             py::arg("observe") = py::none());
    py::class_<MatVec>(m, "MatVec").def(py::init<FloatArray>()).def("__call__", &MatVec::operator());
    m.def("matvec", &matvec);
    m.def("exp32", &elementwise<exp32>);
    m.def("sigmoid32", &elementwise<sigmoid32>);
    m.def("tanh32", &elementwise<tanh32>);
}
