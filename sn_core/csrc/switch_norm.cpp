// The Switchable Normalization CPU kernel: both passes over x and the O(N*C) mixture in one call.
//
// Same mathematics as sn_core/functional.py + sn_core/mixture.py (docs/sn-spec.md sections 1, 7):
// y = scale[n,c] * (x - m[n,c]) + centred_shift[n,c], from the per-(n,c) moments (m, v) and the
// ratio-weighted statistics of each pool member. The O(N*C) work runs in double precision; the
// passes over x run in x's dtype (float32 or float64), rows split over ATen's intra-op threads.
// Registered as torch.ops.normsearch_cpu.{forward,backward}; sn_core/native.py builds and loads it.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <vector>

#include "rows.h"

namespace {

// Pool member codes, in sync with sn_core/native.py (KIND_CODES).
enum Kind : int64_t { IN = 0, LN = 1, BN = 2, GN = 3, RMS = 4 };

// ------------------------------------------------------------------------ row kernels over x
#define SN_ROW_KERNELS(T)                                                                      \
  SN_ROW_MOMENTS(T)                                                                            \
  SN_CLONES void row_affine(const T* x, T* y, int64_t len, T a, T m, T b) {                    \
    _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) y[i] = a * (x[i] - m) + b;           \
  }                                                                                            \
  SN_CLONES void row_grad_sums(const T* dy, const T* x, int64_t len, T m, double* s_dy,        \
                               double* s_dyxc) {                                               \
    T a = 0, b = 0;                                                                            \
    _Pragma("omp simd reduction(+ : a, b)") for (int64_t i = 0; i < len; ++i) {                \
      a += dy[i];                                                                              \
      b += dy[i] * (x[i] - m);                                                                 \
    }                                                                                          \
    *s_dy = a;                                                                                 \
    *s_dyxc = b;                                                                               \
  }                                                                                            \
  SN_CLONES void row_grad_x(const T* dy, const T* x, T* dx, int64_t len, T a, T p, T m, T q) { \
    _Pragma("omp simd") for (int64_t i = 0; i < len; ++i) dx[i] = a * dy[i] + p * (x[i] - m) + q; \
  }

SN_ROW_KERNELS(float)
SN_ROW_KERNELS(double)

struct Config {
  std::vector<int64_t> kinds;
  double eps;
  int64_t groups;
  bool batch_bn, reference;
  bool needs_moments() const {
    if (batch_bn) return true;
    for (int64_t k : kinds)
      if (k != BN) return true;
    return false;
  }
};

double unbias(int64_t count) { return count > 1 ? double(count) / double(count - 1) : 1.0; }

// ------------------------------------------------------------------------------- mixture
// Forward of the O(N*C) mixture; every per-kind statistic is kept broadcast to (N, C).
struct Mixture {
  int64_t n, c, len;
  Config cfg;
  const double* mean;  // (N, C) moments: mean and population variance
  const double* var;
  std::vector<double> weight, bias, mr, vr;
  std::vector<std::vector<double>> mu, sigma;
  std::vector<double> factor;
  std::vector<double> mixed_mean, rstd, scale, centred_shift;
  double var_factor = 1.0;
  int bn_index = -1;

  // Cells of an aggregated member: each cell's group index (no division per cell) and counts.
  std::vector<std::vector<int32_t>> cell_group;  // per kind; empty for IN and running BN
  int64_t group_count(int64_t kind) const {
    return kind == BN ? c : (kind == GN ? n * cfg.groups : n);
  }
  int64_t cells_per_group(int64_t kind) const {
    return kind == BN ? n : (kind == GN ? c / cfg.groups : c);
  }
  std::vector<int32_t> groups_of(int64_t kind) const {
    std::vector<int32_t> index(n * c);
    const int64_t per_group = kind == GN ? c / cfg.groups : c;
    for (int64_t i = 0, t = 0; i < n; ++i)
      for (int64_t j = 0, g = 0, left = per_group; j < c; ++j, ++t) {
        index[t] = static_cast<int32_t>(kind == BN ? j : (kind == GN ? i * cfg.groups + g : i));
        if (--left == 0) ++g, left = per_group;
      }
    return index;
  }

