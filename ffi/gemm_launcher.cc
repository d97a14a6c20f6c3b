#include "gemm_launcher.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "jit/driver.h"
#include "jit/env.h"
#include "tma.h"

namespace dgpt {

Status compile(const KernelConfig& c, bool ptxas_verbose, jit::CubinEntry* out) {
  DGPT_RETURN_IF_ERROR(check_config(c));
  const std::string name = std::string("sm90_fp8_gemm_") + layout_name(c.layout);
  return jit::get_or_compile(name, generate_source(c), ptxas_verbose, out);
}

Status GemmKernel::create(const KernelConfig& config, GemmKernel** out) {
  jit::CubinEntry entry;
  DGPT_RETURN_IF_ERROR(compile(config, /*ptxas_verbose=*/false, &entry));
  auto* kernel = new GemmKernel();
  kernel->config_ = config;
  kernel->smem_bytes_ = smem_size(config);
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
// grid_size / cluster_size clusters may fit at once. A persistent grid larger than that runs its last
// clusters as a second wave, after the first ones finished all their tiles (twice the time). The
// scheduler strides by gridDim, so a smaller grid only changes which CTA takes which tile. The answer
// is kept per kernel, not per device (GPUs of one process are assumed alike), and a failed query
// leaves the grid uncapped.
int GemmKernel::grid_for(const CUlaunchConfig& launch) const {
  const int requested = static_cast<int>(config_.grid_size);
  const int cluster = static_cast<int>(cluster_size(config_));
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
                 describe(config_).c_str(), clusters, cluster, r == CUDA_SUCCESS ? "ok" : "query failed", grid,
                 requested);
  }
  return grid;
}

Status GemmKernel::encode_params(const GemmOperands& buffers, GemmParams* out) const {
  const KernelConfig& c = config_;
  const bool masked = c.layout == Layout::kMasked;
  const uint64_t groups_a = masked ? c.num_groups : 1;
  const uint64_t groups_b = c.layout == Layout::kNormal || c.layout == Layout::kKGrouped ? 1 : c.num_groups;

  GemmParams params{};  // tensor maps a configuration does not use stay zero
  const TmaBoxes box = tma_boxes(c);
  params.a_box_rows = box.a_rows;
  DGPT_RETURN_IF_ERROR(tma::encode({"a", const_cast<void*>(buffers.a), CU_TENSOR_MAP_DATA_TYPE_UINT8, 1,
                                    (uint64_t)c.k, (uint64_t)c.m, groups_a},
                                   box.inner_k, box.a_load_rows, CU_TENSOR_MAP_SWIZZLE_128B, &params.tma_a));
  DGPT_RETURN_IF_ERROR(tma::encode({"b", const_cast<void*>(buffers.b), CU_TENSOR_MAP_DATA_TYPE_UINT8, 1,
                                    (uint64_t)c.k, (uint64_t)c.n, groups_b},
                                   box.inner_k, box.b_rows, CU_TENSOR_MAP_SWIZZLE_128B, &params.tma_b));
  // D leaves in 128-byte atoms (128B swizzle) plus, when the tile is not a whole number of them wide, tail
  // atoms (tma_boxes). Masked and k_grouped outputs have one [M, N] matrix per group.
  const bool f32_out = c.out_dtype == static_cast<long long>(OutType::kF32);
  const uint64_t groups_d = masked || c.layout == Layout::kKGrouped ? c.num_groups : 1;
  const tma::Tensor3d out_tensor = {"out", const_cast<void*>(buffers.d),
                                    f32_out ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                                    out_bytes(c), (uint64_t)c.n, (uint64_t)c.m, groups_d};
  if (box.d_main_cols > 0) {
    DGPT_RETURN_IF_ERROR(
        tma::encode(out_tensor, box.d_main_cols, box.d_rows, CU_TENSOR_MAP_SWIZZLE_128B, &params.tma_d));
  }
  if (box.d_tail_cols > 0) {
    DGPT_RETURN_IF_ERROR(tma::encode(out_tensor, box.d_tail_cols, box.d_rows,
                                     tma::swizzle_for_bytes(box.d_tail_swizzle), &params.tma_d_tail));
  }
  params.d_group_stride = static_cast<uint64_t>(c.m) * static_cast<uint64_t>(c.n);
  params.shape_m = static_cast<uint32_t>(c.m);
  params.num_groups = static_cast<uint32_t>(c.num_groups);
  set_pointers(buffers, &params);
  *out = params;
  return Status::Ok();
}

