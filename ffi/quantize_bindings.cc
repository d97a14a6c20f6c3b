// Python bindings of the quantization kernels: FFI registrations, the configuration's rules and limits, and a
// compile entry point for CPU tests. The configuration travels as a dict of jax_dgpt.quantize's fields.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <stdexcept>
#include <string>

#include "jit_bindings.h"
#include "quantize.h"

namespace nb = nanobind;

namespace dgpt {
namespace {

quant::QuantizeConfig decode(const nb::dict& dict, bool check) {
  auto get_int = [&](const char* name, long long* value) -> Status {
    if (!dict.contains(name)) return Status::Error(std::string("quantize config lacks field '") + name + "'");
    nb::handle item = dict[name];
    if (!nb::isinstance<nb::int_>(item) || nb::isinstance<nb::bool_>(item)) {
      return Status::Error(std::string("quantize config field '") + name + "' must be an int");
    }
    *value = nb::cast<long long>(item);
    return Status::Ok();
  };
  quant::QuantizeConfig config;
  Status status = quant::read_quantize_config(dict.size(), get_int, &config);
  if (status.ok() && check) status = quant::check_quantize_config(config);
  if (!status.ok()) throw nb::value_error(status.message().c_str());
  return config;
}

nb::capsule capsule(XLA_FFI_Handler* fn) { return nb::capsule(reinterpret_cast<void*>(fn)); }

}  // namespace

void bind_quantize(nb::module_& m) {
  m.def("quantize_registrations", []() {
    nb::dict d;
    for (const auto& [name, execute] : {std::pair{"dgpt_quantize_rows", dgpt_quantize_rows_execute},
                                        std::pair{"dgpt_cast_transpose", dgpt_cast_transpose_execute}}) {
      nb::dict stages;
      stages["instantiate"] = capsule(dgpt_quantize_instantiate);
      stages["execute"] = capsule(execute);
      d[name] = stages;
    }
    return d;
  }, "FFI target name -> {stage name: PyCapsule} of the quantization kernels.");

  m.def("quantize_type_registrations", []() {
    nb::dict reg;
    reg["type_id"] = nb::capsule(reinterpret_cast<void*>(quant::quantize_state_type_id()));
    reg["type_info"] = nb::capsule(const_cast<void*>(static_cast<const void*>(quant::quantize_state_type_info())));
    nb::dict d;
    d["dgpt_quantize_state"] = reg;
    return d;
  }, "FFI state types of the quantization kernels.");

  m.def("quantize_fields", []() {
    nb::list names;
    for (const std::string& name : quant::quantize_field_names()) names.append(name);
    return nb::tuple(names);
  }, "The quantization kernels' configuration fields, in declaration order (kernels/quantize_config.cuh).");

  m.def("quantize_limits", []() {
    nb::dict d;
    for (const auto& [name, value] : quant::quantize_limits()) d[name.c_str()] = value;
    return d;
  }, "The quantization kernels' limits by name.");

  m.def("check_quantize_config", [](const nb::dict& dict) -> nb::object {
    const Status valid = quant::check_quantize_config(decode(dict, /*check=*/false));
    if (valid.ok()) return nb::none();
    return nb::str(valid.message().c_str());
  }, nb::arg("config"), "None when the quantize config is valid, else the rule it breaks.");

  m.def("quantize_column_partials", [](long long cols, long long rows, long long batches) {
    if (cols <= 0 || rows < 0 || batches < 0) throw nb::value_error("cols must be positive, rows and batches >= 0");
    return quant::ctas_per_batch(static_cast<u32>(cols), true, static_cast<u64>(rows), static_cast<u64>(batches));
  }, nb::arg("cols"), nb::arg("rows"), nb::arg("batches"),
  "P: the column partials per batch the rows kind writes for x [batches, rows, cols] (its CTAs per batch).");

  m.def("generate_quantize_source", [](const nb::dict& dict) { return quant::generate_quantize_source(decode(dict, true)); },
        nb::arg("config"), "The translation unit the JIT compiles for a valid quantize config.");

  m.def("compile_quantize", [](const nb::dict& dict, bool ptxas_verbose) {
    const quant::QuantizeConfig config = decode(dict, true);
    jit::CubinEntry entry;
    Status status;
    {
      nb::gil_scoped_release release;
      status = quant::compile_quantize(config, ptxas_verbose, &entry);
    }
    if (!status.ok()) throw std::runtime_error(status.message());
    return cubin_entry_dict(entry);
  }, nb::arg("config"), nb::arg("ptxas_verbose") = false,
  "JIT-compiles (or fetches from the cache) the quantization kernel of a valid config; no GPU needed.");
}

}  // namespace dgpt
