// Host side of the sm90 FP8 GEMM family: JIT-compiles the kernel of one checked configuration,
// prepares it per device and launches it. Knows nothing about XLA.
#pragma once

#include <cuda.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dgpt_types.cuh"
#include "kernel_config.h"
#include "jit/kernel_cache.h"
#include "jit/kernel_runtime.h"
#include "jit/status.h"

namespace dgpt {

// Compiles (or fetches from the cache) the cubin for `config`.
// Checks `config` first.
Status compile(const KernelConfig& config, bool ptxas_verbose, jit::CubinEntry* out);

// A compiled, loaded kernel plus the per-device setup done by `prepare`.
class GemmKernel {
 public:
  static Status create(const KernelConfig& config, GemmKernel** out);  // owned by caller

  // Checks the device (sm_90) and raises the kernel's shared-memory limit on it; once per device.
  Status prepare(int device_ordinal);

  // Encodes the TMA descriptors for these buffers (or reuses the last ones when the buffers are the
  // same) and launches on `stream`. No sync, no allocation.
  Status launch(CUstream stream, const void* a, const void* b, void* d, const int32_t* grouped_layout) const;

  const KernelConfig& config() const { return config_; }

 private:
  KernelConfig config_;
  jit::LoadedKernel kernel_;
  uint32_t smem_bytes_ = 0;
  std::mutex mutex_;
  std::vector<bool> prepared_;  // by device ordinal, guarded by mutex_
  // CTAs launched: config_.grid_size, or for clusters at most the co-resident clusters' CTAs (0: not yet
  // asked). Found on the first launch, whose stream names the context the driver must ask.
  mutable std::atomic<int> grid_{0};

  int grid_for(const CUlaunchConfig& launch) const;

  // The kernel parameter depends only on the static config and the four buffer addresses. NOTES: an XLA
  // executable usually hands a custom call the same buffers on every run, and encoding the three or four
  // tensor maps is a large part of the host time of one launch; the last parameter is kept and reused.
  struct Buffers {
    const void* a;
    const void* b;
    const void* d;
    const int32_t* grouped_layout;
    bool operator==(const Buffers& o) const {
      return a == o.a && b == o.b && d == o.d && grouped_layout == o.grouped_layout;
    }
  };
  Status encode_params(const Buffers& buffers, GemmParams* out) const;
  mutable std::mutex params_mutex_;
  mutable std::optional<Buffers> params_buffers_;  // what params_ describes (none yet); both guarded by the mutex
  mutable GemmParams params_{};
};

}  // namespace dgpt
