// Compiled kernels: an in-memory map in front of a disk cache under DG_JIT_CACHE_DIR (default
// ~/.jax_dgpt). The key hashes the kernel name, the generated source, a digest of every file in
// the kernels directory, the compiler signature and the flags. Files are written atomically.
#pragma once

#include <string>

#include "jit/status.h"

namespace dgpt::jit {

// Directory holding the kernel headers (`kernels/` of the project); set once by Python at import.
void set_kernels_dir(const std::string& dir);
std::string kernels_dir();

enum class Origin { kCompiled, kMemory, kDisk };
const char* origin_name(Origin origin);  // "compiled", "memory", "disk"

struct CubinEntry {
  std::string key;    // hex digest
  std::string cubin;  // the ELF image
  Origin origin = Origin::kCompiled;
  std::string log;    // compiler output when compiled in this call
  std::string path;   // file in the disk cache, empty when none was written or read
};

// Returns the cubin for `source` from memory, disk or a fresh compile. Thread-safe: compiles run
// outside the lock; two threads racing on one key both compile and one result wins.
// `ptxas_verbose` forces a compile (it is part of the key) so the log holds ptxas's report.
Status get_or_compile(const std::string& name, const std::string& source, bool ptxas_verbose,
                      CubinEntry* out);

}  // namespace dgpt::jit
