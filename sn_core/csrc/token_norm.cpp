// The token SN CPU kernel: a free token layer over a per-token pool (ln, rms), one op with its
// autograd node in C++.
//
// Same mathematics as sn_core/token_kernel.py (docs/sn-spec.md section 8). Per token (a row of C
// channels) with moments m, v: M = sum_k a_k mu_k (ln: mu = m, rms: 0), V = sum_k b_k sigma_k
// (ln: v, rms: v + m^2), R = 1 / sqrt(V + eps), y = (x - M) R w + b. The backward needs the two
// row sums S_g = sum g and S_gt = sum g t (g = dy w, t = (x - M) R), from which
//   dL/dM = -R S_g,  dL/dV = -R^2 S_gt / 2,
//   dx = R g + (a dL/dM - 2 b_ln dL/dV m) / C + 2 (b_ln + b_rms) dL/dV x / C,
// the ratio gradients sum dL/dM mu_k and dL/dV sigma_k over tokens, and dweight / dbias sum
// dy t / dy over tokens in per-thread column buffers (x's dtype). Saves x and four doubles per
// token (m, v, M, R). The ratios (a, b) arrive as they are or as logits whose softmax the op takes
// itself (a free layer's default: no softmax nodes, no Python in the step). Registered as
// torch.ops.normsearch_cpu.token_mixture, with a CPU kernel (inference mode) and an Autograd one.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "rows.h"

namespace {

// The token pool's codes, in sync with sn_core/native.py (KIND_CODES).
constexpr int64_t LN = 1, RMS = 4;

#define SN_TOKEN_KERNELS(T)                                                                    \
  SN_ROW_MOMENTS(T)                                                                            \
  SN_CLONES void token_out(const T* x, T* y, int64_t len, T m, T r, const T* w, const T* b) { \
    if (w != nullptr && b != nullptr) {                                                        \
      _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) y[i] = (x[i] - m) * r * w[i] + b[i]; \
    } else if (w != nullptr) {                                                                 \
      _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) y[i] = (x[i] - m) * r * w[i];      \
    } else if (b != nullptr) {                                                                 \
      _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) y[i] = (x[i] - m) * r + b[i];      \
    } else {                                                                                   \
      _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) y[i] = (x[i] - m) * r;             \
    }                                                                                          \
  }                                                                                            \
  /* S_g, S_gt of one token; with dw/db (column sums, may be null) += dy t and dy. */          \
  SN_CLONES void token_sums(const T* dy, const T* x, const T* w, int64_t len, T m, T r,       \
                            T* dw, T* db, double* s_g, double* s_gt) {               \
    T sg = 0, sgt = 0;                                                                         \
    if (w != nullptr && dw != nullptr && db != nullptr) { /* the usual case: one pass */       \
      _Pragma("omp simd reduction(+ : sg, sgt)") for (int64_t i = 0; i < len; ++i) {          \
        const T t = (x[i] - m) * r;                                                            \
        const T g = dy[i] * w[i];                                                              \
        sg += g;                                                                               \
        sgt += g * t;                                                                          \
        dw[i] += dy[i] * t;                                                                    \
        db[i] += dy[i];                                                                        \
      }                                                                                        \
      *s_g = sg;                                                                               \
      *s_gt = sgt;                                                                             \
      return;                                                                                  \
    }                                                                                          \
    if (w != nullptr) {                                                                        \
      _Pragma("omp simd reduction(+ : sg, sgt)") for (int64_t i = 0; i < len; ++i) {          \
        const T g = dy[i] * w[i];                                                              \
        sg += g;                                                                               \
        sgt += g * ((x[i] - m) * r);                                                           \
      }                                                                                        \
    } else {                                                                                   \
      _Pragma("omp simd reduction(+ : sg, sgt)") for (int64_t i = 0; i < len; ++i) {          \
        sg += dy[i];                                                                           \
        sgt += dy[i] * ((x[i] - m) * r);                                                       \
      }                                                                                        \
    }                                                                                          \
    if (dw != nullptr) {                                                                       \
      _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) dw[i] += dy[i] * ((x[i] - m) * r); \
    }                                                                                          \
    if (db != nullptr) {                                                                       \
      _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) db[i] += dy[i];                    \
    }                                                                                          \
    *s_g = sg;                                                                                 \
    *s_gt = sgt;                                                                               \
  }                                                                                            \
  SN_CLONES void token_dx(const T* dy, const T* x, const T* w, T* dx, int64_t len, T r, T a,  \
                          T p) {                                                               \
    if (w != nullptr) {                                                                        \
      _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) dx[i] = r * dy[i] * w[i] + a + p * x[i]; \
    } else {                                                                                   \
      _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) dx[i] = r * dy[i] + a + p * x[i];  \
    }                                                                                          \
  }

