#include "quantize.h"

#include <cuda.h>

#include <exception>
#include <memory>
#include <string>

#include "jit/driver.h"
#include "jit/kernel_runtime.h"

namespace ffi = xla::ffi;

namespace dgpt::quant {

std::vector<std::string> quantize_field_names() {
  std::vector<std::string> names;
#define DGPT_QUANTIZE_FIELD_NAME(name) names.push_back(#name);
  DGPT_QUANTIZE_CONFIG_FIELDS(DGPT_QUANTIZE_FIELD_NAME)
#undef DGPT_QUANTIZE_FIELD_NAME
  return names;
}

std::string describe_quantize_fields() {
  std::string text;
  for (const std::string& name : quantize_field_names()) text += (text.empty() ? "" : ", ") + name;
  return "(" + text + ")";
}

std::string describe(const QuantizeConfig& c) {
  std::string text;
#define DGPT_DESCRIBE_QUANTIZE_FIELD(name) text += (text.empty() ? "" : " ") + std::string(#name "=") + std::to_string(c.name);
  DGPT_QUANTIZE_CONFIG_FIELDS(DGPT_DESCRIBE_QUANTIZE_FIELD)
#undef DGPT_DESCRIBE_QUANTIZE_FIELD
  return text;
}

Status check_quantize_config(const QuantizeConfig& c) {
  if (const char* rule = quantize_config_error(c)) {
    return Status::Error("invalid quantize config (" + describe(c) + "): " + rule);
  }
  return Status::Ok();
}

std::vector<std::pair<std::string, long long>> quantize_limits() {
  return {{"threads", limits::kThreads},
          {"vec_elements", limits::kVecElements},
          {"max_cols_rows", limits::kMaxColsRows},
          {"max_cols_transpose", limits::kMaxColsTranspose},
          {"row_alignment_transpose", limits::kRowAlignmentTranspose}};
}

std::string generate_quantize_source(const QuantizeConfig& c) {
  std::string s = "// jax_dgpt generated kernel\n#include \"quantize.cuh\"\nstruct DgptQuantizeConfig {\n";
  s += "  static constexpr ::dgpt::quant::QuantizeConfig value = [] {\n    ::dgpt::quant::QuantizeConfig c{};\n";
#define DGPT_SOURCE_QUANTIZE_FIELD(name) s += "    c." #name " = " + std::to_string(c.name) + ";\n";
  DGPT_QUANTIZE_CONFIG_FIELDS(DGPT_SOURCE_QUANTIZE_FIELD)
#undef DGPT_SOURCE_QUANTIZE_FIELD
  s += "    return c;\n  }();\n};\nDGPT_DEFINE_QUANTIZE(DgptQuantizeConfig)\n";
  return s;
}

Status compile_quantize(const QuantizeConfig& c, bool ptxas_verbose, jit::CubinEntry* out) {
  DGPT_RETURN_IF_ERROR(check_quantize_config(c));
  const char* name = c.kind == static_cast<long long>(Kind::kRows) ? "quantize_rows" : "cast_transpose";
  return jit::get_or_compile(name, generate_quantize_source(c), ptxas_verbose, out);
}

namespace {

struct QuantizeState {
  static ffi::TypeId id;
  QuantizeConfig config;
  jit::LoadedKernel kernel;
};
ffi::TypeId QuantizeState::id = {};

ffi::Error launch(const QuantizeState& state, CUstream stream, QuantizeParams params, unsigned grid_x,
                  unsigned grid_y, unsigned grid_z) {
  Status status;
  const driver::Api* cu = driver::get(&status);
  if (cu == nullptr) return ffi::Error::Internal("jax_dgpt quantize: " + status.message());
  CUlaunchConfig launch = {};
  launch.gridDimX = grid_x;
  launch.gridDimY = grid_y;
  launch.gridDimZ = grid_z;
  launch.blockDimX = limits::kThreads;
  launch.blockDimY = 1;
  launch.blockDimZ = 1;
  launch.hStream = stream;
  void* args[] = {&params};
  const CUresult r = cu->cuLaunchKernelEx(&launch, reinterpret_cast<CUfunction>(state.kernel.kernel), args, nullptr);
  if (r != CUDA_SUCCESS) return ffi::Error::Internal("jax_dgpt quantize: " + driver::describe("cuLaunchKernelEx", r));
  return ffi::Error::Success();
}

ffi::DataType in_type(const QuantizeConfig& c) { return c.in_dtype == 0 ? ffi::BF16 : ffi::F32; }
ffi::DataType fp8_type(const QuantizeConfig& c) { return c.out_dtype == 0 ? ffi::F8E4M3FN : ffi::F8E5M2; }

// [R, C] or [B, R, C] of the config's input type, C = cols: (B, R).
ffi::Error batches_and_rows(const char* name, const ffi::AnyBuffer& x, const QuantizeConfig& c, int64_t* batches,
                            int64_t* rows) {
  const auto dims = x.dimensions();
  if ((dims.size() != 2 && dims.size() != 3) || dims.back() != c.cols || x.element_type() != in_type(c)) {
    return ffi::Error::InvalidArgument(std::string("jax_dgpt quantize: operand ") + name +
                                       " does not match the compiled kernel (" + describe(c) + ")");
  }
  *batches = dims.size() == 3 ? dims[0] : 1;
  *rows = dims[dims.size() - 2];
  if (*rows > 0xFFFFFFFFll || *batches > 65535) {
    return ffi::Error::InvalidArgument("jax_dgpt quantize: too many rows or batches");
  }
  return ffi::Error::Success();
}

ffi::Error check_size(const char* name, const ffi::AnyBuffer& buffer, ffi::DataType type, int64_t elements) {
  if (buffer.element_type() == type && static_cast<int64_t>(buffer.element_count()) == elements) {
    return ffi::Error::Success();
  }
  return ffi::Error::InvalidArgument(std::string("jax_dgpt quantize: operand ") + name + " has the wrong type or size");
}

#define DGPT_QUANT_RETURN_IF_ERROR(expr) \
  do {                                   \
    ffi::Error err_ = (expr);            \
    if (err_.failure()) return err_;     \
  } while (0)

ffi::ErrorOr<std::unique_ptr<QuantizeState>> instantiate(ffi::Dictionary attribute) {
  try {
    auto get_int = [&](const char* name, long long* value) -> Status {
      ffi::ErrorOr<int64_t> got = attribute.get<int64_t>(name);
      if (!got.has_value()) return Status::Error(std::string("quantize config field '") + name + "': " + got.error().message());
      *value = *got;
      return Status::Ok();
    };
    auto state = std::make_unique<QuantizeState>();
    Status status = read_quantize_config(attribute.size(), get_int, &state->config);
    if (status.ok()) status = check_quantize_config(state->config);
    if (!status.ok()) return ffi::Unexpected(ffi::Error::InvalidArgument("jax_dgpt quantize: " + status.message()));
    jit::CubinEntry entry;
    status = compile_quantize(state->config, /*ptxas_verbose=*/false, &entry);
    if (status.ok()) status = jit::load_kernel(entry, "dgpt_quantize", &state->kernel);
    if (!status.ok()) return ffi::Unexpected(ffi::Error::Internal("jax_dgpt quantize: " + status.message()));
    return state;
  } catch (const std::exception& e) {
    return ffi::Unexpected(ffi::Error::Internal(std::string("jax_dgpt quantize: ") + e.what()));
  }
}

// x [R, C] | [B, R, C]; with column_amax also valid_rows int32 []. Results: q like x, scale [B * R], and with
// column_amax the column partials [B, P, C], P = ctas_per_batch (quantize_config.cuh).
ffi::Error rows_execute(CUstream stream, QuantizeState* state, ffi::AnyBuffer x, ffi::RemainingArgs rest,
                        ffi::Result<ffi::AnyBuffer> q, ffi::Result<ffi::AnyBuffer> scale, ffi::RemainingRets more) {
  const QuantizeConfig& c = state->config;
  if (c.kind != static_cast<long long>(Kind::kRows)) return ffi::Error::InvalidArgument("jax_dgpt quantize: not a rows config");
  int64_t batches = 0, rows = 0;
  DGPT_QUANT_RETURN_IF_ERROR(batches_and_rows("x", x, c, &batches, &rows));
  DGPT_QUANT_RETURN_IF_ERROR(check_size("q", *q, fp8_type(c), batches * rows * c.cols));
  DGPT_QUANT_RETURN_IF_ERROR(check_size("scale", *scale, ffi::F32, batches * rows));
  QuantizeParams p{};
  p.x = x.untyped_data();
  p.q = static_cast<u8*>(q->untyped_data());
  p.scale = static_cast<float*>(scale->untyped_data());
  p.rows = static_cast<u32>(rows);
  const size_t extra_args = c.column_amax ? 1 : 0, extra_rets = c.column_amax ? 1 : 0;
  if (rest.size() != extra_args || more.size() != extra_rets) {
    return ffi::Error::InvalidArgument("jax_dgpt quantize: wrong number of operands or results for " + describe(c));
  }
  const u32 cols = static_cast<u32>(c.cols);
  const u64 ctas = ctas_per_batch(cols, c.column_amax != 0, static_cast<u64>(rows), static_cast<u64>(batches));
  if (c.column_amax) {
    ffi::ErrorOr<ffi::AnyBuffer> valid = rest.get<ffi::AnyBuffer>(0);
    ffi::ErrorOr<ffi::Result<ffi::AnyBuffer>> partials = more.get<ffi::AnyBuffer>(0);
    if (!valid.has_value() || !partials.has_value()) {
      return ffi::Error::InvalidArgument("jax_dgpt quantize: missing column operands");
    }
    DGPT_QUANT_RETURN_IF_ERROR(check_size("valid_rows", *valid, ffi::S32, 1));
    DGPT_QUANT_RETURN_IF_ERROR(
        check_size("column partials", **partials, ffi::F32, batches * static_cast<int64_t>(ctas) * c.cols));
    p.valid_rows = static_cast<const i32*>(valid->untyped_data());
    p.column_partials = static_cast<float*>((*partials)->untyped_data());
  }
  if (rows == 0 || batches == 0) return ffi::Error::Success();
  p.rows_per_cta = static_cast<u32>(rows_per_cta(cols, c.column_amax != 0, static_cast<u64>(rows), static_cast<u64>(batches)));
  return launch(*state, stream, p, static_cast<unsigned>(ctas), static_cast<unsigned>(batches), 1);
}

// x [R, C] | [B, R, C] and scale [C] | [B, C] -> q^T [C, R] | [B, C, R].
ffi::Error transpose_execute(CUstream stream, QuantizeState* state, ffi::AnyBuffer x, ffi::AnyBuffer scale,
                             ffi::Result<ffi::AnyBuffer> q) {
  const QuantizeConfig& c = state->config;
  if (c.kind != static_cast<long long>(Kind::kTranspose)) {
    return ffi::Error::InvalidArgument("jax_dgpt quantize: not a transpose config");
  }
  int64_t batches = 0, rows = 0;
  DGPT_QUANT_RETURN_IF_ERROR(batches_and_rows("x", x, c, &batches, &rows));
  DGPT_QUANT_RETURN_IF_ERROR(check_size("scale", scale, ffi::F32, batches * c.cols));
  DGPT_QUANT_RETURN_IF_ERROR(check_size("q", *q, fp8_type(c), batches * rows * c.cols));
  if (rows % limits::kRowAlignmentTranspose != 0) {
    return ffi::Error::InvalidArgument("jax_dgpt quantize: the transposing cast needs R % 16 == 0");
  }
  if (rows == 0 || batches == 0) return ffi::Error::Success();
  QuantizeParams p{};
  p.x = x.untyped_data();
  p.q = static_cast<u8*>(q->untyped_data());
  p.scale = static_cast<float*>(scale.untyped_data());
  p.rows = static_cast<u32>(rows);
  const unsigned grid_x = static_cast<unsigned>((c.cols + limits::kTileCols - 1) / limits::kTileCols);
  const unsigned grid_y = static_cast<unsigned>((rows + limits::kTileRows - 1) / limits::kTileRows);
  return launch(*state, stream, p, grid_x, grid_y, static_cast<unsigned>(batches));
}

template <typename... Args>
ffi::Error guarded(ffi::Error (*fn)(Args...), Args... args) {
  try {
    return fn(args...);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jax_dgpt quantize: ") + e.what());
  } catch (...) {
    return ffi::Error::Internal("jax_dgpt quantize: unknown exception");
  }
}

}  // namespace

XLA_FFI_TypeId* quantize_state_type_id() { return &QuantizeState::id; }
const XLA_FFI_TypeInfo* quantize_state_type_info() {
  static const XLA_FFI_TypeInfo info = ffi::MakeTypeInfo<QuantizeState>();
  return &info;
}

}  // namespace dgpt::quant

