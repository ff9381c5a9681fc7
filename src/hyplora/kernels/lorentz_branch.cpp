// The HypLoRA branch of the `seed` and `llr` forms for inference on a CPU: two GEMMs (LoRA's own) around per-row
// loops, in place of the ~70 small tensor operations of hyplora.adapter.layer's autograd path (whose maths this
// follows line for line; see that module's docstring). Built on first use by hyplora.kernels.
//
//   v = x / m, m = max(max_i |x_i|, FLT_MIN); n = |v|; u = g v (g: the input scaling's per-row gain)
//   seed: h = sqrt(K) cosh(t) a_0 + sigma (v A_s^T), z = (sqrt(|h|^2 + K), h); llr: z = sigma (v A^T)
//         with t = min(g n, sqrt(K) c) / sqrt(K) and sigma = sinhc(t) g (or sinh(t) sqrt(K) / n past the clip c)
//   y = z B^T; result += scaling * arsinhc(|y| / sqrt(K)) * y
//
// x: (T, in) and result: (T, out), float32, contiguous; A: (r, in + seed), B: (out, r + seed), float32.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace {

constexpr int64_t GRAIN = 16;  // rows per task

inline float sinhc(float t, float below) { return std::fabs(t) < below ? 1.f + t * t / 6.f : std::sinh(t) / t; }

inline float arsinhc(float t, float below) { return std::fabs(t) < below ? 1.f - t * t / 6.f : std::asinh(t) / t; }

template <typename Body>
void for_each_row(int64_t rows, const Body& body) {
  at::parallel_for(0, rows, GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i);
  });
}

}  // namespace

// Input scaling codes: 0 none (g = m), 1 unit (g = min(e^s, 10) / max(n, unit_eps / m)), 2 rms (g = e^-s m / sqrt(in)).
void lorentz_branch_(torch::Tensor result, torch::Tensor x, torch::Tensor weight_a, torch::Tensor weight_b, bool seed,
                     double sqrt_k, double scaling, int64_t input_scaling, double log_scale, double max_tangent_norm,
                     double unit_eps, double taylor_below) {
  TORCH_CHECK(x.dim() == 2 && result.dim() == 2 && x.size(0) == result.size(0), "x (T, in), result (T, out)");
  for (const auto& t : {result, x, weight_a, weight_b})
    TORCH_CHECK(t.scalar_type() == torch::kFloat && t.device().is_cpu(), "float32 CPU tensors only");
  TORCH_CHECK(x.is_contiguous() && result.is_contiguous(), "x and result must be contiguous");
  const int64_t T = x.size(0), in = x.size(1), out = result.size(1), r = weight_a.size(0);
  TORCH_CHECK(weight_a.dim() == 2 && weight_a.size(1) == in + seed, "A must be (r, in + 1) for seed, (r, in) for llr");
  TORCH_CHECK(weight_b.dim() == 2 && weight_b.size(0) == out && weight_b.size(1) == r + seed, "B does not match A");
  TORCH_CHECK(input_scaling >= 0 && input_scaling <= 2, "input_scaling: 0 none, 1 unit, 2 rms");
  if (T == 0) return;

  auto v = torch::empty_like(x);
  std::vector<float> row_max(T), norm(T);
  const float* xp = x.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  for_each_row(T, [&](int64_t i) {
    const float* xr = xp + i * in;
    float* vr = vp + i * in;
    float top = 0.f;
#pragma omp simd reduction(max : top)
    for (int64_t j = 0; j < in; ++j) top = std::max(top, std::fabs(xr[j]));
    const float m = std::max(top, FLT_MIN), inv = 1.f / m;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < in; ++j) {
      vr[j] = xr[j] * inv;
      sum += vr[j] * vr[j];
    }
    row_max[i] = m;
    norm[i] = std::sqrt(sum);
  });

  auto va = torch::mm(v, (seed ? weight_a.narrow(1, 1, in) : weight_a).t());  // (T, r)
  auto z = torch::empty({T, r + seed}, x.options());
  const float sk = (float)sqrt_k, limit = sk * (float)max_tangent_norm, below = (float)taylor_below;
  const float unit_gain = std::min(std::exp((float)log_scale), 10.f);
  const float rms_gain = std::exp(-(float)log_scale) / std::sqrt((float)in);
  const float* vap = va.data_ptr<float>();
  const auto a0 = seed ? weight_a.select(1, 0).contiguous() : torch::Tensor();
  const float* a0p = seed ? a0.data_ptr<float>() : nullptr;
  float* zp = z.data_ptr<float>();
  for_each_row(T, [&](int64_t i) {
    const float n = norm[i], m = row_max[i];
    const float g = input_scaling == 0   ? m
                    : input_scaling == 1 ? unit_gain / std::max(n, (float)unit_eps / m)
                                         : rms_gain * m;
    const float tangent = g * n;
    const bool over = tangent > limit;
    const float theta = std::min(tangent, limit) / sk;
    const float sigma = sinhc(theta, below) * (over ? limit / n : g);
    const float* var = vap + i * r;
    float* zr = zp + i * (r + seed);
    if (seed) {
      const float time = sk * std::cosh(theta);
      float sum = 0.f;
      for (int64_t j = 0; j < r; ++j) {
        const float h = time * a0p[j] + sigma * var[j];
        zr[j + 1] = h;
        sum += h * h;
      }
      zr[0] = std::sqrt(sum + sk * sk);
    } else {
      for (int64_t j = 0; j < r; ++j) zr[j] = sigma * var[j];
    }
  });

  auto y = torch::mm(z, weight_b.t());  // (T, out)
  const float* yp = y.data_ptr<float>();
  float* rp = result.data_ptr<float>();
  for_each_row(T, [&](int64_t i) {
    const float* yr = yp + i * out;
    float* rr = rp + i * out;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < out; ++j) sum += yr[j] * yr[j];
    const float phi = (float)scaling * arsinhc(std::sqrt(sum) / sk, below);
#pragma omp simd
    for (int64_t j = 0; j < out; ++j) rr[j] += phi * yr[j];
  });
}