  Mixture(int64_t n_, int64_t c_, int64_t len_, Config cfg_, const double* mean_,
          const double* var_, std::vector<double> w, std::vector<double> b,
          std::vector<double> mr_, std::vector<double> vr_, const std::vector<double>& rm,
          const std::vector<double>& rv)
      : n(n_), c(c_), len(len_), cfg(std::move(cfg_)), mean(mean_), var(var_),
        weight(std::move(w)), bias(std::move(b)), mr(std::move(mr_)), vr(std::move(vr_)) {
    const int64_t cells = n * c;
    var_factor = cfg.reference && len > 1 ? unbias(len) : 1.0;
    std::vector<double> var_eff(var, var + cells);
    if (var_factor != 1.0)
      for (double& v : var_eff) v *= var_factor;
    const size_t kinds = cfg.kinds.size();
    mu.assign(kinds, std::vector<double>(cells));
    sigma.assign(kinds, std::vector<double>(cells));
    factor.assign(kinds, 1.0);
    cell_group.assign(kinds, {});
    for (size_t k = 0; k < kinds; ++k) {
      const int64_t kind = cfg.kinds[k];
      std::vector<double>& m = mu[k];
      std::vector<double>& s = sigma[k];
      if (kind == IN) {
        std::copy(mean, mean + cells, m.begin());
        s = var_eff;
      } else if (kind == BN && !cfg.batch_bn) {
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < c; ++j) m[i * c + j] = rm[j], s[i * c + j] = rv[j];
      } else {
        // Aggregates (law of total variance); RMS: uncentred, mean 0, E[x^2] = mean(v + m^2).
        if (kind == BN) bn_index = static_cast<int>(k);
        cell_group[k] = groups_of(kind);
        const std::vector<int32_t>& group = cell_group[k];
        const int64_t groups = group_count(kind), count = cells_per_group(kind);
        std::vector<double> gm(groups, 0.0), gs(groups, 0.0);
        if (kind != RMS)
          for (int64_t t = 0; t < cells; ++t) gm[group[t]] += mean[t];
        for (double& v : gm) v /= double(count);
        for (int64_t t = 0; t < cells; ++t) {
          const double d = mean[t] - gm[group[t]];
          gs[group[t]] += var_eff[t] + d * d;
        }
        factor[k] = kind != RMS && cfg.reference && len == 1 ? unbias(count) : 1.0;
        for (double& v : gs) v *= factor[k] / double(count);
        for (int64_t t = 0; t < cells; ++t) {
          m[t] = gm[group[t]];
          s[t] = gs[group[t]];
        }
      }
    }
    mixed_mean.assign(cells, 0.0);
    rstd.assign(cells, 0.0);
    scale.assign(cells, 0.0);
    std::vector<double> mixed_var(cells, 0.0);
    for (size_t k = 0; k < kinds; ++k)
      for (int64_t t = 0; t < cells; ++t) {
        mixed_mean[t] += mr[k] * mu[k][t];
        mixed_var[t] += vr[k] * sigma[k][t];
      }
    // centred_shift = shift + scale * m: y = scale * (x - m) + centred_shift cancels nothing.
    centred_shift.assign(cells, 0.0);
    for (int64_t i = 0, t = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j, ++t) {
        rstd[t] = 1.0 / std::sqrt(mixed_var[t] + cfg.eps);
        scale[t] = weight.empty() ? rstd[t] : rstd[t] * weight[j];
        const double shift = -(mixed_mean[t] - mean[t]) * scale[t];
        centred_shift[t] = bias.empty() ? shift : shift + bias[j];
      }
  }
};

