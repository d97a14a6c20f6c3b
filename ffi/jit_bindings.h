// Helpers shared by the Python bindings that return JIT results.
#pragma once

#include <nanobind/nanobind.h>

#include <string>

#include "jit/kernel_cache.h"

namespace dgpt {

// {key, origin, cubin_size, log, path} of one cache lookup.
nanobind::dict cubin_entry_dict(const jit::CubinEntry& entry);

// Compiler output as a str; bytes that are not UTF-8 become U+FFFD instead of raising.
nanobind::object compiler_log_str(const std::string& text);

}  // namespace dgpt
