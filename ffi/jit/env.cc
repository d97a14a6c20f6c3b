// Environment helpers for the JIT layer.
#include "jit/env.h"

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>

namespace dgpt::jit {

std::string env_string(const char* name) {
  // NOTES: copy at once; the pointer getenv returns is invalidated by a later setenv.
  const char* value = std::getenv(name);
  return value ? std::string(value) : std::string();
}

bool env_flag(const char* name) {
  std::string value = env_string(name);
  std::transform(value.begin(), value.end(), value.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  return !(value.empty() || value == "0" || value == "false" || value == "off" || value == "no");
}

Status env_bool(const char* name, bool* value) {
  const std::string text = env_string(name);
  std::string lower = text;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  if (lower.empty() || lower == "0" || lower == "false" || lower == "no" || lower == "off") {
    return *value = false, Status::Ok();
  }
  if (lower == "1" || lower == "true" || lower == "yes" || lower == "on") {
    return *value = true, Status::Ok();
  }
  return Status::Error(std::string(name) + "=" + text + " is not a boolean (use 1 or 0)");
}

Status read_ffma_interleave_env(FfmaInterleaveEnv* env) {
  DGPT_RETURN_IF_ERROR(env_bool("DG_JIT_DISABLE_FFMA_INTERLEAVE", &env->disable));
  DGPT_RETURN_IF_ERROR(env_bool("DG_JIT_PRINT_REG_REUSE", &env->print_reg_reuse));
  return Status::Ok();
}

std::string ffma_interleave_note(const FfmaInterleaveEnv& env, const std::string& compiler,
                                 const std::string& version) {
  if (!env.disable && !env.print_reg_reuse) return "";
  std::string names;
  if (env.disable) names = "DG_JIT_DISABLE_FFMA_INTERLEAVE";
  if (env.print_reg_reuse) names += std::string(names.empty() ? "" : " and ") + "DG_JIT_PRINT_REG_REUSE";
  // NOTES: "X.Y" compares as (major, minor); NVCC 12.9 is the first to interleave FFMAs itself.
  int major = std::atoi(version.c_str()), minor = 0;
  const size_t dot = version.find('.');
  if (dot != std::string::npos) minor = std::atoi(version.c_str() + dot + 1);
  const bool interleaves = major > 12 || (major == 12 && minor >= 9);
  const std::string why = interleaves ? "it interleaves FFMAs itself (12.9+), which is why DeepGEMM dropped its pass"
                                      : "it predates the FFMA interleaving of NVCC 12.9+, and no pass replaces it";
  return names + " change nothing: jax_dgpt has no SASS FFMA-interleave pass; compiler " + compiler + " " + version +
         ": " + why;
}

std::vector<std::string> python_site_dirs() {
  namespace fs = std::filesystem;
  std::vector<std::string> dirs;
  auto add = [&dirs](const fs::path& dir) {
    std::error_code ec;
    if (dir.empty() || !fs::is_directory(dir, ec)) return;
    std::string text = fs::weakly_canonical(dir, ec).string();
    if (ec) text = dir.string();
    if (std::find(dirs.begin(), dirs.end(), text) == dirs.end()) dirs.push_back(text);
  };
  // The extension lives in <site-packages>/jax_dgpt/, so its grandparent is site-packages.
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&python_site_dirs), &info) != 0 && info.dli_fname) {
    add(fs::path(info.dli_fname).parent_path().parent_path());
  }
  // Then each PYTHONPATH entry (colon-separated).
  std::string path = env_string("PYTHONPATH");
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    if (end > start) add(fs::path(path.substr(start, end - start)));
    start = end + 1;
  }
  return dirs;
}

}  // namespace dgpt::jit