Config make_config(c10::IntArrayRef kinds, double eps, int64_t groups, bool batch_bn,
                   bool reference, int64_t channels) {
  TORCH_CHECK(!kinds.empty(), "normsearch_cpu: kinds is empty");
  for (int64_t k : kinds)
    TORCH_CHECK(k >= IN && k <= RMS, "normsearch_cpu: unknown kind code ", k);
  for (int64_t k : kinds)
    TORCH_CHECK(k != GN || (groups >= 1 && channels % groups == 0), "normsearch_cpu: groups=",
                groups, " does not divide C=", channels);
  return Config{kinds.vec(), eps, groups, batch_bn, reference};
}

void check_x(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "normsearch_cpu: x must be a CPU tensor");
  TORCH_CHECK(x.dim() == 3, "normsearch_cpu: x must have shape (N, C, L), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "normsearch_cpu: x must be float32 or float64, got ", x.scalar_type());
}

Mixture make_mixture(const at::Tensor& x, const at::Tensor& moments, const Config& cfg,
                     const std::optional<at::Tensor>& weight,
                     const std::optional<at::Tensor>& bias, const at::Tensor& mean_ratios,
                     const at::Tensor& var_ratios, const std::optional<at::Tensor>& running_mean,
                     const std::optional<at::Tensor>& running_var) {
  const int64_t n = x.size(0), c = x.size(1), len = x.size(2);
  std::vector<double> mr = to_vector(mean_ratios), vr = to_vector(var_ratios);
  TORCH_CHECK(mr.size() == cfg.kinds.size() && vr.size() == cfg.kinds.size(),
              "normsearch_cpu: mean_ratios/var_ratios need one value per kind");
  std::vector<double> rm, rv;
  if (!cfg.batch_bn)
    for (int64_t k : cfg.kinds)
      if (k == BN) {
        rm = optional_vector(running_mean);
        rv = optional_vector(running_var);
        TORCH_CHECK(int64_t(rm.size()) == c && int64_t(rv.size()) == c,
                    "normsearch_cpu: running_mean/running_var (C,) are required");
      }
  std::vector<double> w = optional_vector(weight), b = optional_vector(bias);
  TORCH_CHECK(w.empty() || int64_t(w.size()) == c, "normsearch_cpu: weight must have C values");
  TORCH_CHECK(b.empty() || int64_t(b.size()) == c, "normsearch_cpu: bias must have C values");
  const double* m = moments.data_ptr<double>();
  return Mixture(n, c, len, cfg, m, m + n * c, std::move(w), std::move(b), std::move(mr),
                 std::move(vr), rm, rv);
}

// --------------------------------------------------------------------------------- ops
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& x_in, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mean_ratios,
    const at::Tensor& var_ratios, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, c10::IntArrayRef kinds, double eps,
    int64_t groups, bool batch_bn, bool reference) {
  check_x(x_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), c = x.size(1), len = x.size(2), rows = n * c;
  const Config cfg = make_config(kinds, eps, groups, batch_bn, reference, c);
  // (2, N, C) double: the moments, all backward needs besides x.
  at::Tensor moments = at::zeros({2, n, c}, x.options().dtype(at::kDouble));
  double* mean = moments.data_ptr<double>();
  double* var = mean + rows;
  at::Tensor y = at::empty_like(x);
  at::Tensor batch_mean_out, batch_var_out;  // undefined (None) unless BN uses the batch
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normsearch_cpu_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    if (cfg.needs_moments() && len > 0)
      at::parallel_for(0, rows, grain(len), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) row_moments(xp + r * len, len, mean + r, var + r);
      });
    const Mixture mix = make_mixture(x, moments, cfg, weight, bias, mean_ratios, var_ratios,
                                     running_mean, running_var);
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain(len), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        row_affine(xp + r * len, yp + r * len, len, scalar_t(mix.scale[r]), scalar_t(mean[r]),
                   scalar_t(mix.centred_shift[r]));
    });
    if (mix.bn_index >= 0) {
      at::Tensor bm = at::empty({c}, x.options()), bv = at::empty({c}, x.options());
      scalar_t* bmp = bm.data_ptr<scalar_t>();
      scalar_t* bvp = bv.data_ptr<scalar_t>();
      for (int64_t j = 0; j < c; ++j) {
        bmp[j] = scalar_t(mix.mu[mix.bn_index][j]);
        bvp[j] = scalar_t(mix.sigma[mix.bn_index][j]);
      }
      batch_mean_out = bm;
      batch_var_out = bv;
    }
  });
  return {y, batch_mean_out, batch_var_out, moments};
}

