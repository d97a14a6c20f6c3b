// Decode, check, launch: XLA glue only. The kernel is compiled and loaded at instantiate (once per
// compiled executable), prepared per device at initialize (never captured into a CUDA graph), and
// execute only encodes TMA descriptors and launches on XLA's stream.
#include "gemm_handlers.h"

#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gemm_launcher.h"

namespace ffi = xla::ffi;

namespace dgpt::handlers {

struct KernelState {
  static ffi::TypeId id;
  std::unique_ptr<GemmKernel> kernel;
};
ffi::TypeId KernelState::id = {};

XLA_FFI_TypeId* kernel_state_type_id() { return &KernelState::id; }
const XLA_FFI_TypeInfo* kernel_state_type_info() {
  static const XLA_FFI_TypeInfo info = ffi::MakeTypeInfo<KernelState>();
  return &info;
}

namespace {

ffi::Error to_ffi(const Status& status, const char* op) {
  if (status.ok()) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(op) + ": " + status.message());
}

// The "config" dictionary attribute (jax_dgpt/kernel_config.py) as a KernelConfig.
Status decode_config(const ffi::Dictionary& dict, KernelConfig* out) {
  auto get_int = [&](const char* name, long long* value) -> Status {
    ffi::ErrorOr<int64_t> got = dict.get<int64_t>(name);
    if (!got.has_value()) return Status::Error(std::string("config field '") + name + "': " + got.error().message());
    *value = *got;
    return Status::Ok();
  };
  auto get_layout = [&](std::string* layout) -> Status {
    ffi::ErrorOr<std::string_view> got = dict.get<std::string_view>("layout");
    if (!got.has_value()) return Status::Error("config field 'layout': " + got.error().message());
    *layout = std::string(*got);
    return Status::Ok();
  };
  return read_config(dict.size(), get_int, get_layout, out);
}

template <Layout kLayout>
ffi::ErrorOr<std::unique_ptr<KernelState>> instantiate(ffi::Dictionary config_attribute) {
  try {
    KernelConfig config;
    Status status = decode_config(config_attribute, &config);
    if (status.ok() && config.layout != kLayout) {
      status = Status::Error(std::string("config layout '") + layout_name(config.layout) + "' sent to the " +
                             layout_name(kLayout) + " target");
    }
    if (status.ok()) status = check_config(config);
    if (!status.ok()) return ffi::Unexpected(ffi::Error::InvalidArgument("jax_dgpt instantiate: " + status.message()));
    GemmKernel* kernel = nullptr;
    status = GemmKernel::create(config, &kernel);
    if (!status.ok()) return ffi::Unexpected(to_ffi(status, "jax_dgpt instantiate"));
    auto state = std::make_unique<KernelState>();
    state->kernel.reset(kernel);
    return state;
  } catch (const std::exception& e) {
    return ffi::Unexpected(ffi::Error::Internal(std::string("jax_dgpt instantiate: ") + e.what()));
  } catch (...) {
    return ffi::Unexpected(ffi::Error::Internal("jax_dgpt instantiate: unknown exception"));
  }
}

ffi::Error initialize(KernelState* state, int32_t device_ordinal) {
  try {
    return to_ffi(state->kernel->prepare(device_ordinal), "jax_dgpt initialize");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jax_dgpt initialize: ") + e.what());
  } catch (...) {
    return ffi::Error::Internal("jax_dgpt initialize: unknown exception");
  }
}

const char* dtype_name(ffi::DataType dtype) {
  switch (dtype) {
    case ffi::F8E4M3FN: return "f8e4m3fn";
    case ffi::F8E5M2: return "f8e5m2";
    case ffi::BF16: return "bf16";
    case ffi::F32: return "f32";
    case ffi::S32: return "s32";
    default: return "another dtype";
  }
}

std::string render_dims(const int64_t* begin, const int64_t* end) {
  std::string s = "[";
  for (auto it = begin; it != end; ++it) s += (it == begin ? "" : ", ") + std::to_string(*it);
  return s + "]";
}

bool has_dims(const ffi::AnyBuffer& buffer, const std::vector<int64_t>& dims) {
  const auto actual = buffer.dimensions();
  if (actual.size() != dims.size()) return false;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (actual[i] != dims[i]) return false;
  }
  return true;
}

// "expected dims [a, b], got [c, d]" when a buffer does not match the compiled configuration.
ffi::Error check_buffer(const char* name, const ffi::AnyBuffer& buffer, ffi::DataType dtype,
                        const std::vector<int64_t>& dims) {
  if (has_dims(buffer, dims) && buffer.element_type() == dtype) return ffi::Error::Success();
  const auto actual = buffer.dimensions();
  return ffi::Error::InvalidArgument(std::string("jax_dgpt: operand ") + name +
                                     " does not match the compiled kernel: expected dims " +
                                     render_dims(dims.data(), dims.data() + dims.size()) + " of type " + dtype_name(dtype) +
                                     ", got " + render_dims(actual.begin(), actual.end()) + " of type " +
                                     dtype_name(buffer.element_type()));
}

