// Environment variables of the JIT layer and the places NVIDIA's pip packages may live.
// Every getter reads the environment at call time, so tests can change it in-process.
#pragma once

#include <string>
#include <vector>

namespace dgpt::jit {

// Value of `name`, or "" when unset.
std::string env_string(const char* name);

// True when `name` is set to anything except "", "0", "false", "off" or "no" (case-insensitive).
bool env_flag(const char* name);

// Directories that may hold NVIDIA pip packages (`<dir>/nvidia/...`): the site-packages directory
// this extension was loaded from, then every PYTHONPATH entry. Existing directories only.
std::vector<std::string> python_site_dirs();

}  // namespace dgpt::jit