SN_TOKEN_KERNELS(float)
SN_TOKEN_KERNELS(double)

// The ratios of a pool and their sums: a (mean, ln members), b_ln and b_rms (variance).
struct TokenPool {
  std::vector<int64_t> kinds;
  std::vector<double> mr, vr;
  double a = 0.0, b_ln = 0.0, b_rms = 0.0;

  TokenPool(std::vector<int64_t> kinds_, std::vector<double> mean_ratios,
            std::vector<double> var_ratios)
      : kinds(std::move(kinds_)), mr(std::move(mean_ratios)), vr(std::move(var_ratios)) {
    TORCH_CHECK(!kinds.empty(), "normsearch_cpu: kinds is empty");
    TORCH_CHECK(mr.size() == kinds.size() && vr.size() == kinds.size(),
                "normsearch_cpu: mean and variance ratios need one value per kind");
    for (size_t k = 0; k < kinds.size(); ++k) {
      TORCH_CHECK(kinds[k] == LN || kinds[k] == RMS,
                  "normsearch_cpu: a token pool mixes ln and rms only, got kind code ", kinds[k]);
      if (kinds[k] == LN) {
        a += mr[k];
        b_ln += vr[k];
      } else {
        b_rms += vr[k];
      }
    }
  }
};

// softmax(logits / temperature) in double: K is 1-4, so a loop beats any ATen call.
std::vector<double> softmax(std::vector<double> z, double temperature) {
  TORCH_CHECK(temperature > 0.0, "normsearch_cpu: temperature must be > 0, got ", temperature);
  double top = -std::numeric_limits<double>::infinity(), total = 0.0;
  for (double& v : z) top = std::max(top, v /= temperature);
  for (double& v : z) total += (v = std::exp(v - top));
  for (double& v : z) v /= total;
  return z;
}

// The ratios from the op's inputs: logits under a softmax when temperature is given, else as is.
std::vector<double> ratios_of(const at::Tensor& values, std::optional<double> temperature) {
  std::vector<double> v = to_vector(values);
  return temperature.has_value() ? softmax(std::move(v), *temperature) : v;
}

// The gradient of the loss w.r.t. the inputs that gave `ratios`, from its gradient w.r.t. them:
// through the softmax Jacobian (r_j (g_j - sum_k r_k g_k) / T) when they were logits.
at::Tensor ratio_input_grad(std::vector<double> grad, const std::vector<double>& ratios,
                            std::optional<double> temperature, const at::Tensor& like) {
  if (temperature.has_value()) {
    double dot = 0.0;
    for (size_t k = 0; k < grad.size(); ++k) dot += ratios[k] * grad[k];
    for (size_t k = 0; k < grad.size(); ++k) grad[k] = ratios[k] * (grad[k] - dot) / *temperature;
  }
  at::Tensor out = at::empty({int64_t(grad.size())}, like.options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "normsearch_cpu_ratio_grad", [&] {
    scalar_t* p = out.data_ptr<scalar_t>();
    for (size_t k = 0; k < grad.size(); ++k) p[k] = static_cast<scalar_t>(grad[k]);
  });
  return out;
}

void check_tokens(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                  const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu(), "normsearch_cpu: x must be a CPU tensor");
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous(), "normsearch_cpu: x must be contiguous");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "normsearch_cpu: x must be float32 or float64, got ", x.scalar_type());
  const int64_t channels = x.size(-1);
  for (const auto* p : {&weight, &bias})
    if (p->has_value() && (*p)->defined())
      TORCH_CHECK((*p)->scalar_type() == x.scalar_type() && (*p)->is_contiguous() &&
                      (*p)->numel() == channels,
                  "normsearch_cpu: weight and bias must be contiguous (C,) tensors of x's dtype");
}