#define DGPT_RETURN_IF_FFI_ERROR(expr)    \
  do {                                    \
    ffi::Error err_ = (expr);             \
    if (err_.failure()) return err_;      \
  } while (0)

ffi::DataType fp8_type(long long code) { return code == static_cast<long long>(Fp8Type::kE5M2) ? ffi::F8E5M2 : ffi::F8E4M3FN; }

// A scale operand's strides from its shape (jax_dgpt/ops.py documents the shapes per op): () broadcasts;
// a vector is per row (scale_a: rows of A; scale_b: columns of D), except scale_b of a layout whose B is
// grouped (contiguous, masked, ragged), where it is per group; a matrix is [G, rows].
ffi::Error scale_operand(const char* name, const ffi::AnyBuffer& buffer, const KernelConfig& c, bool of_b,
                         ScaleOperand* out) {
  const int64_t rows = of_b ? c.n : c.m;
  const bool grouped_b = c.layout == Layout::kContiguous || c.layout == Layout::kMasked || c.layout == Layout::kRagged;
  const bool per_group_vector = of_b && grouped_b;
  // scale_a of the masked layout is per row of each group: [G, Mmax] (or a scalar).
  const bool vector_allowed = of_b || c.layout != Layout::kMasked;
  const bool matrix_allowed = c.layout == Layout::kKGrouped || (of_b ? grouped_b : c.layout == Layout::kMasked);
  out->data = static_cast<const float*>(buffer.untyped_data());
  if (buffer.element_type() == ffi::F32) {
    if (has_dims(buffer, {})) {
      out->group_stride = out->row_stride = 0;
      return ffi::Error::Success();
    }
    if (vector_allowed && has_dims(buffer, {per_group_vector ? c.num_groups : rows})) {
      out->group_stride = per_group_vector ? 1 : 0;
      out->row_stride = per_group_vector ? 0 : 1;
      return ffi::Error::Success();
    }
    if (matrix_allowed && has_dims(buffer, {c.num_groups, rows})) {
      out->group_stride = static_cast<uint32_t>(rows);
      out->row_stride = 1;
      return ffi::Error::Success();
    }
  }
  const auto actual = buffer.dimensions();
  return ffi::Error::InvalidArgument(std::string("jax_dgpt: operand ") + name +
                                     " does not match the compiled kernel: a float32 scale of an allowed shape, got " +
                                     render_dims(actual.begin(), actual.end()) + " of type " +
                                     dtype_name(buffer.element_type()));
}