void GemmKernel::set_pointers(const GemmOperands& buffers, GemmParams* params) {
  params->d_direct = buffers.d;
  params->scale_a = buffers.scale_a.data;
  params->scale_a_group_stride = buffers.scale_a.group_stride;
  params->scale_a_row_stride = buffers.scale_a.row_stride;
  params->scale_b = buffers.scale_b.data;
  params->scale_b_group_stride = buffers.scale_b.group_stride;
  params->scale_b_col_stride = buffers.scale_b.row_stride;
  params->grouped_layout = buffers.grouped_layout;
}

Status GemmKernel::update_params(const GemmOperands& before, const GemmOperands& buffers, GemmParams* params) const {
  if (buffers.a != before.a) DGPT_RETURN_IF_ERROR(tma::replace_address("a", buffers.a, &params->tma_a));
  if (buffers.b != before.b) DGPT_RETURN_IF_ERROR(tma::replace_address("b", buffers.b, &params->tma_b));
  if (buffers.d != before.d) {
    const TmaBoxes box = tma_boxes(config_);
    if (box.d_main_cols > 0) DGPT_RETURN_IF_ERROR(tma::replace_address("out", buffers.d, &params->tma_d));
    if (box.d_tail_cols > 0) DGPT_RETURN_IF_ERROR(tma::replace_address("out", buffers.d, &params->tma_d_tail));
  }
  set_pointers(buffers, params);
  return Status::Ok();
}

Status GemmKernel::launch(CUstream stream, const GemmOperands& operands) const {
  const KernelConfig& c = config_;
  if ((c.has_scale_a != 0) != (operands.scale_a.data != nullptr) ||
      (c.has_scale_b != 0) != (operands.scale_b.data != nullptr)) {
    return Status::Error("the scale operands do not match the config's has_scale_a / has_scale_b");
  }
  GemmParams params;
  {
    std::lock_guard<std::mutex> lock(params_mutex_);
    if (!params_operands_ || !(*params_operands_ == operands)) {
      const std::optional<GemmOperands> before = params_operands_;
      params_operands_.reset();  // a failed encoding or update leaves nothing to reuse
      DGPT_RETURN_IF_ERROR(before ? update_params(*before, operands, &params_) : encode_params(operands, &params_));
      params_operands_ = operands;
    }
    params = params_;
  }

  Status status;
  const driver::Api* cu = driver::get(&status);
  if (cu == nullptr) return status;
  // NOTES: the launch config lives on the stack: XLA calls handlers from one thread per GPU.
  CUlaunchConfig launch = {};
  launch.gridDimX = static_cast<unsigned>(c.grid_size);
  launch.gridDimY = 1;
  launch.gridDimZ = 1;
  launch.blockDimX = num_threads(c);
  launch.blockDimY = 1;
  launch.blockDimZ = 1;
  launch.sharedMemBytes = smem_bytes_;
  launch.hStream = stream;
  // Clusters: split-K's CTAs reduce through each other's shared memory; multicast_a's share A's stages.
  CUlaunchAttribute cluster = {};
  cluster.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
  cluster.value.clusterDim.x = cluster_size(c);
  cluster.value.clusterDim.y = 1;
  cluster.value.clusterDim.z = 1;
  launch.attrs = cluster_size(c) > 1 ? &cluster : nullptr;
  launch.numAttrs = cluster_size(c) > 1 ? 1 : 0;
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
