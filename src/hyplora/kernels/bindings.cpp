// The Python module of hyplora.kernels: one extension, one build, for every kernel in this folder.
#include <torch/extension.h>

torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor mask, double scale);
void lorentz_branch_(torch::Tensor result, torch::Tensor x, torch::Tensor weight_a, torch::Tensor weight_b, bool seed,
                     double sqrt_k, double scaling, int64_t input_scaling, double log_scale, double max_tangent_norm,
                     double unit_eps, double taylor_below);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "decoding attention (hyplora.harness.decode_attention)");
  m.def("lorentz_branch_", &lorentz_branch_, "the seed/llr HypLoRA branch, in place (hyplora.adapter.layer)");
}