namespace q = dgpt::quant;
using QState = q::QuantizeState;  // NOLINT: the handler bindings below name the state type

XLA_FFI_DEFINE_HANDLER_SYMBOL(dgpt_quantize_instantiate, q::instantiate,
                              xla::ffi::Ffi::BindInstantiate().Attr<xla::ffi::Dictionary>("config"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    dgpt_quantize_rows_execute,
    [](CUstream s, QState* st, xla::ffi::AnyBuffer x, xla::ffi::RemainingArgs rest,
       xla::ffi::Result<xla::ffi::AnyBuffer> qr, xla::ffi::Result<xla::ffi::AnyBuffer> scale,
       xla::ffi::RemainingRets more) { return q::guarded(q::rows_execute, s, st, x, rest, qr, scale, more); },
    xla::ffi::Ffi::Bind()
        .Ctx<xla::ffi::PlatformStream<CUstream>>()
        .Ctx<xla::ffi::State<QState>>()
        .Arg<xla::ffi::AnyBuffer>()   // x: [R, C] or [B, R, C], bf16 or f32
        .RemainingArgs()              // column_amax: valid_rows int32 []
        .Ret<xla::ffi::AnyBuffer>()   // q: like x, fp8
        .Ret<xla::ffi::AnyBuffer>()   // scale: float32 [B * R]
        .RemainingRets(),             // column_amax: the column partials, float32 [B, P, C]
    {xla::ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    dgpt_cast_transpose_execute,
    [](CUstream s, QState* st, xla::ffi::AnyBuffer x, xla::ffi::AnyBuffer scale,
       xla::ffi::Result<xla::ffi::AnyBuffer> qt) { return q::guarded(q::transpose_execute, s, st, x, scale, qt); },
    xla::ffi::Ffi::Bind()
        .Ctx<xla::ffi::PlatformStream<CUstream>>()
        .Ctx<xla::ffi::State<QState>>()
        .Arg<xla::ffi::AnyBuffer>()   // x: [R, C] or [B, R, C], bf16 or f32
        .Arg<xla::ffi::AnyBuffer>()   // scale: float32 [C] or [B, C]
        .Ret<xla::ffi::AnyBuffer>(),  // q^T: [C, R] or [B, C, R], fp8
    {xla::ffi::Traits::kCmdBufferCompatible});
