// Python bindings of the GEMM family: FFI registrations, the configuration's rules and limits, and
// debug entry points for tests. Every entry point takes the kernel configuration as one dict with the
// fields of jax_dgpt.kernel_config.KernelConfig (KernelConfig.as_attribute()).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "gemm_handlers.h"
#include "gemm_launcher.h"
#include "jit_bindings.h"
#include "kernel_config.h"

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

// A Python dict of the config's fields as a KernelConfig, not yet checked; ValueError on a missing,
// extra or mistyped field.
KernelConfig decode_config(const nb::dict& dict) {
  auto get_int = [&](const char* name, long long* value) -> Status {
    if (!dict.contains(name)) return Status::Error(std::string("config lacks field '") + name + "'");
    nb::handle item = dict[name];
    if (!nb::isinstance<nb::int_>(item) || nb::isinstance<nb::bool_>(item)) {
      return Status::Error(std::string("config field '") + name + "' must be an int");
    }
    *value = nb::cast<long long>(item);
    return Status::Ok();
  };
  auto get_layout = [&](std::string* layout) -> Status {
    if (!dict.contains("layout") || !nb::isinstance<nb::str>(dict["layout"])) {
      return Status::Error("config field 'layout' must be a str");
    }
    *layout = nb::cast<std::string>(dict["layout"]);
    return Status::Ok();
  };
  KernelConfig config;
  const Status status = read_config(dict.size(), get_int, get_layout, &config);
  if (!status.ok()) throw nb::value_error(status.message().c_str());
  return config;
}

// decode_config, then the validity rules (ValueError naming the rule).
KernelConfig checked_config(const nb::dict& dict) {
  const KernelConfig config = decode_config(dict);
  const Status valid = check_config(config);
  if (!valid.ok()) throw nb::value_error(valid.message().c_str());
  return config;
}

// The host side of one kernel (compile, load, prepare, launch) without XLA: for tests that run the
// launch path against a stand-in driver (tests/test_launcher_fake_driver.py).
struct LauncherForTests {
  std::unique_ptr<GemmKernel> kernel;
};

void check(const Status& status) {
  if (!status.ok()) throw std::runtime_error(status.message());
}

void bind_config(nb::module_& m) {
  m.def("config_fields", []() {
    nb::list names;
    for (const std::string& name : config_field_names()) names.append(name);
    return nb::tuple(names);
  }, "The kernel configuration's field names, in declaration order (kernels/kernel_config.cuh).");

  m.def("limits", []() {
    nb::dict d;
    for (const auto& [name, value] : config_limits()) d[name.c_str()] = value;
    return d;
  }, "Every limit of the kernel configuration (block sizes, alignments, shared memory), by name.");

  m.def("check_config", [](const nb::dict& dict) -> nb::object {
    const Status valid = check_config(decode_config(dict));
    if (valid.ok()) return nb::none();
    return nb::str(valid.message().c_str());
  }, nb::arg("config"),
  "None when the config is valid, else the rule it breaks. Raises ValueError for a malformed dict.");

  m.def("launch_shape", [](const nb::dict& dict) {
    const KernelConfig config = checked_config(dict);
    nb::dict d;
    d["smem_bytes"] = smem_size(config);
    d["threads"] = num_threads(config);
    d["cluster_size"] = cluster_size(config);
    return d;
  }, nb::arg("config"), "Dynamic shared memory (bytes), threads per CTA and cluster size of a valid config's kernel.");

  m.def("generate_source", [](const nb::dict& dict) { return generate_source(checked_config(dict)); },
        nb::arg("config"), "The translation unit the JIT compiles for a valid config.");

  m.def("compile_gemm", [](const nb::dict& dict, bool ptxas_verbose) {
    const KernelConfig config = checked_config(dict);
    jit::CubinEntry entry;
    Status status;
    {
      nb::gil_scoped_release release;
      status = compile(config, ptxas_verbose, &entry);
    }
    if (!status.ok()) throw std::runtime_error(status.message());
    return cubin_entry_dict(entry);
  }, nb::arg("config"), nb::arg("ptxas_verbose") = false,
  "JIT-compiles (or fetches from the cache) the kernel of a valid config; no GPU needed.");
}

}  // namespace

void bind_gemm(nb::module_& m) {
  m.def("registrations", []() {
    nb::dict d;
    d["dgpt_gemm_normal"] = stages(dgpt_normal_instantiate, dgpt_initialize, dgpt_execute);
    d["dgpt_gemm_contiguous"] =
        stages(dgpt_contiguous_instantiate, dgpt_initialize, dgpt_execute);
    d["dgpt_gemm_masked"] = stages(dgpt_masked_instantiate, dgpt_initialize, dgpt_execute);
    d["dgpt_gemm_k_grouped"] = stages(dgpt_k_grouped_instantiate, dgpt_initialize, dgpt_execute);
    d["dgpt_gemm_ragged"] = stages(dgpt_ragged_instantiate, dgpt_initialize, dgpt_execute);
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

  bind_config(m);

  nb::class_<LauncherForTests>(m, "_LauncherForTests",
                               "One kernel's host side (compile, load, prepare device 0, launch) outside XLA; for "
                               "tests with a stand-in driver.")
      .def("__init__",
           [](LauncherForTests* self, const nb::dict& dict) {
             const KernelConfig config = checked_config(dict);
             GemmKernel* kernel = nullptr;
             {
               nb::gil_scoped_release release;
               check(GemmKernel::create(config, &kernel));
             }
             new (self) LauncherForTests{std::unique_ptr<GemmKernel>(kernel)};
             check(self->kernel->prepare(0));
           },
           nb::arg("config"))
      .def("launch",
           [](const LauncherForTests& self, uintptr_t a, uintptr_t b, uintptr_t d, uintptr_t grouped_layout,
              uintptr_t scale_a, uintptr_t scale_b) {
             GemmOperands operands;
             operands.a = reinterpret_cast<const void*>(a);
             operands.b = reinterpret_cast<const void*>(b);
             operands.d = reinterpret_cast<void*>(d);
             operands.grouped_layout = reinterpret_cast<const int32_t*>(grouped_layout);
             // Per-tensor scales (stride 0) when given.
             operands.scale_a.data = reinterpret_cast<const float*>(scale_a);
             operands.scale_b.data = reinterpret_cast<const float*>(scale_b);
             check(self.kernel->launch(nullptr, operands));
           },
           nb::arg("a"), nb::arg("b"), nb::arg("d"), nb::arg("grouped_layout") = 0, nb::arg("scale_a") = 0,
           nb::arg("scale_b") = 0,
           "Launches on the null stream with these device addresses (scales per tensor); raises RuntimeError on "
           "failure.");
}

}  // namespace dgpt
