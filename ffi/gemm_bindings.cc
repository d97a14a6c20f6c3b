// Python bindings of the GEMM family: FFI registrations and debug entry points for tests.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "gemm_handlers.h"
#include "jit_bindings.h"
#include "gemm_launcher.h"

namespace nb = nanobind;

namespace dgpt {
namespace {

template <typename T>
nb::capsule capsule(T* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}

nb::dict stages(XLA_FFI_Handler* instantiate, XLA_FFI_Handler* initialize, XLA_FFI_Handler* execute) {
  nb::dict d;
  d["instantiate"] = capsule(instantiate);
  d["initialize"] = capsule(initialize);
  d["execute"] = capsule(execute);
  return d;
}

GemmConfig make_config(const std::string& kind, int64_t m, int64_t n, int64_t k, int64_t num_groups, int64_t block_m,
                       int64_t block_n, int64_t num_stages, int64_t num_sms, int64_t num_k_splits,
                       int64_t num_multicast, int64_t pingpong) {
  GemmType type;
  const Status status = parse_gemm_type(kind, &type);
  if (!status.ok()) throw nb::value_error(status.message().c_str());
  const GemmConfig c =
      GemmConfig::make(type, m, n, k, num_groups, block_m, block_n, num_stages, num_sms, num_k_splits, num_multicast,
                       pingpong);
  const Status valid = validate(c);
  if (!valid.ok()) throw nb::value_error(valid.message().c_str());
  return c;
}

// The host side of one kernel (compile, load, prepare, launch) without XLA: for tests that run the
// launch path against a stand-in driver (tests/test_launcher_fake_driver.py).
struct LauncherForTests {
  std::unique_ptr<GemmKernel> kernel;
};

void check(const Status& status) {
  if (!status.ok()) throw std::runtime_error(status.message());
}

}  // namespace

void bind_gemm(nb::module_& m) {
  m.attr("MAX_SMEM_BYTES") = layout::kMaxSmemBytes;
  m.attr("BLOCK_K") = layout::kBlockK;
  m.attr("MAX_BLOCK_N") = kMaxBlockN;
  nb::list attributes;
  for (const std::string& name : handlers::instantiate_attribute_names()) attributes.append(name);
  m.attr("INSTANTIATE_ATTRIBUTES") = nb::tuple(attributes);

  m.def("registrations", []() {
    nb::dict d;
    d["dgpt_gemm"] = stages(dgpt_gemm_instantiate, dgpt_gemm_initialize, dgpt_gemm_execute);
    d["dgpt_m_grouped_contiguous"] =
        stages(dgpt_contiguous_instantiate, dgpt_contiguous_initialize, dgpt_contiguous_execute);
    d["dgpt_m_grouped_masked"] = stages(dgpt_masked_instantiate, dgpt_masked_initialize, dgpt_masked_execute);
    return d;
  }, "FFI target name -> {stage name: PyCapsule} for jax.ffi.register_ffi_target(platform='CUDA').");

  m.def("type_registrations", []() {
    nb::dict reg;
    reg["type_id"] = nb::capsule(reinterpret_cast<void*>(handlers::kernel_state_type_id()));
    reg["type_info"] = nb::capsule(const_cast<void*>(static_cast<const void*>(handlers::kernel_state_type_info())));
    nb::dict d;
    d["dgpt_kernel_state"] = reg;
    return d;
  }, "FFI state types for jax.ffi.register_ffi_type(platform='CUDA').");

  m.def("smem_size", [](int64_t block_m, int64_t block_n, int64_t num_stages, int64_t num_k_splits,
                        int64_t pingpong) {
    if (block_m <= 0 || block_n <= 0 || num_stages <= 0 || block_m > 256 || block_n > 256 || num_stages > 64 ||
        num_k_splits <= 0 || num_k_splits > 8 || (pingpong != 0 && pingpong != 1)) {
      throw nb::value_error(
          "smem_size: block_m and block_n must be in [1, 256], num_stages in [1, 64], num_k_splits in [1, 8], "
          "pingpong 0 or 1");
    }
    return layout::smem_size(block_m, block_n, num_stages, num_k_splits, pingpong);
  }, nb::arg("block_m"), nb::arg("block_n"), nb::arg("num_stages"), nb::arg("num_k_splits") = 1,
  nb::arg("pingpong") = 0,
  "Bytes of dynamic shared memory the kernel needs for this tile, stage count, split count and pingpong.");

  m.def("generate_source", [](const std::string& kind, int64_t m, int64_t n, int64_t k, int64_t num_groups,
                              int64_t block_m, int64_t block_n, int64_t num_stages, int64_t num_sms,
                              int64_t num_k_splits, int64_t num_multicast, int64_t pingpong) {
    return generate_source(make_config(kind, m, n, k, num_groups, block_m, block_n, num_stages, num_sms, num_k_splits,
                                       num_multicast, pingpong));
  }, nb::arg("kind"), nb::arg("m"), nb::arg("n"), nb::arg("k"), nb::arg("num_groups"), nb::arg("block_m"),
  nb::arg("block_n"), nb::arg("num_stages"), nb::arg("num_sms"), nb::arg("num_k_splits") = 1,
  nb::arg("num_multicast") = 1, nb::arg("pingpong") = 0);

  nb::class_<LauncherForTests>(m, "_LauncherForTests",
                               "One kernel's host side (compile, load, prepare device 0, launch) outside XLA; for "
                               "tests with a stand-in driver.")
      .def("__init__",
           [](LauncherForTests* self, const std::string& kind, int64_t m, int64_t n, int64_t k, int64_t num_groups,
              int64_t block_m, int64_t block_n, int64_t num_stages, int64_t num_sms, int64_t num_k_splits,
              int64_t num_multicast, int64_t pingpong) {
             const GemmConfig c = make_config(kind, m, n, k, num_groups, block_m, block_n, num_stages, num_sms,
                                              num_k_splits, num_multicast, pingpong);
             GemmKernel* kernel = nullptr;
             {
               nb::gil_scoped_release release;
               check(GemmKernel::create(c, &kernel));
             }
             new (self) LauncherForTests{std::unique_ptr<GemmKernel>(kernel)};
             check(self->kernel->prepare(0));
           },
           nb::arg("kind"), nb::arg("m"), nb::arg("n"), nb::arg("k"), nb::arg("num_groups"), nb::arg("block_m"),
           nb::arg("block_n"), nb::arg("num_stages"), nb::arg("num_sms"), nb::arg("num_k_splits") = 1,
           nb::arg("num_multicast") = 1, nb::arg("pingpong") = 0)
      .def("launch",
           [](const LauncherForTests& self, uintptr_t a, uintptr_t b, uintptr_t d, uintptr_t grouped_layout) {
             check(self.kernel->launch(nullptr, reinterpret_cast<const void*>(a), reinterpret_cast<const void*>(b),
                                       reinterpret_cast<void*>(d), reinterpret_cast<const int32_t*>(grouped_layout)));
           },
           nb::arg("a"), nb::arg("b"), nb::arg("d"), nb::arg("grouped_layout") = 0,
           "Launches on the null stream with these device addresses; raises RuntimeError on failure.");

  m.def("compile_gemm", [](const std::string& kind, int64_t m, int64_t n, int64_t k, int64_t num_groups,
                           int64_t block_m, int64_t block_n, int64_t num_stages, int64_t num_sms, bool ptxas_verbose,
                           int64_t num_k_splits, int64_t num_multicast, int64_t pingpong) {
    const GemmConfig c = make_config(kind, m, n, k, num_groups, block_m, block_n, num_stages, num_sms, num_k_splits,
                                     num_multicast, pingpong);
    jit::CubinEntry entry;
    Status status;
    {
      nb::gil_scoped_release release;
      status = compile(c, ptxas_verbose, &entry);
    }
    if (!status.ok()) throw std::runtime_error(status.message());
    return cubin_entry_dict(entry);
  }, nb::arg("kind"), nb::arg("m"), nb::arg("n"), nb::arg("k"), nb::arg("num_groups"), nb::arg("block_m"),
  nb::arg("block_n"), nb::arg("num_stages"), nb::arg("num_sms"), nb::arg("ptxas_verbose") = false,
  nb::arg("num_k_splits") = 1, nb::arg("num_multicast") = 1, nb::arg("pingpong") = 0,
  "JIT-compiles (or fetches from the cache) the kernel of one configuration; no GPU needed.");
}

}  // namespace dgpt
