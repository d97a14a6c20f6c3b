// Decode, check, launch: XLA glue only. The kernel is compiled and loaded at instantiate (once per
// compiled executable), prepared per device at initialize (never captured into a CUDA graph), and
// execute only encodes TMA descriptors and launches on XLA's stream.
#include "gemm_handlers.h"

#include <exception>
#include <memory>
#include <string>
#include <string_view>

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
    case ffi::BF16: return "bf16";
    case ffi::S32: return "s32";
    default: return "another dtype";
  }
}

// "expected dims [a, b], got [c, d]" when a buffer does not match the compiled configuration.
ffi::Error check_buffer(const char* name, const ffi::AnyBuffer& buffer, ffi::DataType dtype,
                        std::initializer_list<int64_t> dims) {
  auto render = [](auto begin, auto end) {
    std::string s = "[";
    for (auto it = begin; it != end; ++it) s += (it == begin ? "" : ", ") + std::to_string(*it);
    return s + "]";
  };
  const auto actual = buffer.dimensions();
  bool same = actual.size() == dims.size() && buffer.element_type() == dtype;
  for (size_t i = 0; same && i < dims.size(); ++i) same = actual[i] == dims.begin()[i];
  if (same) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string("jax_dgpt: operand ") + name + " does not match the compiled kernel: expected dims " +
                                     render(dims.begin(), dims.end()) + " of type " + dtype_name(dtype) + ", got " +
                                     render(actual.begin(), actual.end()) + " of type " +
                                     dtype_name(buffer.element_type()));
}

#define DGPT_RETURN_IF_FFI_ERROR(expr)    \
  do {                                    \
    ffi::Error err_ = (expr);             \
    if (err_.failure()) return err_;      \
  } while (0)

ffi::Error launch(const KernelState* state, CUstream stream, const ffi::AnyBuffer& a, const ffi::AnyBuffer& b,
                  const int32_t* grouped_layout, ffi::Result<ffi::AnyBuffer>& d) {
  return to_ffi(state->kernel->launch(stream, a.untyped_data(), b.untyped_data(), d->untyped_data(), grouped_layout),
                "jax_dgpt execute");
}

ffi::Error execute_normal(CUstream stream, KernelState* state, ffi::AnyBuffer a, ffi::AnyBuffer b,
                          ffi::Result<ffi::AnyBuffer> d) {
  const KernelConfig& c = state->kernel->config();
  DGPT_RETURN_IF_FFI_ERROR(check_buffer("a", a, ffi::F8E4M3FN, {c.m, c.k}));
  DGPT_RETURN_IF_FFI_ERROR(check_buffer("b", b, ffi::F8E4M3FN, {c.n, c.k}));
  DGPT_RETURN_IF_FFI_ERROR(check_buffer("out", *d, ffi::BF16, {c.m, c.n}));
  return launch(state, stream, a, b, nullptr, d);
}

ffi::Error execute_contiguous(CUstream stream, KernelState* state, ffi::AnyBuffer a, ffi::AnyBuffer b,
                              ffi::AnyBuffer m_indices, ffi::Result<ffi::AnyBuffer> d) {
  const KernelConfig& c = state->kernel->config();
  DGPT_RETURN_IF_FFI_ERROR(check_buffer("a", a, ffi::F8E4M3FN, {c.m, c.k}));
  DGPT_RETURN_IF_FFI_ERROR(check_buffer("b", b, ffi::F8E4M3FN, {c.num_groups, c.n, c.k}));
  DGPT_RETURN_IF_FFI_ERROR(check_buffer("m_indices", m_indices, ffi::S32, {c.m}));
  DGPT_RETURN_IF_FFI_ERROR(check_buffer("out", *d, ffi::BF16, {c.m, c.n}));
  return launch(state, stream, a, b, static_cast<const int32_t*>(m_indices.untyped_data()), d);
}

ffi::Error execute_masked(CUstream stream, KernelState* state, ffi::AnyBuffer a, ffi::AnyBuffer b,
                          ffi::AnyBuffer masked_m, ffi::Result<ffi::AnyBuffer> d) {
  const KernelConfig& c = state->kernel->config();
  DGPT_RETURN_IF_FFI_ERROR(check_buffer("a", a, ffi::F8E4M3FN, {c.num_groups, c.m, c.k}));
  DGPT_RETURN_IF_FFI_ERROR(check_buffer("b", b, ffi::F8E4M3FN, {c.num_groups, c.n, c.k}));
  DGPT_RETURN_IF_FFI_ERROR(check_buffer("masked_m", masked_m, ffi::S32, {c.num_groups}));
  DGPT_RETURN_IF_FFI_ERROR(check_buffer("out", *d, ffi::BF16, {c.num_groups, c.m, c.n}));
  return launch(state, stream, a, b, static_cast<const int32_t*>(masked_m.untyped_data()), d);
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(dgpt_normal_initialize, h::initialize, h::initialize_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(dgpt_contiguous_initialize, h::initialize, h::initialize_binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(dgpt_masked_initialize, h::initialize, h::initialize_binding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    dgpt_normal_execute,
    [](CUstream s, h::KernelState* st, xla::ffi::AnyBuffer a, xla::ffi::AnyBuffer b,
       xla::ffi::Result<xla::ffi::AnyBuffer> d) { return h::guarded(h::execute_normal, s, st, a, b, d); },
    h::execute_binding()
        .Arg<xla::ffi::AnyBuffer>()   // a [M, K] f8e4m3fn
        .Arg<xla::ffi::AnyBuffer>()   // b [N, K] f8e4m3fn
        .Ret<xla::ffi::AnyBuffer>(),  // out [M, N] bf16
    {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    dgpt_contiguous_execute,
    [](CUstream s, h::KernelState* st, xla::ffi::AnyBuffer a, xla::ffi::AnyBuffer b, xla::ffi::AnyBuffer idx,
       xla::ffi::Result<xla::ffi::AnyBuffer> d) { return h::guarded(h::execute_contiguous, s, st, a, b, idx, d); },
    h::execute_binding()
        .Arg<xla::ffi::AnyBuffer>()   // a [M, K] f8e4m3fn
        .Arg<xla::ffi::AnyBuffer>()   // b [G, N, K] f8e4m3fn
        .Arg<xla::ffi::AnyBuffer>()   // m_indices [M] s32
        .Ret<xla::ffi::AnyBuffer>(),  // out [M, N] bf16
    {xla::ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    dgpt_masked_execute,
    [](CUstream s, h::KernelState* st, xla::ffi::AnyBuffer a, xla::ffi::AnyBuffer b, xla::ffi::AnyBuffer mm,
       xla::ffi::Result<xla::ffi::AnyBuffer> d) { return h::guarded(h::execute_masked, s, st, a, b, mm, d); },
    h::execute_binding()
        .Arg<xla::ffi::AnyBuffer>()   // a [G, Mmax, K] f8e4m3fn
        .Arg<xla::ffi::AnyBuffer>()   // b [G, N, K] f8e4m3fn
        .Arg<xla::ffi::AnyBuffer>()   // masked_m [G] s32
        .Ret<xla::ffi::AnyBuffer>(),  // out [G, Mmax, N] bf16
    {xla::ffi::Traits::kCmdBufferCompatible});
