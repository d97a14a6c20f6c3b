// XLA FFI handlers of the three GEMM ops (instantiate, initialize and execute stages) and the
// state type they share. Registered from Python through gemm_bindings.cc.
#pragma once

#include <string>
#include <vector>

#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/ffi.h"

namespace dgpt::handlers {

// The compiled kernel of one custom call, created at instantiate and owned by XLA.
struct KernelState;
XLA_FFI_TypeId* kernel_state_type_id();
const XLA_FFI_TypeInfo* kernel_state_type_info();

// Names of the attributes the instantiate stage binds, in order.
std::vector<std::string> instantiate_attribute_names();

}  // namespace dgpt::handlers

// Stage handlers per op: dgpt_gemm, dgpt_m_grouped_contiguous, dgpt_m_grouped_masked.
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_gemm_instantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_gemm_initialize);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_gemm_execute);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_contiguous_instantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_contiguous_initialize);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_contiguous_execute);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_masked_instantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_masked_initialize);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_masked_execute);