template <typename T>
const T* optional_data(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

// -> (y, stats): stats is (tokens, 4) float64: m, v, M, R per token.
std::tuple<at::Tensor, at::Tensor> forward_pass(const at::Tensor& x,
                                                const std::optional<at::Tensor>& weight,
                                                const std::optional<at::Tensor>& bias,
                                                const TokenPool& pool, double eps) {
  const int64_t len = x.size(-1), rows = len > 0 ? x.numel() / len : 0;
  at::Tensor y = at::empty_like(x);
  at::Tensor stats = at::empty({rows, 4}, x.options().dtype(at::kDouble));
  double* st = stats.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normsearch_cpu_token_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const scalar_t* wp = optional_data<scalar_t>(weight);
    const scalar_t* bp = optional_data<scalar_t>(bias);
    at::parallel_for(0, rows, grain(len), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        double m, v;
        row_moments(xp + r * len, len, &m, &v);
        const double mixed_mean = pool.a * m;
        const double rstd = 1.0 / std::sqrt(pool.b_ln * v + pool.b_rms * (v + m * m) + eps);
        double* s = st + 4 * r;
        s[0] = m, s[1] = v, s[2] = mixed_mean, s[3] = rstd;
        token_out(xp + r * len, yp + r * len, len, scalar_t(mixed_mean), scalar_t(rstd), wp, bp);
      }
    });
  });
  return {y, stats};
}

struct TokenGrads {
  at::Tensor x, weight, bias;           // undefined where not wanted
  std::vector<double> mean, var;        // w.r.t. the ratios; empty where not wanted
};

// wants: x, weight, bias, ratios.
TokenGrads backward_pass(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& stats,
                         const std::optional<at::Tensor>& weight, const TokenPool& pool,
                         std::array<bool, 4> wants) {
  const int64_t len = x.size(-1), rows = len > 0 ? x.numel() / len : 0;
  const bool has_weight = weight.has_value() && weight->defined();
  const bool want_w = wants[1] && has_weight, want_b = wants[2], want_ratios = wants[3];
  const double* st = stats.data_ptr<double>();
  // Per-thread column buffers (dweight, dbias; x's dtype, so the pass vectorizes as one type,
  // as ATen's layer norm accumulates) and ratio sums (double), reduced after the loop.
  const int threads = at::get_num_threads();
  const size_t kinds_n = pool.kinds.size();
  std::vector<double> part_mr(threads * kinds_n, 0.0), part_vr(threads * kinds_n, 0.0);
  TokenGrads grads;
  if (wants[0]) grads.x = at::empty_like(x);
  const double inv_len = 1.0 / double(std::max<int64_t>(len, 1));
  at::Tensor col_w = want_w ? at::zeros({threads, len}, x.options()) : at::Tensor();
  at::Tensor col_b = want_b ? at::zeros({threads, len}, x.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normsearch_cpu_token_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = dy.data_ptr<scalar_t>();
    const scalar_t* wp = optional_data<scalar_t>(weight);
    scalar_t* dxp = wants[0] ? grads.x.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, rows, grain(len), [&](int64_t begin, int64_t end) {
      const int thread = at::get_thread_num();
      scalar_t* dw = want_w ? col_w.data_ptr<scalar_t>() + thread * len : nullptr;
      scalar_t* db = want_b ? col_b.data_ptr<scalar_t>() + thread * len : nullptr;
      double* pm = part_mr.data() + thread * kinds_n;
      double* pv = part_vr.data() + thread * kinds_n;
      for (int64_t r = begin; r < end; ++r) {
        const double* s = st + 4 * r;
        const double m = s[0], v = s[1], mixed_mean = s[2], rstd = s[3];
        double s_g, s_gt;
        token_sums(gp + r * len, xp + r * len, wp, len, scalar_t(mixed_mean), scalar_t(rstd), dw,
                   db, &s_g, &s_gt);
        const double g_mean = -rstd * s_g, g_var = -0.5 * rstd * rstd * s_gt;
        if (want_ratios)
          for (size_t k = 0; k < kinds_n; ++k) {
            if (pool.kinds[k] == LN) {
              pm[k] += g_mean * m;
              pv[k] += g_var * v;
            } else {
              pv[k] += g_var * (v + m * m);
            }
          }
        if (dxp != nullptr) {
          const double shift = (pool.a * g_mean - 2.0 * pool.b_ln * g_var * m) * inv_len;
          const double slope = 2.0 * (pool.b_ln + pool.b_rms) * g_var * inv_len;
          token_dx(gp + r * len, xp + r * len, wp, dxp + r * len, len, scalar_t(rstd),
                   scalar_t(shift), scalar_t(slope));
        }
      }
    });
  });
  // The per-thread partial sums, added in double.
  auto column_sum = [&](const at::Tensor& cols) {
    return cols.sum(0, false, at::kDouble).to(x.scalar_type());
  };
  if (want_w) grads.weight = column_sum(col_w);
  if (want_b) grads.bias = column_sum(col_b);
  if (want_ratios) {
    grads.mean.assign(kinds_n, 0.0);
    grads.var.assign(kinds_n, 0.0);
    for (int t = 0; t < threads; ++t)
      for (size_t k = 0; k < kinds_n; ++k) {
        grads.mean[k] += part_mr[t * kinds_n + k];
        grads.var[k] += part_vr[t * kinds_n + k];
      }
  }
  return grads;
}

