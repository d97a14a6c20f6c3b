// The Python extension jax_dgpt._C: FFI registrations and a few debug bindings. No logic lives here.
#include <nanobind/nanobind.h>

namespace dgpt {
void bind_jit(nanobind::module_& m);   // jit_bindings.cc: JIT compiler and cache, GEMM-agnostic
void bind_gemm(nanobind::module_& m);  // gemm_bindings.cc: FFI handlers and GEMM launcher
void bind_quantize(nanobind::module_& m);  // quantize_bindings.cc: the training recipes' quantization kernels
}  // namespace dgpt

NB_MODULE(_C, m) {
  m.doc() = "jax_dgpt native extension: XLA FFI handlers and the kernel JIT";
  dgpt::bind_jit(m);
  dgpt::bind_gemm(m);
  dgpt::bind_quantize(m);
}
