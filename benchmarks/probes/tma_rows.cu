// Probe: how fast TMA streams a GEMM's A and B boxes into shared memory when operand rows are not whole
// 128-byte lines (K = 7184: every row starts 16 bytes later within its line than the one before).
//
// The producer side of the GEMM alone: 132 persistent CTAs walk the output tiles of an M x N x K problem;
// per K block one thread loads an A box (block_m rows) and a B box (block_n rows) into a ring of stages,
// another thread waits for each stage and releases it. No math: the time is what the loads need. Variants
// (argv): row stride, 2D or 3D tensor map, swizzle (box width 128/64/32 bytes, so 1/2/4 boxes per operand
// and K block), L2 promotion, and which operand is padded.
//
// Build and run (benchmarks/KERNEL_LOG.md v18):
//   nvcc -std=c++20 -O3 -arch=sm_90a -I kernels benchmarks/probes/tma_rows.cu -lcuda -o /tmp/tma_rows
//   /tmp/tma_rows            (prints one line per variant)
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "ptx.cuh"

using dgpt::u32;
using dgpt::u64;
using dgpt::u8;
namespace ptx = dgpt::ptx;

#define CHECK_CU(x)                                                          \
  do {                                                                       \
    CUresult r_ = (x);                                                       \
    if (r_ != CUDA_SUCCESS) {                                                \
      const char* s_ = nullptr;                                              \
      cuGetErrorString(r_, &s_);                                             \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, s_);    \
      std::exit(1);                                                          \
    }                                                                        \
  } while (0)
#define CHECK_RT(x)                                                                                 \
  do {                                                                                              \
    cudaError_t e_ = (x);                                                                           \
    if (e_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));       \
      std::exit(1);                                                                                 \
    }                                                                                               \
  } while (0)

constexpr u32 kBlockK = 128;  // bytes of K per stage (fp8)
constexpr u32 kStages = 4;

struct Probe {
  CUtensorMap a, b;
  u32 m, n, k;              // problem (k: logical K in bytes)
  u32 block_m, block_n;     // tile
  u32 box_width;            // bytes per box row: 128, 64 or 32
  u32 dims;                 // 2 or 3
};

__device__ __forceinline__ void load_2d(const CUtensorMap* map, u64* bar, void* dst, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
          ptx::smem_addr(dst)),
      "l"(reinterpret_cast<u64>(map)), "r"(ptx::smem_addr(bar)), "r"(c0), "r"(c1)
      : "memory");
}

__device__ __forceinline__ void load(const Probe& p, const CUtensorMap* map, u64* bar, u8* dst, u32 rows, int k,
                                     int row) {
  // A K block of `rows` rows: 128 / box_width boxes side by side, each rows x box_width bytes.
  for (u32 part = 0; part < kBlockK / p.box_width; ++part) {
    u8* to = dst + part * rows * p.box_width;
    const int c0 = k + static_cast<int>(part * p.box_width);
    if (p.dims == 2) {
      load_2d(map, bar, to, c0, row);
    } else {
      ptx::tma_load_3d(reinterpret_cast<const dgpt::TmaDescriptor*>(map), bar, to, c0, row, 0);
    }
  }
}

