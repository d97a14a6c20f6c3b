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
