#include "gemm_launcher.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "jit/driver.h"
#include "jit/env.h"
#include "tma.h"

namespace dgpt {

const char* gemm_type_name(GemmType type) {
  switch (type) {
    case GemmType::kNormal: return "normal";
    case GemmType::kContiguous: return "contiguous";
    case GemmType::kMasked: return "masked";
  }
  return "unknown";
}

Status parse_gemm_type(const std::string& name, GemmType* out) {
  for (GemmType t : {GemmType::kNormal, GemmType::kContiguous, GemmType::kMasked}) {
    if (name == gemm_type_name(t)) {
      *out = t;
      return Status::Ok();
    }
  }
  return Status::Error("unknown GEMM layout '" + name + "' (expected normal, contiguous or masked)");
}

std::string GemmConfig::describe() const {
  // NOTES: no iostreams in this library: on the H200 image, ostream insertion from this extension
  // crashed inside libstdc++'s locale code (seen 2026-11-28), while std::to_string works.
  using std::to_string;
  return std::string(gemm_type_name(type)) + " m=" + to_string(m) + " n=" + to_string(n) + " k=" + to_string(k) +
         " groups=" + to_string(num_groups) + " block_m=" + to_string(block_m) + " block_n=" + to_string(block_n) +
         " stages=" + to_string(num_stages) + " sms=" + to_string(num_sms) + " k_splits=" + to_string(num_k_splits) +
         " multicast=" + to_string(num_multicast) + " pingpong=" + to_string(pingpong);
}

Status validate(const GemmConfig& c) {
  auto fail = [&](const std::string& rule) { return Status::Error("invalid GEMM config (" + c.describe() + "): " + rule); };
  if (c.block_m != 64 && c.block_m != 128) return fail("block_m must be 64 or 128");
  // NOTES: wider tiles compile but spill (two fp32 accumulators per thread; -Xptxas -v, nvcc 13.0).
  if (c.block_n < 16 || c.block_n > kMaxBlockN || c.block_n % 16 != 0) {
    return fail("block_n must be a multiple of 16 in [16, " + std::to_string(kMaxBlockN) + "]");
  }
  if (c.num_stages < 2 || c.num_stages > 32) return fail("num_stages must be in [2, 32]");
  if (c.num_k_splits < 1 || c.num_k_splits > 8) return fail("num_k_splits must be in [1, 8] (a portable cluster)");
  if (c.n <= 0 || c.n % 8 != 0 || c.n > (1ll << 31)) return fail("n must be a positive multiple of 8");
  if (c.k <= 0 || c.k % 16 != 0 || c.k > (1ll << 31)) return fail("k must be a positive multiple of 16");
  if (c.m <= 0 || c.m > (1ll << 31)) return fail("m must be positive");
  if (c.num_groups <= 0 || c.num_groups > (1ll << 20)) return fail("num_groups must be positive");
  if (c.type == GemmType::kNormal && c.num_groups != 1) return fail("a normal GEMM has one group");
  if (c.num_sms <= 0 || c.num_sms > 4096) return fail("num_sms must be positive");
  if (c.num_multicast != 1 && c.num_multicast != 2) return fail("num_multicast must be 1 or 2");
  if (c.num_multicast > 1 && (c.type != GemmType::kNormal || c.num_k_splits != 1)) {
    return fail("B multicast is for normal GEMMs without split-K");
  }
  if (c.pingpong != 0 && c.pingpong != 1) return fail("pingpong must be 0 or 1");
  // On 64-row tiles pingpong splits each tile's K blocks between two warpgroups of one CTA.
  if (layout::interleaves_k(static_cast<uint32_t>(c.block_m), static_cast<uint32_t>(c.pingpong))) {
    if (c.num_k_splits != 1 || c.num_multicast != 1) {
      return fail("pingpong on block_m=64 (K split inside the CTA) excludes split-K and B multicast");
    }
    // Each stage must always have the same reader (the warpgroups alternate stages).
    if (c.num_stages % 2 != 0) return fail("pingpong on block_m=64 needs an even num_stages");
  }
  if (c.num_sms % c.cluster_size() != 0) {
    return fail("num_sms must be a multiple of num_k_splits * num_multicast (whole clusters)");
  }
  if (c.type == GemmType::kContiguous && 128 % c.block_m != 0) return fail("contiguous layout needs block_m to divide 128");
  const uint32_t smem = layout::smem_size(c.block_m, c.block_n, c.num_stages, c.num_k_splits, c.pingpong);
  if (smem > layout::kMaxSmemBytes) {
    return fail("needs " + std::to_string(smem) + " bytes of shared memory, more than " +
                std::to_string(layout::kMaxSmemBytes));
  }
  return Status::Ok();
}

std::string generate_source(const GemmConfig& c) {
  static const char* kTypeEnum[] = {"kNormal", "kContiguous", "kMasked"};
  using std::to_string;
  return "// jax_dgpt generated kernel: " + std::string(gemm_type_name(c.type)) + " n=" + to_string(c.n) +
         " k=" + to_string(c.k) + "\n#include \"sm90_fp8_gemm.cuh\"\nDGPT_DEFINE_SM90_FP8_GEMM(" +
         kTypeEnum[static_cast<int>(c.type)] + ", " + to_string(c.block_m) + ", " + to_string(c.block_n) + ", " +
         to_string(c.n) + ", " + to_string(c.k) + ", " + to_string(c.num_stages) + ", " + to_string(c.num_k_splits) +
         ", " + to_string(c.num_multicast) + ", " + to_string(c.pingpong) + ")\n";
}

Status compile(const GemmConfig& c, bool ptxas_verbose, jit::CubinEntry* out) {
  DGPT_RETURN_IF_ERROR(validate(c));
  const std::string name = std::string("sm90_fp8_gemm_") + gemm_type_name(c.type);
  return jit::get_or_compile(name, generate_source(c), ptxas_verbose, out);
}

Status GemmKernel::create(const GemmConfig& config, GemmKernel** out) {
  jit::CubinEntry entry;
  DGPT_RETURN_IF_ERROR(compile(config, /*ptxas_verbose=*/false, &entry));
  auto* kernel = new GemmKernel();
  kernel->config_ = config;
  kernel->smem_bytes_ =
      layout::smem_size(config.block_m, config.block_n, config.num_stages, config.num_k_splits, config.pingpong);
  Status status = jit::load_kernel(entry, "dgpt_kernel", &kernel->kernel_);
  if (!status.ok()) {
    delete kernel;
    return status;
  }
  *out = kernel;
  return Status::Ok();
}

Status GemmKernel::prepare(int device_ordinal) {
  if (device_ordinal < 0) return Status::Error("invalid device ordinal " + std::to_string(device_ordinal));
  std::lock_guard<std::mutex> lock(mutex_);
  if (static_cast<size_t>(device_ordinal) < prepared_.size() && prepared_[device_ordinal]) return Status::Ok();

  Status status;
  const driver::Api* cu = driver::get(&status);
  if (cu == nullptr) return status;
  CUdevice device;
  CUresult r = cu->cuDeviceGet(&device, device_ordinal);
  if (r != CUDA_SUCCESS) return Status::Error(driver::describe("cuDeviceGet", r));
  int major = 0, minor = 0;
  r = cu->cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
  if (r == CUDA_SUCCESS) r = cu->cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
  if (r != CUDA_SUCCESS) return Status::Error(driver::describe("cuDeviceGetAttribute(compute capability)", r));
  if (major != 9 || minor != 0) {
    return Status::Error("jax_dgpt kernels need an sm_90a (Hopper) GPU; device " + std::to_string(device_ordinal) +
                         " has compute capability " + std::to_string(major) + "." + std::to_string(minor));
  }
  r = cu->cuKernelSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, static_cast<int>(smem_bytes_),
                               kernel_.kernel, device);
  if (r != CUDA_SUCCESS) return Status::Error(driver::describe("cuKernelSetAttribute(max dynamic smem)", r));
  if (prepared_.size() <= static_cast<size_t>(device_ordinal)) prepared_.resize(device_ordinal + 1, false);
  prepared_[device_ordinal] = true;
  return Status::Ok();
}