__global__ void __launch_bounds__(64, 1) stream(const __grid_constant__ Probe p) {
  extern __shared__ __align__(1024) u8 smem[];
  const u32 a_bytes = p.block_m * kBlockK, b_bytes = p.block_n * kBlockK;
  u8* a = smem;
  u8* b = smem + kStages * a_bytes;
  u64* full = reinterpret_cast<u64*>(b + kStages * b_bytes);
  u64* empty = full + kStages;
  if (threadIdx.x == 0) {
    for (u32 s = 0; s < kStages; ++s) {
      ptx::mbarrier_init(&full[s], 1);
      ptx::mbarrier_init(&empty[s], 1);
    }
    ptx::fence_barrier_init();
  }
  __syncthreads();
  const u32 m_blocks = (p.m + p.block_m - 1) / p.block_m, n_blocks = (p.n + p.block_n - 1) / p.block_n;
  const u32 k_blocks = (p.k + kBlockK - 1) / kBlockK;
  const u32 tiles = m_blocks * n_blocks;
  u32 stage = 0, phase = 0;
  if (threadIdx.x == 0) {
    for (u32 t = blockIdx.x; t < tiles; t += gridDim.x) {
      // Column-major over tiles within a wave, as the GEMM's scheduler walks them (a wave shares rows of A).
      const int row = static_cast<int>((t % m_blocks) * p.block_m), col = static_cast<int>((t / m_blocks) * p.block_n);
      for (u32 kb = 0; kb < k_blocks; ++kb) {
        ptx::mbarrier_wait(&empty[stage], phase ^ 1);
        ptx::mbarrier_arrive_expect_tx(&full[stage], a_bytes + b_bytes);
        const int k = static_cast<int>(kb * kBlockK);
        load(p, &p.a, &full[stage], a + stage * a_bytes, p.block_m, k, row);
        load(p, &p.b, &full[stage], b + stage * b_bytes, p.block_n, k, col);
        if (++stage == kStages) stage = 0, phase ^= 1;
      }
    }
  } else if (threadIdx.x == 32) {
    for (u32 t = blockIdx.x; t < tiles; t += gridDim.x) {
      for (u32 kb = 0; kb < k_blocks; ++kb) {
        ptx::mbarrier_wait(&full[stage], phase);
        ptx::mbarrier_arrive(&empty[stage]);
        if (++stage == kStages) stage = 0, phase ^= 1;
      }
    }
  }
}

