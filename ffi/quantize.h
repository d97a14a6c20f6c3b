// Host side of the quantization kernels (kernels/quantize.cuh): configuration decoding and checking, the
// generated source, JIT compile and launch, and the XLA FFI handlers (dgpt_quantize_rows,
// dgpt_cast_transpose). Knows nothing about GEMMs.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "jit/kernel_cache.h"
#include "jit/status.h"
#include "quantize_config.cuh"
#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/ffi.h"

namespace dgpt::quant {

std::vector<std::string> quantize_field_names();
std::string describe_quantize_fields();                            // "(kind, cols, ...)"
std::string describe(const QuantizeConfig& config);                // "kind=0 cols=..."
Status check_quantize_config(const QuantizeConfig& config);        // OK, or "invalid quantize config (...): rule"
std::vector<std::pair<std::string, long long>> quantize_limits();  // by their Python names
std::string generate_quantize_source(const QuantizeConfig& config);
Status compile_quantize(const QuantizeConfig& config, bool ptxas_verbose, jit::CubinEntry* out);

// Fills `out` from named integers (`get_int(name, long long*)` returns a Status); `size` is how many
// entries the source holds, so an unknown extra name is an error too.
template <class GetInt>
Status read_quantize_config(size_t size, GetInt&& get_int, QuantizeConfig* out) {
  QuantizeConfig c{};
  size_t fields = 0;
#define DGPT_READ_QUANTIZE_FIELD(name) \
  DGPT_RETURN_IF_ERROR(get_int(#name, &c.name));  \
  ++fields;
  DGPT_QUANTIZE_CONFIG_FIELDS(DGPT_READ_QUANTIZE_FIELD)
#undef DGPT_READ_QUANTIZE_FIELD
  if (size != fields) {
    return Status::Error("quantize config has " + std::to_string(size) + " entries, expected exactly the " +
                         std::to_string(fields) + " fields " + describe_quantize_fields());
  }
  *out = c;
  return Status::Ok();
}

XLA_FFI_TypeId* quantize_state_type_id();
const XLA_FFI_TypeInfo* quantize_state_type_info();

}  // namespace dgpt::quant

// Instantiate compiles (once per executable), execute launches on XLA's stream.
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_quantize_instantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_quantize_rows_execute);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_cast_transpose_execute);
