// Host side of the sm90 FP8 GEMM family: validates a configuration, generates and JIT-compiles
// its kernel, prepares it per device and launches it. Knows nothing about XLA.
#pragma once

#include <cuda.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dgpt_types.cuh"
#include "jit/kernel_cache.h"
#include "jit/kernel_runtime.h"
#include "jit/status.h"

namespace dgpt {

// Everything the Python heuristics decide, as FFI attributes. m and num_groups are run-time
// values of the kernel (one cubin serves every M); the rest are compile-time constants.
struct GemmConfig {
  GemmType type = GemmType::kNormal;
  int64_t m = 0;           // rows of A (Mmax per group for masked)
  int64_t n = 0;
  int64_t k = 0;
  int64_t num_groups = 1;
  int64_t block_m = 0;
  int64_t block_n = 0;
  int64_t num_stages = 0;
  int64_t num_sms = 0;     // grid size (whole clusters: a multiple of cluster_size())
  int64_t num_k_splits = 1;  // CTAs of a cluster sharing one tile, one K slice each
  int64_t num_multicast = 1;  // normal GEMMs: CTAs of a cluster sharing one B tile (vertically adjacent tiles)
  int64_t pingpong = 0;       // 1: two math warpgroups take turns: per K block (block_m 128) or K blocks (64)

  static GemmConfig make(GemmType type, int64_t m, int64_t n, int64_t k, int64_t num_groups, int64_t block_m,
                         int64_t block_n, int64_t num_stages, int64_t num_sms, int64_t num_k_splits,
                         int64_t num_multicast, int64_t pingpong) {
    return GemmConfig{type, m, n, k, num_groups, block_m, block_n, num_stages, num_sms, num_k_splits, num_multicast,
                      pingpong};
  }
  int64_t cluster_size() const { return num_k_splits * num_multicast; }
  std::string describe() const;
};

const char* gemm_type_name(GemmType type);  // "normal", "contiguous", "masked"
Status parse_gemm_type(const std::string& name, GemmType* out);

// The widest BLOCK_N that compiles without register spills for every layout.
constexpr int64_t kMaxBlockN = 208;

// Checks a configuration against the kernel's compile-time rules.
Status validate(const GemmConfig& config);

// The tiny translation unit the JIT compiles for `config`.
std::string generate_source(const GemmConfig& config);

// Compiles (or fetches from the cache) the cubin for `config`.
Status compile(const GemmConfig& config, bool ptxas_verbose, jit::CubinEntry* out);

// A compiled, loaded kernel plus the per-device setup done by `prepare`.
class GemmKernel {
 public:
  static Status create(const GemmConfig& config, GemmKernel** out);  // owned by caller

  // Checks the device (sm_90) and raises the kernel's shared-memory limit on it; once per device.
  Status prepare(int device_ordinal);

  // Encodes the TMA descriptors for these buffers (or reuses the last ones when the buffers are the
  // same) and launches on `stream`. No sync, no allocation.
  Status launch(CUstream stream, const void* a, const void* b, void* d, const int32_t* grouped_layout) const;

  const GemmConfig& config() const { return config_; }

 private:
  GemmConfig config_;
  jit::LoadedKernel kernel_;
  uint32_t smem_bytes_ = 0;
  std::mutex mutex_;
  std::vector<bool> prepared_;  // by device ordinal, guarded by mutex_
  // CTAs launched: config_.num_sms, or for clusters at most the co-resident clusters' CTAs (0: not yet
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