bool defined(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// The op without autograd (inference mode, where the Autograd key is skipped).
at::Tensor token_mixture_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& mean_in,
                             const at::Tensor& var_in, c10::IntArrayRef kinds, double eps,
                             std::optional<double> temperature) {
  check_tokens(x, weight, bias);
  const TokenPool pool(kinds.vec(), ratios_of(mean_in, temperature),
                       ratios_of(var_in, temperature));
  return std::get<0>(forward_pass(x, weight, bias, pool, eps));
}

// The autograd node of the op, in C++: no Python on either side of the step, and the ratios'
// softmax (when the inputs are logits) inside it rather than two more nodes.
class TokenMixture : public torch::autograd::Function<TokenMixture> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& mean_in,
                            const at::Tensor& var_in, c10::IntArrayRef kinds, double eps,
                            std::optional<double> temperature) {
    check_tokens(x, weight, bias);
    std::vector<double> mr = ratios_of(mean_in, temperature), vr = ratios_of(var_in, temperature);
    const TokenPool pool(kinds.vec(), mr, vr);
    auto [y, stats] = forward_pass(x, weight, bias, pool, eps);
    ctx->save_for_backward({x, stats, weight.value_or(at::Tensor()), mean_in, var_in});
    ctx->saved_data["kinds"] = kinds.vec();
    ctx->saved_data["mean_ratios"] = mr;
    ctx->saved_data["var_ratios"] = vr;
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["has_weight"] = defined(weight);
    ctx->saved_data["has_bias"] = defined(bias);
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "normsearch_cpu.token_mixture is once differentiable: no double backward "
                "(create_graph=True)");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &stats = saved[1], &mean_in = saved[3], &var_in = saved[4];
    const bool has_weight = ctx->saved_data["has_weight"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const std::optional<at::Tensor> weight =
        has_weight ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    const std::optional<double> temperature = ctx->saved_data["temperature"].toOptional<double>();
    const std::vector<double> mr = ctx->saved_data["mean_ratios"].toDoubleVector();
    const std::vector<double> vr = ctx->saved_data["var_ratios"].toDoubleVector();
    const TokenPool pool(ctx->saved_data["kinds"].toIntVector(), mr, vr);
    // Edges exist for the tensor inputs only: x, weight and bias where given, the two ratios.
    size_t edge = 0;
    const bool want_x = ctx->needs_input_grad(edge++);
    const bool want_w = has_weight && ctx->needs_input_grad(edge++);
    const bool want_b = has_bias && ctx->needs_input_grad(edge++);
    const bool want_mean = ctx->needs_input_grad(edge++);
    const bool want_var = ctx->needs_input_grad(edge++);
    const at::Tensor dy = grad_outputs[0].contiguous();
    TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
                "normsearch_cpu: the output gradient must match x");
    TokenGrads g = backward_pass(dy, x, stats, weight, pool,
                                 {want_x, want_w, want_b, want_mean || want_var});
    at::Tensor g_mean, g_var;
    if (want_mean) g_mean = ratio_input_grad(g.mean, mr, temperature, mean_in);
    if (want_var) g_var = ratio_input_grad(g.var, vr, temperature, var_in);
    return {g.x, g.weight, g.bias, g_mean, g_var, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor token_mixture_autograd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias,
                                  const at::Tensor& mean_in, const at::Tensor& var_in,
                                  c10::IntArrayRef kinds, double eps,
                                  std::optional<double> temperature) {
  return TokenMixture::apply(x, weight, bias, mean_in, var_in, kinds, eps, temperature);
}

}  // namespace

// token_mixture(x, weight, bias, mean, var, kinds, eps, temperature): mean and var are the ratios
// over kinds, or with a temperature the logits whose softmax(logits / temperature) they are.
TORCH_LIBRARY_FRAGMENT(normsearch_cpu, m) {
  m.def(
      "token_mixture(Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor var, "
      "int[] kinds, float eps, float? temperature=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(normsearch_cpu, CPU, m) { m.impl("token_mixture", &token_mixture_cpu); }

TORCH_LIBRARY_IMPL(normsearch_cpu, Autograd, m) {
  m.impl("token_mixture", &token_mixture_autograd);
}
