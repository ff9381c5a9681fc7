// Decoding attention on a CPU: one query position per row, keys and values read once, at about twice the speed of
// PyTorch's SDPA for this shape (benchmarks/README-eval.md). Built on first use by hyplora.kernels
// (bindings.cpp), used by hyplora.harness.decode_attention.
//
//   out[b, h*G + g] = sum_t p_t v[b, h, t],  p = softmax_t(scale * q[b, h*G + g] . k[b, h, t]) over the t with mask[b, t]
//
// q: (B, H*G, 1, D) float32; k, v: (B, H, T, D) float32, unit stride in D (any other strides: a view of a larger
// cache); mask: (B, T) bool with unit stride in T (stride 0 in B allowed), or empty for "attend to every t".
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cfloat>
#include <cmath>
#include <vector>

namespace {

// One vector: 16 floats where AVX-512 is on (-march=native; 1.3-1.5x the 8-float form on an AMD EPYC, with K and V
// read from memory: benchmarks/README-eval.md), 8 elsewhere.
#ifdef __AVX512F__
constexpr int W = 16;
#else
constexpr int W = 8;
#endif
typedef float vec __attribute__((vector_size(4 * W)));

inline vec load(const float* p) {
  vec r;
  __builtin_memcpy(&r, p, sizeof(r));
  return r;
}

inline void store(float* p, vec x) { __builtin_memcpy(p, &x, sizeof(x)); }

inline float hsum(vec x) {
  float s = 0.f;
  for (int i = 0; i < W; ++i) s += x[i];
  return s;
}

// GC query heads (of one KV head) at once; the key pass keeps GC accumulators, the value pass GC x 4 vectors.
template <int GC, int D>
void query_chunk(const float* q, const float* k, const float* v, const bool* m, float* o, int64_t T, int64_t kt,
                 int64_t vt, float scale, float* s) {
  constexpr int L = D / W;
  float top[GC];
  for (int g = 0; g < GC; ++g) top[g] = -FLT_MAX;
  for (int64_t t = 0; t < T; ++t) {
    if (m && !m[t]) {
      for (int g = 0; g < GC; ++g) s[g * T + t] = -FLT_MAX;  // exp underflows to 0; no infinity under -ffast-math
      continue;
    }
    const float* kr = k + t * kt;
    vec acc[GC];
    for (int g = 0; g < GC; ++g) acc[g] = vec{};
    for (int l = 0; l < L; ++l) {
      const vec kv = load(kr + W * l);
      for (int g = 0; g < GC; ++g) acc[g] += load(q + g * D + W * l) * kv;
    }
    for (int g = 0; g < GC; ++g) {
      const float x = hsum(acc[g]) * scale;
      s[g * T + t] = x;
      top[g] = x > top[g] ? x : top[g];
    }
  }
  float total[GC];
  for (int g = 0; g < GC; ++g) {
    float* sg = s + g * T;
    const float shift = top[g];
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t t = 0; t < T; ++t) {
      const float e = expf(sg[t] - shift);
      sg[t] = e;
      sum += e;
    }
    total[g] = sum;
  }
  constexpr int BLOCKS = L < 4 ? L : 4;
  for (int l0 = 0; l0 < L; l0 += BLOCKS) {
    vec acc[GC][BLOCKS];
    for (int g = 0; g < GC; ++g)
      for (int l = 0; l < BLOCKS; ++l) acc[g][l] = vec{};
    for (int64_t t = 0; t < T; ++t) {
      const float* vr = v + t * vt + W * l0;
      vec vv[BLOCKS];
      for (int l = 0; l < BLOCKS; ++l) vv[l] = load(vr + W * l);
      for (int g = 0; g < GC; ++g) {
        const float p = s[g * T + t];
        for (int l = 0; l < BLOCKS; ++l) acc[g][l] += p * vv[l];
      }
    }
    for (int g = 0; g < GC; ++g) {
      const float inv = 1.f / total[g];
      for (int l = 0; l < BLOCKS; ++l) store(o + g * D + W * (l0 + l), acc[g][l] * inv);
    }
  }
}

template <int D>
void attend(const float* q, const float* k, const float* v, const bool* mask, float* out, int64_t B, int64_t H,
            int64_t G, int64_t T, const int64_t* ks, const int64_t* vs, int64_t mb, float scale) {
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(4 * T);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float* kp = k + b * ks[0] + h * ks[1];
      const float* vp = v + b * vs[0] + h * vs[1];
      const bool* m = mask ? mask + b * mb : nullptr;
      for (int64_t g = 0; g < G; g += 4) {
        const float* qg = q + (bh * G + g) * D;
        float* og = out + (bh * G + g) * D;
        switch (G - g < 4 ? G - g : 4) {
          case 1: query_chunk<1, D>(qg, kp, vp, m, og, T, ks[2], vs[2], scale, s.data()); break;
          case 2: query_chunk<2, D>(qg, kp, vp, m, og, T, ks[2], vs[2], scale, s.data()); break;
          case 3: query_chunk<3, D>(qg, kp, vp, m, og, T, ks[2], vs[2], scale, s.data()); break;
          default: query_chunk<4, D>(qg, kp, vp, m, og, T, ks[2], vs[2], scale, s.data()); break;
        }
      }
    }
  });
}

}  // namespace

torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1, "q (B, H*G, 1, D), k and v (B, H, T, D)");
  TORCH_CHECK(q.scalar_type() == torch::kFloat && k.scalar_type() == torch::kFloat && v.scalar_type() == torch::kFloat,
              "float32 only");
  TORCH_CHECK(k.sizes() == v.sizes() && k.stride(3) == 1 && v.stride(3) == 1, "k and v: same shape, unit stride in D");
  const int64_t B = k.size(0), H = k.size(1), T = k.size(2), D = k.size(3);
  TORCH_CHECK(q.size(0) == B && q.size(1) % H == 0 && q.size(3) == D, "q does not match k");
  const int64_t G = q.size(1) / H;
  q = q.contiguous();
  const bool* m = nullptr;
  int64_t mb = 0;
  if (mask.numel()) {
    TORCH_CHECK(mask.scalar_type() == torch::kBool && mask.dim() == 2 && mask.size(1) == T && mask.stride(1) == 1,
                "mask (B, T) bool");
    m = mask.data_ptr<bool>();
    mb = mask.size(0) == 1 ? 0 : mask.stride(0);
  }
  auto out = torch::empty_like(q);
  const int64_t ks[3] = {k.stride(0), k.stride(1), k.stride(2)}, vs[3] = {v.stride(0), v.stride(1), v.stride(2)};
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (D == 64) attend<64>(qp, kp, vp, m, op, B, H, G, T, ks, vs, mb, (float)scale);
  else if (D == 128) attend<128>(qp, kp, vp, m, op, B, H, G, T, ks, vs, mb, (float)scale);
  else if (D == 256) attend<256>(qp, kp, vp, m, op, B, H, G, T, ks, vs, mb, (float)scale);
  else TORCH_CHECK(false, "head_dim 64, 128 or 256");
  return out;
}
