// The NVRTC back end of Compiler (private to compiler.cc).
#pragma once

#include <memory>
#include <string>

#include "jit/compiler.h"

namespace dgpt::jit {

// A compiler for C++ standard `cxx_standard` ("17", "20", ...) through libnvrtc, which is found
// and loaded on the first call (see nvrtc.cc for the search order); an error if it is missing.
Status create_nvrtc_compiler(const std::string& cxx_standard, std::unique_ptr<Compiler>* out);

}  // namespace dgpt::jit
