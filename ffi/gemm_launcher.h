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

// One fp32 scale operand as the kernel reads it: element group * group_stride + row * row_stride (row of A,
// or column of D for scale_b); strides in elements, 0 broadcasts. No data: the config has no such scale.
struct ScaleOperand {
  const float* data = nullptr;
  uint32_t group_stride = 0;
  uint32_t row_stride = 0;
  bool operator==(const ScaleOperand& o) const {
    return data == o.data && group_stride == o.group_stride && row_stride == o.row_stride;
  }
};

// The device buffers of one launch. `d` is the output (for an accumulating config it holds c on entry).
struct GemmOperands {
  const void* a = nullptr;
  const void* b = nullptr;
  void* d = nullptr;
  const int32_t* grouped_layout = nullptr;  // m_indices, masked_m or group_sizes; null for normal
  ScaleOperand scale_a, scale_b;
  bool operator==(const GemmOperands& o) const {
    return a == o.a && b == o.b && d == o.d && grouped_layout == o.grouped_layout && scale_a == o.scale_a &&
           scale_b == o.scale_b;
  }
};

// A compiled, loaded kernel plus the per-device setup done by `prepare`.
class GemmKernel {
 public:
  static Status create(const KernelConfig& config, GemmKernel** out);  // owned by caller

  // Checks the device (sm_90) and raises the kernel's shared-memory limit on it; once per device.
  Status prepare(int device_ordinal);

  // Encodes the TMA descriptors for these buffers (or reuses the last ones when the buffers are the
  // same) and launches on `stream`. No sync, no allocation.
  Status launch(CUstream stream, const GemmOperands& operands) const;

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

  // The kernel parameter depends only on the static config and the operands. NOTES: an XLA executable
  // usually hands a custom call the same buffers on every run, and encoding the three or four tensor
  // maps is a large part of the host time of one launch; the last parameter is kept and reused, and when
  // some buffers change (a program's outputs get new ones on every run) only their maps' addresses are
  // replaced (cuTensorMapReplaceAddress), not the maps encoded again.
  Status encode_params(const GemmOperands& operands, GemmParams* out) const;
  Status update_params(const GemmOperands& before, const GemmOperands& operands, GemmParams* params) const;
  static void set_pointers(const GemmOperands& operands, GemmParams* params);  // every field that is not a map
  mutable std::mutex params_mutex_;
  mutable std::optional<GemmOperands> params_operands_;  // what params_ describes (none yet); both guarded by the mutex
  mutable GemmParams params_{};
};

}  // namespace dgpt