// Operands after a and b, in this order, each only when the config has it: the grouped layout's int32
// array, scale_a, scale_b, c (accumulate: the buffer the output aliases).
ffi::Error execute(CUstream stream, KernelState* state, ffi::AnyBuffer a, ffi::AnyBuffer b,
                   ffi::RemainingArgs rest, ffi::Result<ffi::AnyBuffer> d) {
  const KernelConfig& c = state->kernel->config();
  const bool grouped_b = c.layout == Layout::kContiguous || c.layout == Layout::kMasked || c.layout == Layout::kRagged;
  const bool grouped_out = c.layout == Layout::kMasked || c.layout == Layout::kKGrouped;
  const ffi::DataType out_type = c.out_dtype == static_cast<long long>(OutType::kF32) ? ffi::F32 : ffi::BF16;
  const std::vector<int64_t> out_dims =
      grouped_out ? std::vector<int64_t>{c.num_groups, c.m, c.n} : std::vector<int64_t>{c.m, c.n};
  if (c.layout == Layout::kMasked) {
    DGPT_RETURN_IF_FFI_ERROR(check_buffer("a", a, fp8_type(c.a_dtype), {c.num_groups, c.m, c.k}));
  } else {
    DGPT_RETURN_IF_FFI_ERROR(check_buffer("a", a, fp8_type(c.a_dtype), {c.m, c.k}));
  }
  if (grouped_b) {
    DGPT_RETURN_IF_FFI_ERROR(check_buffer("b", b, fp8_type(c.b_dtype), {c.num_groups, c.n, c.k}));
  } else {
    DGPT_RETURN_IF_FFI_ERROR(check_buffer("b", b, fp8_type(c.b_dtype), {c.n, c.k}));
  }
  DGPT_RETURN_IF_FFI_ERROR(check_buffer("out", *d, out_type, out_dims));

  const size_t expected = (c.layout != Layout::kNormal) + (c.has_scale_a != 0) + (c.has_scale_b != 0) +
                          (c.accumulate != 0);
  if (rest.size() != expected) {
    return ffi::Error::InvalidArgument("jax_dgpt: the custom call has " + std::to_string(rest.size() + 2) +
                                       " operands, the compiled kernel takes " + std::to_string(expected + 2));
  }
  GemmOperands operands;
  operands.a = a.untyped_data();
  operands.b = b.untyped_data();
  operands.d = d->untyped_data();
  size_t next = 0;
  if (c.layout != Layout::kNormal) {
    ffi::ErrorOr<ffi::AnyBuffer> layout = rest.get<ffi::AnyBuffer>(next++);
    if (!layout.has_value()) return layout.error();
    const int64_t length = c.layout == Layout::kContiguous ? c.m : c.num_groups;
    const char* name = c.layout == Layout::kContiguous ? "m_indices"
                       : c.layout == Layout::kMasked   ? "masked_m"
                                                       : "group_sizes";  // k_grouped, ragged
    DGPT_RETURN_IF_FFI_ERROR(check_buffer(name, *layout, ffi::S32, {length}));
    operands.grouped_layout = static_cast<const int32_t*>(layout->untyped_data());
  }
  for (const bool of_b : {false, true}) {
    if ((of_b ? c.has_scale_b : c.has_scale_a) == 0) continue;
    ffi::ErrorOr<ffi::AnyBuffer> scale = rest.get<ffi::AnyBuffer>(next++);
    if (!scale.has_value()) return scale.error();
    DGPT_RETURN_IF_FFI_ERROR(scale_operand(of_b ? "scale_b" : "scale_a", *scale, c, of_b,
                                           of_b ? &operands.scale_b : &operands.scale_a));
  }
  if (c.accumulate != 0) {
    // The lowering aliases c with the output: the kernel adds into the output buffer, which holds c.
    ffi::ErrorOr<ffi::AnyBuffer> acc = rest.get<ffi::AnyBuffer>(next++);
    if (!acc.has_value()) return acc.error();
    DGPT_RETURN_IF_FFI_ERROR(check_buffer("c", *acc, ffi::F32, out_dims));
    if (acc->untyped_data() != d->untyped_data()) {
      return ffi::Error::InvalidArgument("jax_dgpt: operand c must share the output's buffer (operand_output_aliases)");
    }
  }
  return to_ffi(state->kernel->launch(stream, operands), "jax_dgpt execute");
}

// Execute must not throw into XLA either.
template <typename... Args>
ffi::Error guarded(ffi::Error (*fn)(Args...), Args... args) {
  try {
    return fn(args...);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jax_dgpt execute: ") + e.what());
  } catch (...) {
    return ffi::Error::Internal("jax_dgpt execute: unknown exception");
  }
}

}  // namespace

// One attribute: the whole kernel configuration (jax_dgpt/kernel_config.py produces it).
auto instantiate_binding() { return ffi::Ffi::BindInstantiate().Attr<ffi::Dictionary>("config"); }

auto initialize_binding() {
  return ffi::Ffi::BindInitialize().Ctx<ffi::State<KernelState>>().Ctx<ffi::DeviceOrdinal>();
}

auto execute_binding() {
  return ffi::Ffi::Bind().Ctx<ffi::PlatformStream<CUstream>>().Ctx<ffi::State<KernelState>>();
}

}  // namespace dgpt::handlers

using dgpt::Layout;
namespace h = dgpt::handlers;

XLA_FFI_DEFINE_HANDLER_SYMBOL(dgpt_normal_instantiate, h::instantiate<Layout::kNormal>, h::instantiate_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(dgpt_contiguous_instantiate, h::instantiate<Layout::kContiguous>,
                              h::instantiate_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(dgpt_masked_instantiate, h::instantiate<Layout::kMasked>, h::instantiate_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(dgpt_k_grouped_instantiate, h::instantiate<Layout::kKGrouped>, h::instantiate_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(dgpt_ragged_instantiate, h::instantiate<Layout::kRagged>, h::instantiate_binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(dgpt_initialize, h::initialize, h::initialize_binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    dgpt_execute,
    [](CUstream s, h::KernelState* st, xla::ffi::AnyBuffer a, xla::ffi::AnyBuffer b, xla::ffi::RemainingArgs rest,
       xla::ffi::Result<xla::ffi::AnyBuffer> d) { return h::guarded(h::execute, s, st, a, b, rest, d); },
    h::execute_binding()
        .Arg<xla::ffi::AnyBuffer>()   // a: [M, K], [G, Mmax, K] (masked) or [M, T] (k_grouped); fp8
        .Arg<xla::ffi::AnyBuffer>()   // b: [N, K], [G, N, K] (contiguous, masked, ragged) or [N, T] (k_grouped); fp8
        .RemainingArgs()              // grouped-layout int32 array, scale_a, scale_b, c: as the config says
        .Ret<xla::ffi::AnyBuffer>(),  // out: [M, N] or [G, Mmax | M, N]; bf16 or f32
    {xla::ffi::Traits::kCmdBufferCompatible});
