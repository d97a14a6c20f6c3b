#include "kernel_config.h"

namespace dgpt {

namespace {
constexpr Layout kLayouts[] = {Layout::kNormal, Layout::kContiguous, Layout::kMasked, Layout::kKGrouped,
                               Layout::kRagged};
}  // namespace

const char* layout_name(Layout layout) {
  switch (layout) {
    case Layout::kNormal: return "normal";
    case Layout::kContiguous: return "contiguous";
    case Layout::kMasked: return "masked";
    case Layout::kKGrouped: return "k_grouped";
    case Layout::kRagged: return "ragged";
  }
  return "unknown";
}

Status parse_layout(std::string_view name, Layout* out) {
  for (Layout layout : kLayouts) {
    if (name == layout_name(layout)) {
      *out = layout;
      return Status::Ok();
    }
  }
  return Status::Error("unknown layout '" + std::string(name) + "' (expected normal, contiguous, masked, k_grouped or ragged)");
}

std::vector<std::string> config_field_names() {
  std::vector<std::string> names = {"layout"};
#define DGPT_FIELD_NAME(name, compile_time) names.push_back(#name);
  DGPT_KERNEL_CONFIG_FIELDS(DGPT_FIELD_NAME)
#undef DGPT_FIELD_NAME
  return names;
}

std::string describe_field_names() {
  std::string text;
  for (const std::string& name : config_field_names()) text += (text.empty() ? "" : ", ") + name;
  return "(" + text + ")";
}

std::vector<std::pair<std::string, long long>> config_limits() {
  namespace l = limits;
  return {
      {"block_k", tile::kBlockK},
      {"block_m_small", l::kBlockMSmall},
      {"block_m_large", l::kBlockMLarge},
      {"block_m_double", l::kBlockMDouble},
      {"max_block_n_double", l::kMaxBlockNDouble},
      {"block_n_step", l::kBlockNStep},
      {"max_block_n", l::kMaxBlockN},
      {"min_stages", l::kMinStages},
      {"max_stages", l::kMaxStages},
      {"max_k_splits", l::kMaxKSplits},
      {"k_alignment", l::kKAlignment},
      {"n_alignment", l::kNAlignment},
      {"m_alignment_contiguous", l::kMAlignmentContiguous},
      {"max_dim", l::kMaxDim},
      {"max_groups", l::kMaxGroups},
      {"max_grid_size", l::kMaxGridSize},
      {"max_smem_bytes", l::kMaxSmemBytes},
  };
}

std::string describe(const KernelConfig& c) {
  // NOTES: no iostreams in this library: on the H200 image, ostream insertion from this extension
  // crashed inside libstdc++'s locale code (seen 2026-11-28), while std::to_string works.
  std::string text = std::string("layout=") + layout_name(c.layout);
#define DGPT_DESCRIBE_FIELD(name, compile_time) text += " " #name "=" + std::to_string(c.name);
  DGPT_KERNEL_CONFIG_FIELDS(DGPT_DESCRIBE_FIELD)
#undef DGPT_DESCRIBE_FIELD
  return text;
}

Status check_config(const KernelConfig& c) {
  if (const char* rule = config_error(c)) return Status::Error("invalid kernel config (" + describe(c) + "): " + rule);
  return Status::Ok();
}

std::string generate_source(const KernelConfig& c) {
  static const char* kLayoutEnum[] = {"kNormal", "kContiguous", "kMasked", "kKGrouped", "kRagged"};
  std::string fields;
#define DGPT_SOURCE_FIELD(name, compile_time) \
  if (compile_time) fields += "    c." #name " = " + std::to_string(c.name) + ";\n";
  DGPT_KERNEL_CONFIG_FIELDS(DGPT_SOURCE_FIELD)
#undef DGPT_SOURCE_FIELD
  // Run-time fields stay 0 here: one cubin serves every M, G and grid size.
  return std::string("// jax_dgpt generated kernel\n#include \"sm90_fp8_gemm.cuh\"\n") +
         "struct DgptConfig {\n  static constexpr ::dgpt::KernelConfig value = [] {\n    ::dgpt::KernelConfig c{};\n" +
         "    c.layout = ::dgpt::Layout::" + kLayoutEnum[static_cast<int>(c.layout)] + ";\n" + fields +
         "    return c;\n  }();\n};\nDGPT_DEFINE_SM90_FP8_GEMM(DgptConfig)\n";
}

}  // namespace dgpt