static CUtensorMap encode(void* data, u32 dims, u64 inner, u64 rows, u64 stride, u32 box_width, u32 box_rows,
                          CUtensorMapL2promotion promotion) {
  CUtensorMap map;
  const CUtensorMapSwizzle swizzle = box_width == 128  ? CU_TENSOR_MAP_SWIZZLE_128B
                                     : box_width == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
                                                       : CU_TENSOR_MAP_SWIZZLE_32B;
  const cuuint64_t size[3] = {inner, rows, 1};
  const cuuint64_t strides[2] = {stride, stride * rows};
  const cuuint32_t box[3] = {box_width, box_rows, 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  CHECK_CU(cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, dims, data, size, strides, box, element_strides,
                                  CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, promotion, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
  return map;
}

int main() {
  CHECK_RT(cudaSetDevice(0));
  const u32 m = 16384, n = 1552, k = 7184;
  const u32 k_pad = (k + 127) / 128 * 128;
  int sms = 0;
  CHECK_RT(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  // Buffers large enough for the padded stride; the contents do not matter.
  u8 *a = nullptr, *b = nullptr, *flush = nullptr;
  CHECK_RT(cudaMalloc(&a, size_t(m) * k_pad));
  CHECK_RT(cudaMalloc(&b, size_t(n) * k_pad));
  CHECK_RT(cudaMemset(a, 1, size_t(m) * k_pad));
  CHECK_RT(cudaMemset(b, 1, size_t(n) * k_pad));
  const size_t flush_bytes = size_t(512) << 20;
  CHECK_RT(cudaMalloc(&flush, flush_bytes));
  const size_t smem = kStages * 384 * kBlockK + 2 * kStages * sizeof(u64);  // the largest tile: 256 + 128 rows
  CHECK_RT(cudaFuncSetAttribute(stream, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));

  struct Variant {
    const char* name;
    u64 stride_a, stride_b;
    u32 dims, box_width;
    CUtensorMapL2promotion promotion, promotion_b;
    u32 block_m = 128, block_n = 224;
  };
  constexpr auto P256 = CU_TENSOR_MAP_L2_PROMOTION_L2_256B, P128 = CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                 P0 = CU_TENSOR_MAP_L2_PROMOTION_NONE;
  const std::vector<Variant> variants = {
      {"aligned  3d swz128 L2_256", k_pad, k_pad, 3, 128, P256, P256},
      {"7184     3d swz128 L2_256", k, k, 3, 128, P256, P256},
      {"7184     2d swz128 L2_256", k, k, 2, 128, P256, P256},
      {"aligned  2d swz128 L2_256", k_pad, k_pad, 2, 128, P256, P256},
      {"7184     3d swz128 L2_128", k, k, 3, 128, P128, P128},
      {"7184     3d swz128 L2_none", k, k, 3, 128, P0, P0},
      {"aligned  3d swz128 L2_128", k_pad, k_pad, 3, 128, P128, P128},
      {"7184     3d swz64  L2_256", k, k, 3, 64, P256, P256},
      {"7184     3d swz32  L2_256", k, k, 3, 32, P256, P256},
      {"aligned  3d swz64  L2_256", k_pad, k_pad, 3, 64, P256, P256},
      {"A 7184, B aligned L2_256", k, k_pad, 3, 128, P256, P256},
      {"A 7184 L2_128, B aligned L2_256", k, k_pad, 3, 128, P128, P256},
      {"A 7184 L2_none, B aligned L2_256", k, k_pad, 3, 128, P0, P256},
      {"A aligned, B 7184 L2_256", k_pad, k, 3, 128, P256, P256},
      {"A aligned, B 7184 L2_128", k_pad, k, 3, 128, P256, P128},
      {"256x128 aligned L2_256", k_pad, k_pad, 3, 128, P256, P256, 256, 128},
      {"256x128 7184 L2_256", k, k, 3, 128, P256, P256, 256, 128},
      {"256x128 7184 L2_128", k, k, 3, 128, P128, P128, 256, 128},
      {"256x128 A 7184 L2_128, B aligned", k, k_pad, 3, 128, P128, P256, 256, 128},
  };

  std::printf("M=%u N=%u K=%u, %d CTAs, %u stages; tiles 128x224 unless named; us per launch (min / median of 20, L2 "
              "flushed)\n", m, n, k, sms, kStages);
  cudaEvent_t start, stop;
  CHECK_RT(cudaEventCreate(&start));
  CHECK_RT(cudaEventCreate(&stop));
  for (const Variant& v : variants) {
    Probe p{};
    const u32 block_m = v.block_m, block_n = v.block_n;
    p.m = m, p.n = n, p.k = k, p.block_m = block_m, p.block_n = block_n, p.box_width = v.box_width, p.dims = v.dims;
    p.a = encode(a, v.dims, k, m, v.stride_a, v.box_width, block_m, v.promotion);
    p.b = encode(b, v.dims, k, n, v.stride_b, v.box_width, block_n, v.promotion_b);
    std::vector<float> times;
    for (int rep = 0; rep < 22; ++rep) {
      CHECK_RT(cudaMemsetAsync(flush, rep, flush_bytes));
      CHECK_RT(cudaEventRecord(start));
      stream<<<sms, 64, smem>>>(p);
      CHECK_RT(cudaEventRecord(stop));
      CHECK_RT(cudaEventSynchronize(stop));
      CHECK_RT(cudaGetLastError());
      float ms = 0;
      CHECK_RT(cudaEventElapsedTime(&ms, start, stop));
      if (rep >= 2) times.push_back(ms * 1000);
    }
    std::sort(times.begin(), times.end());
    const double tiles = double((m + block_m - 1) / block_m) * ((n + block_n - 1) / block_n);
    const double bytes = tiles * ((k + 127) / 128) * (block_m + block_n) * 128.0;
    std::printf("%-36s %8.1f / %8.1f us  %6.2f TB/s into shared memory\n", v.name, times.front(),
                times[times.size() / 2], bytes / (times[times.size() / 2] * 1e-6) / 1e12);
  }
  return 0;
}
