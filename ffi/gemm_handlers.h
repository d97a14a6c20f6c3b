// XLA FFI handlers of the GEMM ops (instantiate, initialize and execute stages) and the
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

// Instantiate per layout (FFI targets dgpt_gemm_<layout>: it checks the config's layout); initialize and
// execute are shared: the config says what the operands are.
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_normal_instantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_contiguous_instantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_masked_instantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_k_grouped_instantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_ragged_instantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_initialize);
XLA_FFI_DECLARE_HANDLER_SYMBOL(dgpt_execute);
