// Loaded kernels. A cubin is loaded once per process with cuLibraryLoadData (context-independent)
// and never unloaded, because a captured CUDA graph may still launch it.
#pragma once

#include <cuda.h>

#include <string>

#include "jit/kernel_cache.h"
#include "jit/status.h"

namespace dgpt::jit {

struct LoadedKernel {
  CUlibrary library = nullptr;
  CUkernel kernel = nullptr;
};

// Loads `entry.cubin` (or reuses the library loaded for `entry.key`) and looks up `symbol`.
Status load_kernel(const CubinEntry& entry, const char* symbol, LoadedKernel* out);

}  // namespace dgpt::jit