// Gradients from d/d(scale) = sum(dy * (x - m)) and d/d(centred shift) = sum(dy) per (n, c);
// then dx = scale * dy + (2 / L) * dvar * (x - m) + dmean / L. needs: x, weight, bias, ratios.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& moments,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& mean_ratios, const at::Tensor& var_ratios,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    c10::IntArrayRef kinds, double eps, int64_t groups, bool batch_bn, bool reference,
    std::array<bool, 4> needs) {
  check_x(x_in);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad_y = grad_y_in.contiguous().view(x.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(), "normsearch_cpu: grad_y dtype != x dtype");
  TORCH_CHECK(moments.scalar_type() == at::kDouble && moments.is_contiguous() &&
                  moments.numel() == 2 * x.size(0) * x.size(1),
              "normsearch_cpu: moments must be forward's (2, N, C) float64 tensor");
  const int64_t n = x.size(0), c = x.size(1), len = x.size(2), rows = n * c;
  const Config cfg = make_config(kinds, eps, groups, batch_bn, reference, c);
  const Mixture mix = make_mixture(x, moments, cfg, weight, bias, mean_ratios, var_ratios,
                                   running_mean, running_var);
  const double* mean = moments.data_ptr<double>();
  std::vector<double> s_dy(rows), s_dyxc(rows);
  at::Tensor grad_x, grad_w, grad_b, grad_mr, grad_vr;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normsearch_cpu_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grad_y.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain(len), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        row_grad_sums(gp + r * len, xp + r * len, len, scalar_t(mean[r]), &s_dy[r], &s_dyxc[r]);
    });
    // y = scale * (x - m) + (shift + scale * m): sums around m keep float32 accurate.
    std::vector<double> g_mm(rows), g_mv(rows), g_scale(rows);
    for (int64_t i = 0, t = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j, ++t) {
        g_scale[t] = s_dyxc[t] - (mix.mixed_mean[t] - mean[t]) * s_dy[t];
        g_mm[t] = -mix.scale[t] * s_dy[t];
        const double g_rstd = mix.weight.empty() ? g_scale[t] : g_scale[t] * mix.weight[j];
        const double r = mix.rstd[t];
        g_mv[t] = -0.5 * g_rstd * r * r * r;
      }
    const at::TensorOptions small = x.options();
    if (needs[1] && !mix.weight.empty()) {
      grad_w = at::zeros({c}, small.dtype(at::kDouble));
      double* p = grad_w.data_ptr<double>();
      for (int64_t i = 0, t = 0; i < n; ++i)
        for (int64_t j = 0; j < c; ++j, ++t) p[j] += g_scale[t] * mix.rstd[t];
      grad_w = grad_w.to(weight->scalar_type());
    }
    if (needs[2] && !mix.bias.empty()) {
      grad_b = at::zeros({c}, small.dtype(at::kDouble));
      double* p = grad_b.data_ptr<double>();
      for (int64_t i = 0, t = 0; i < n; ++i)
        for (int64_t j = 0; j < c; ++j, ++t) p[j] += s_dy[t];
      grad_b = grad_b.to(bias->scalar_type());
    }
    const int64_t kinds_n = static_cast<int64_t>(cfg.kinds.size());
    if (needs[3]) {
      grad_mr = at::empty({kinds_n}, small.dtype(at::kDouble));
      grad_vr = at::empty({kinds_n}, small.dtype(at::kDouble));
      double* pm = grad_mr.data_ptr<double>();
      double* pv = grad_vr.data_ptr<double>();
      for (int64_t k = 0; k < kinds_n; ++k) {
        double a = 0, b = 0;
        for (int64_t t = 0; t < rows; ++t) {
          a += g_mm[t] * mix.mu[k][t];
          b += g_mv[t] * mix.sigma[k][t];
        }
        pm[k] = a;
        pv[k] = b;
      }
      grad_mr = grad_mr.to(mean_ratios.scalar_type());
      grad_vr = grad_vr.to(var_ratios.scalar_type());
    }
    if (!needs[0]) return;
    std::vector<double> g_mean(rows, 0.0), g_var(rows, 0.0);
    if (cfg.needs_moments()) {
      for (int64_t k = 0; k < kinds_n; ++k) {
        const int64_t kind = cfg.kinds[k];
        const double a = mix.mr[k], b = mix.vr[k];
        if (kind == IN) {
          for (int64_t t = 0; t < rows; ++t) g_mean[t] += a * g_mm[t], g_var[t] += b * g_mv[t];
        } else if (kind == BN && !cfg.batch_bn) {
          continue;  // running statistics: constants
        } else {
          // mu = mean(m); sigma = mean(v) + mean((m - mu)^2): the mu path of the second term
          // vanishes because the deviations sum to zero. RMS: mu = 0, sigma = mean(v + m^2).
          const int64_t groups_n = mix.group_count(kind), count = mix.cells_per_group(kind);
          std::vector<double> gm(groups_n, 0.0), gs(groups_n, 0.0);
          const std::vector<int32_t>& group = mix.cell_group[k];
          for (int64_t t = 0; t < rows; ++t) {
            gm[group[t]] += a * g_mm[t];
            gs[group[t]] += b * g_mv[t];
          }
          for (int64_t g = 0; g < groups_n; ++g) {
            gm[g] /= double(count);
            gs[g] *= mix.factor[k] / double(count);
          }
          const std::vector<double>& mu_k = mix.mu[k];
          for (int64_t t = 0; t < rows; ++t) {
            const double gsum = gs[group[t]];
            if (kind == RMS) {
              g_mean[t] += 2.0 * gsum * mean[t];
            } else {
              g_mean[t] += gm[group[t]] + 2.0 * gsum * (mean[t] - mu_k[t]);
            }
            g_var[t] += gsum;
          }
        }
      }
      if (mix.var_factor != 1.0)
        for (double& v : g_var) v *= mix.var_factor;
    }
    grad_x = at::empty_like(x);
    scalar_t* dxp = grad_x.data_ptr<scalar_t>();
    const double inv_len = 1.0 / double(std::max<int64_t>(len, 1));
    at::parallel_for(0, rows, grain(len), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        row_grad_x(gp + r * len, xp + r * len, dxp + r * len, len, scalar_t(mix.scale[r]),
                   scalar_t(2.0 * g_var[r] * inv_len), scalar_t(mean[r]),
                   scalar_t(g_mean[r] * inv_len));
    });
  });
  return {grad_x, grad_w, grad_b, grad_mr, grad_vr};
}

}  // namespace

TORCH_LIBRARY(normsearch_cpu, m) {
  m.def(
      "forward(Tensor x, Tensor? weight, Tensor? bias, Tensor mean_ratios, Tensor var_ratios, "
      "Tensor? running_mean, Tensor? running_var, int[] kinds, float eps, int groups, "
      "bool batch_bn, bool reference) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_y, Tensor x, Tensor moments, Tensor? weight, Tensor? bias, "
      "Tensor mean_ratios, Tensor var_ratios, Tensor? running_mean, Tensor? running_var, "
      "int[] kinds, float eps, int groups, bool batch_bn, bool reference, bool[4] needs) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(normsearch_cpu, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