// NOTES: a cluster's CTAs must sit in one GPC, and GPCs differ in SM count, so fewer than
// num_sms / cluster_size clusters may fit at once. A persistent grid larger than that runs its last
// clusters as a second wave, after the first ones finished all their tiles (twice the time). The
// scheduler strides by gridDim, so a smaller grid only changes which CTA takes which tile. The answer
// is kept per kernel, not per device (GPUs of one process are assumed alike), and a failed query
// leaves the grid uncapped.
int GemmKernel::grid_for(const CUlaunchConfig& launch) const {
  const int requested = static_cast<int>(config_.num_sms);
  const int cluster = static_cast<int>(config_.cluster_size());
  if (cluster == 1) return requested;
  const driver::Api* cu = driver::get();
  int clusters = 0;
  // The kernel handle stands in for a function here; the context is the launch stream's.
  const CUresult r = cu == nullptr ? CUDA_ERROR_NOT_INITIALIZED
                                   : cu->cuOccupancyMaxActiveClusters(
                                         &clusters, reinterpret_cast<CUfunction>(kernel_.kernel), &launch);
  const int grid = r == CUDA_SUCCESS && clusters > 0 ? std::min(requested, clusters * cluster) : requested;
  if (jit::env_flag("DG_JIT_DEBUG")) {
    std::fprintf(stderr, "jax_dgpt: launch %s: %d co-resident clusters of %d CTAs (%s): grid %d of %d\n",
                 config_.describe().c_str(), clusters, cluster, r == CUDA_SUCCESS ? "ok" : "query failed", grid,
                 requested);
  }
  return grid;
}

