// XLA FFI handlers of the three GEMM ops (instantiate, initialize and execute stages) and the
// state type they share. Registered from Python through gemm_bindings.cc.
#pragma once

#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/ffi.h"

namespace dgpt::handlers {

// The compiled kernel of one custom call, created at instantiate and owned by XLA.
struct KernelState;
XLA_FFI_TypeId* kernel_state_type_id();
const XLA_FFI_TypeInfo* kernel_state_type_info();

}  // namespace dgpt::handlers

// Stage handlers per layout (FFI targets dgpt_gemm_normal, dgpt_gemm_contiguous, dgpt_gemm_masked).
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_normal_instantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_normal_initialize);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_normal_execute);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_contiguous_instantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_contiguous_initialize);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_contiguous_execute);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_masked_instantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_masked_initialize);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_masked_execute);
