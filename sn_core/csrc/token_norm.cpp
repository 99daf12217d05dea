// The token SN CPU kernel: a free token layer over a per-token pool (ln, rms) in one call each way.
//
// Same mathematics as sn_core/token_kernel.py (docs/sn-spec.md section 8). Per token (a row of C
// channels) with moments m, v: M = sum_k a_k mu_k (ln: mu = m, rms: 0), V = sum_k b_k sigma_k
// (ln: v, rms: v + m^2), R = 1 / sqrt(V + eps), y = (x - M) R w + b. The backward needs the two
// row sums S_g = sum g and S_gt = sum g t (g = dy w, t = (x - M) R), from which
//   dL/dM = -R S_g,  dL/dV = -R^2 S_gt / 2,
//   dx = R g + (a dL/dM - 2 b_ln dL/dV m) / C + 2 (b_ln + b_rms) dL/dV x / C,
// the ratio gradients sum dL/dM mu_k and dL/dV sigma_k over tokens, and dweight / dbias sum
// dy t / dy over tokens in per-thread column buffers (x's dtype). Saves x and four doubles per token (m, v,
// M, R). Registered as torch.ops.normsearch_cpu.token_{forward,backward}.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>
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

// The ratio sums of a pool: a (mean, ln members), b_ln and b_rms (variance).
struct TokenPool {
  std::vector<int64_t> kinds;
  std::vector<double> mr, vr;
  double a = 0.0, b_ln = 0.0, b_rms = 0.0;

  TokenPool(c10::IntArrayRef kinds_, const at::Tensor& mean_ratios, const at::Tensor& var_ratios)
      : kinds(kinds_.vec()), mr(to_vector(mean_ratios)), vr(to_vector(var_ratios)) {
    TORCH_CHECK(!kinds.empty(), "normsearch_cpu: kinds is empty");
    TORCH_CHECK(mr.size() == kinds.size() && vr.size() == kinds.size(),
                "normsearch_cpu: mean_ratios/var_ratios need one value per kind");
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
std::tuple<at::Tensor, at::Tensor> token_forward(const at::Tensor& x,
                                                 const std::optional<at::Tensor>& weight,
                                                 const std::optional<at::Tensor>& bias,
                                                 const at::Tensor& mean_ratios,
                                                 const at::Tensor& var_ratios,
                                                 c10::IntArrayRef kinds, double eps) {
  check_tokens(x, weight, bias);
  const TokenPool pool(kinds, mean_ratios, var_ratios);
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

// needs: (x, weight, bias, ratios) -> (dx, dweight, dbias, dmean_ratios, dvar_ratios); the
// gradients not needed are undefined tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& stats,
    const std::optional<at::Tensor>& weight, const at::Tensor& mean_ratios,
    const at::Tensor& var_ratios, c10::IntArrayRef kinds, std::array<bool, 4> needs) {
  check_tokens(x, weight, std::nullopt);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
              "normsearch_cpu: grad_y must match x");
  const at::Tensor dy = grad_y.contiguous();
  const TokenPool pool(kinds, mean_ratios, var_ratios);
  const int64_t len = x.size(-1), rows = len > 0 ? x.numel() / len : 0;
  const bool has_weight = weight.has_value() && weight->defined();
  const bool want_w = needs[1] && has_weight, want_b = needs[2], want_ratios = needs[3];
  TORCH_CHECK(stats.scalar_type() == at::kDouble && stats.is_contiguous() &&
                  stats.numel() == 4 * rows,
              "normsearch_cpu: stats must be the (tokens, 4) float64 of token_forward");
  const double* st = stats.data_ptr<double>();
  // Per-thread column buffers (dweight, dbias; x's dtype, so the pass vectorizes as one type,
  // as ATen's layer norm accumulates) and ratio sums (double), reduced after the loop.
  const int threads = at::get_num_threads();
  const size_t kinds_n = pool.kinds.size();
  std::vector<double> part_mr(threads * kinds_n, 0.0), part_vr(threads * kinds_n, 0.0);
  at::Tensor grad_x = needs[0] ? at::empty_like(x) : at::Tensor();
  const double inv_len = 1.0 / double(std::max<int64_t>(len, 1));
  at::Tensor col_w = want_w ? at::zeros({threads, len}, x.options()) : at::Tensor();
  at::Tensor col_b = want_b ? at::zeros({threads, len}, x.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normsearch_cpu_token_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = dy.data_ptr<scalar_t>();
    const scalar_t* wp = optional_data<scalar_t>(weight);
    scalar_t* dxp = needs[0] ? grad_x.data_ptr<scalar_t>() : nullptr;
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
  at::Tensor grad_w = want_w ? column_sum(col_w) : at::Tensor();
  at::Tensor grad_b = want_b ? column_sum(col_b) : at::Tensor();
  at::Tensor grad_mr, grad_vr;
  if (want_ratios) {
    grad_mr = at::zeros({int64_t(kinds_n)}, mean_ratios.options().dtype(at::kDouble));
    grad_vr = at::zeros({int64_t(kinds_n)}, var_ratios.options().dtype(at::kDouble));
    double* gm = grad_mr.data_ptr<double>();
    double* gv = grad_vr.data_ptr<double>();
    for (int t = 0; t < threads; ++t)
      for (size_t k = 0; k < kinds_n; ++k) gm[k] += part_mr[t * kinds_n + k], gv[k] += part_vr[t * kinds_n + k];
    grad_mr = grad_mr.to(mean_ratios.scalar_type());
    grad_vr = grad_vr.to(var_ratios.scalar_type());
  }
  return {grad_x, grad_w, grad_b, grad_mr, grad_vr};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(normsearch_cpu, m) {
  m.def(
      "token_forward(Tensor x, Tensor? weight, Tensor? bias, Tensor mean_ratios, "
      "Tensor var_ratios, int[] kinds, float eps) -> (Tensor, Tensor)");
  m.def(
      "token_backward(Tensor grad_y, Tensor x, Tensor stats, Tensor? weight, "
      "Tensor mean_ratios, Tensor var_ratios, int[] kinds, bool[4] needs) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(normsearch_cpu, CPU, m) {
  m.impl("token_forward", &token_forward);
  m.impl("token_backward", &token_backward);
}