Status GemmKernel::encode_params(const Buffers& buffers, GemmParams* out) const {
  const GemmConfig& c = config_;
  const bool masked = c.type == GemmType::kMasked;
  const uint64_t groups_a = masked ? c.num_groups : 1;
  const uint64_t groups_b = c.type == GemmType::kNormal ? 1 : c.num_groups;

  GemmParams params{};  // tensor maps a configuration does not use stay zero
  // NOTES: when all of A's rows fit in one block (small M, or a small Mmax), load only those rows:
  // the TMA unit spends time on zero-filled out-of-bounds rows too (M = 1 ran 1.4x slower than M = 64
  // on the same tiles, benchmarks/KERNEL_LOG.md).
  const uint32_t a_box_rows = static_cast<uint32_t>(std::min<int64_t>(c.block_m, (c.m + 7) / 8 * 8));
  params.a_box_rows = a_box_rows;
  DGPT_RETURN_IF_ERROR(tma::encode({"a", const_cast<void*>(buffers.a), CU_TENSOR_MAP_DATA_TYPE_UINT8, 1,
                                    (uint64_t)c.k, (uint64_t)c.m, groups_a},
                                   layout::kBlockK, a_box_rows, CU_TENSOR_MAP_SWIZZLE_128B, &params.tma_a));
  // With B multicast each CTA of a pair loads half of the B tile (for both).
  DGPT_RETURN_IF_ERROR(tma::encode({"b", const_cast<void*>(buffers.b), CU_TENSOR_MAP_DATA_TYPE_UINT8, 1,
                                    (uint64_t)c.k, (uint64_t)c.n, groups_b},
                                   layout::kBlockK, static_cast<uint32_t>(c.block_n / c.num_multicast),
                                   CU_TENSOR_MAP_SWIZZLE_128B, &params.tma_b));
  // D leaves in 64-column atoms (128B swizzle) plus, when BLOCK_N % 64 != 0, narrower tail atoms.
  const tma::Tensor3d out_tensor = {"out", const_cast<void*>(buffers.d), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2,
                                    (uint64_t)c.n, (uint64_t)c.m, groups_a};
  const uint32_t block_n = static_cast<uint32_t>(c.block_n);
  if (layout::d_main_cols(block_n) > 0) {
    DGPT_RETURN_IF_ERROR(
        tma::encode(out_tensor, layout::kDAtomCols, layout::kWgmmaM, CU_TENSOR_MAP_SWIZZLE_128B, &params.tma_d));
  }
  if (const uint32_t tail = layout::d_tail_cols(block_n); tail > 0) {
    const uint32_t swizzle = layout::swizzle_d_bytes(tail);
    DGPT_RETURN_IF_ERROR(tma::encode(out_tensor, swizzle / 2, layout::kWgmmaM, tma::swizzle_for_bytes(swizzle),
                                     &params.tma_d_tail));
  }
  params.grouped_layout = buffers.grouped_layout;
  params.shape_m = static_cast<uint32_t>(c.m);
  params.num_groups = static_cast<uint32_t>(c.num_groups);
  *out = params;
  return Status::Ok();
}

Status GemmKernel::launch(CUstream stream, const void* a, const void* b, void* d,
                          const int32_t* grouped_layout) const {
  const GemmConfig& c = config_;
  const Buffers buffers{a, b, d, grouped_layout};
  GemmParams params;
  {
    std::lock_guard<std::mutex> lock(params_mutex_);
    if (!params_buffers_ || !(*params_buffers_ == buffers)) {
      params_buffers_.reset();  // a failed encoding leaves nothing to reuse
      DGPT_RETURN_IF_ERROR(encode_params(buffers, &params_));
      params_buffers_ = buffers;
    }
    params = params_;
  }

  Status status;
  const driver::Api* cu = driver::get(&status);
  if (cu == nullptr) return status;
  // NOTES: the launch config lives on the stack: XLA calls handlers from one thread per GPU.
  CUlaunchConfig launch = {};
  launch.gridDimX = static_cast<unsigned>(c.num_sms);
  launch.gridDimY = 1;
  launch.gridDimZ = 1;
  launch.blockDimX = layout::num_threads(static_cast<uint32_t>(c.block_m), static_cast<uint32_t>(c.pingpong));
  launch.blockDimY = 1;
  launch.blockDimZ = 1;
  launch.sharedMemBytes = smem_bytes_;
  launch.hStream = stream;
  // Split-K (the CTAs sharing a tile reduce through each other's shared memory) and B multicast
  // (a pair of CTAs fills each other's stages) need their CTAs in one cluster.
  CUlaunchAttribute cluster = {};
  cluster.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
  cluster.value.clusterDim.x = static_cast<unsigned>(c.cluster_size());
  cluster.value.clusterDim.y = 1;
  cluster.value.clusterDim.z = 1;
  launch.attrs = c.cluster_size() > 1 ? &cluster : nullptr;
  launch.numAttrs = c.cluster_size() > 1 ? 1 : 0;
  int grid = grid_.load(std::memory_order_relaxed);
  if (grid == 0) {
    grid = grid_for(launch);
    grid_.store(grid, std::memory_order_relaxed);
  }
  launch.gridDimX = static_cast<unsigned>(grid);
  void* args[] = {&params};
  const CUresult r = cu->cuLaunchKernelEx(&launch, reinterpret_cast<CUfunction>(kernel_.kernel), args, nullptr);
  if (r != CUDA_SUCCESS) return Status::Error(driver::describe("cuLaunchKernelEx", r));
  return Status::Ok();
}

}  // namespace dgpt
