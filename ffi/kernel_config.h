// Host side of the one kernel configuration (kernels/kernel_config.cuh): names, decoding from
// name/value pairs (the FFI dictionary attribute, a Python dict), checking, description, and the
// generated source that instantiates the kernel with it.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "jit/status.h"
#include "kernel_config.cuh"

namespace dgpt {

const char* layout_name(Layout layout);  // "normal", "contiguous", "masked"
Status parse_layout(std::string_view name, Layout* out);

// "layout" followed by the integer fields, in declaration order; and the same as one string.
std::vector<std::string> config_field_names();
std::string describe_field_names();

// The limits of kernel_config.cuh by their Python names (jax_dgpt._C.limits()).
std::vector<std::pair<std::string, long long>> config_limits();

// Fills `out` from a source of named values. `get_int(name, long long*)` and
// `get_layout(std::string*)` return a Status; `size` is how many entries the source holds, so that an
// unknown extra name is an error too.
template <class GetInt, class GetLayout>
Status read_config(size_t size, GetInt&& get_int, GetLayout&& get_layout, KernelConfig* out) {
  KernelConfig c{};
  std::string layout;
  DGPT_RETURN_IF_ERROR(get_layout(&layout));
  DGPT_RETURN_IF_ERROR(parse_layout(layout, &c.layout));
#define DGPT_READ_FIELD(name, compile_time) DGPT_RETURN_IF_ERROR(get_int(#name, &c.name));
  DGPT_KERNEL_CONFIG_FIELDS(DGPT_READ_FIELD)
#undef DGPT_READ_FIELD
  if (size != static_cast<size_t>(kNumConfigFields)) {
    return Status::Error("kernel config has " + std::to_string(size) + " entries, expected exactly the " +
                         std::to_string(kNumConfigFields) + " fields " + describe_field_names());
  }
  *out = c;
  return Status::Ok();
}

// "layout=normal m=... n=..." (every field).
std::string describe(const KernelConfig& config);

// OK, or "invalid kernel config (<describe>): <rule>".
Status check_config(const KernelConfig& config);

// The tiny translation unit the JIT compiles: the compile-time fields, then the kernel entry point.
std::string generate_source(const KernelConfig& config);

}  // namespace dgpt
