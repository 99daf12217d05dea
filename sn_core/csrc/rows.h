// Shared by the SN CPU kernels (switch_norm.cpp, token_norm.cpp): per-ISA clones of the row
// passes over x, the moments of one row, the rows per parallel task, and small tensors as doubles.
// Internal linkage (an anonymous namespace): each translation unit has its own copy.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <vector>

// One function per dtype, cloned for AVX-512/AVX2/baseline and picked at load time (ifunc), so
// the library runs on any x86-64 machine; the simd pragmas let the reductions vectorize.

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SN_CLONES
#endif

// The mean and population variance of one row, in double (x's dtype inside the passes).
#define SN_ROW_MOMENTS(T)                                                                      \
  SN_CLONES void row_moments(const T* x, int64_t len, double* mean, double* var) {             \
    T sum = 0;                                                                                 \
    _Pragma("omp simd reduction(+ : sum)") for (int64_t i = 0; i < len; ++i) sum += x[i];      \
    const T m = sum / static_cast<T>(len);                                                     \
    T sq = 0, res = 0; /* res: the rounding residual of m, folded back into the moments */    \
    _Pragma("omp simd reduction(+ : sq, res)") for (int64_t i = 0; i < len; ++i) {             \
      const T d = x[i] - m;                                                                    \
      res += d;                                                                                \
      sq += d * d;                                                                             \
    }                                                                                          \
    const double r = static_cast<double>(res) / static_cast<double>(len);                      \
    *mean = static_cast<double>(m) + r;                                                        \
    *var = std::max(static_cast<double>(sq) / static_cast<double>(len) - r * r, 0.0);          \
  }

namespace {

// Rows per task so that each task touches at least ~32K elements (small maps stay serial).
int64_t grain(int64_t len) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(len, 1)); }

// ------------------------------------------------------------------------- small tensors
// A small 1-D float32/float64 tensor (any stride) as doubles, without an ATen dispatch.
std::vector<double> to_vector(const at::Tensor& t) {
  const int64_t size = t.numel();
  std::vector<double> out(size);
  if (t.dim() == 1 && t.scalar_type() == at::kFloat) {
    const float* p = t.data_ptr<float>();
    for (int64_t i = 0, s = t.stride(0); i < size; ++i) out[i] = p[i * s];
  } else if (t.dim() == 1 && t.scalar_type() == at::kDouble) {
    const double* p = t.data_ptr<double>();
    for (int64_t i = 0, s = t.stride(0); i < size; ++i) out[i] = p[i * s];
  } else {
    const at::Tensor c = t.detach().to(at::kDouble).contiguous();
    std::copy(c.data_ptr<double>(), c.data_ptr<double>() + size, out.begin());
  }
  return out;
}

std::vector<double> optional_vector(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? to_vector(*t) : std::vector<double>();
}

}  // namespace
