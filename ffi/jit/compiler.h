// Turns a CUDA C++ source into an sm_90a cubin with NVCC (default) or NVRTC (DG_JIT_USE_NVRTC=1).
// Knows nothing about GEMMs: it compiles whatever source it is given against the include dirs.
#pragma once

#include <string>
#include <vector>

#include "jit/status.h"

namespace dgpt::jit {

struct CompileOutput {
  std::string cubin;  // the ELF image
  std::string log;    // compiler + ptxas output (ptxas -v lines when verbose)
};

class Compiler {
 public:
  virtual ~Compiler() = default;
  // Name, version and flags: everything about the compiler that must be part of a cache key.
  virtual std::string signature() const = 0;
  virtual Status compile(const std::string& source, const std::vector<std::string>& include_dirs,
                         bool ptxas_verbose, CompileOutput* out) const = 0;
};

// The compiler the environment selects (DG_JIT_USE_NVRTC, DG_JIT_NVCC_COMPILER, CUDA_HOME, PATH,
// the NVIDIA pip packages). Read on every call so tests can switch it; the result is process-lived.
Status select_compiler(const Compiler** out);

}  // namespace dgpt::jit
