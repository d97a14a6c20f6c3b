#include "tma.h"

#include <cstddef>
#include <cstring>
#include <string>

#include "jit/driver.h"

namespace dgpt::tma {

// NOTES: CUDA 13 declares CUtensorMap 128-byte aligned; TMA itself needs 64, which the kernel
// parameter gets from TmaDescriptor, so only the size has to match.
static_assert(sizeof(TmaDescriptor) == sizeof(CUtensorMap), "TmaDescriptor must mirror CUtensorMap");
// The kernel parameter's layout, as the device compiler sees it too (one header, same rules).
static_assert(sizeof(GemmParams) == 640 && offsetof(GemmParams, tma_b) == 128 && offsetof(GemmParams, tma_d) == 256 &&
                  offsetof(GemmParams, tma_d_tail) == 384 && offsetof(GemmParams, grouped_layout) == 512 &&
                  alignof(GemmParams) == 64,
              "GemmParams layout changed: check the kernel side");

CUtensorMapSwizzle swizzle_for_bytes(uint32_t bytes) {
  switch (bytes) {
    case 128: return CU_TENSOR_MAP_SWIZZLE_128B;
    case 64: return CU_TENSOR_MAP_SWIZZLE_64B;
    case 32: return CU_TENSOR_MAP_SWIZZLE_32B;
    default: return CU_TENSOR_MAP_SWIZZLE_NONE;
  }
}

namespace {

Status check_address(const char* operand, const void* data) {
  if (reinterpret_cast<uintptr_t>(data) % 16 == 0) return Status::Ok();
  return Status::Error(std::string("operand ") + operand + ": TMA needs a 16-byte aligned buffer; got address " +
                       std::to_string(reinterpret_cast<uintptr_t>(data)));
}

}  // namespace

Status encode(const Tensor3d& t, uint32_t box_inner, uint32_t box_rows, CUtensorMapSwizzle swizzle,
              TmaDescriptor* out) {
  const uint64_t row_bytes = t.inner * t.element_bytes;
  // NOTES: built only on failure; this runs in the execute stage of every call.
  auto operand = [&t]() { return std::string("operand ") + t.operand + ": "; };
  DGPT_RETURN_IF_ERROR(check_address(t.operand, t.data));
  if (row_bytes % 16 != 0) {
    return Status::Error(operand() + "TMA needs row strides that are multiples of 16 bytes; got " +
                         std::to_string(row_bytes));
  }
  if (t.inner == 0 || t.rows == 0 || t.groups == 0) return Status::Error(operand() + "TMA cannot describe an empty tensor");
  Status status;
  const driver::Api* cu = driver::get(&status);
  if (cu == nullptr) return status;

  const cuuint64_t dims[3] = {t.inner, t.rows, t.groups};
  const cuuint64_t strides[2] = {row_bytes, row_bytes * t.rows};  // bytes, for dims 1 and 2
  const cuuint32_t box[3] = {box_inner, box_rows, 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  // NOTES: rows that are not whole 128-byte lines split every box row over two lines; fetching 256 bytes
  // per L2 miss then costs more than it saves. TMA loads alone (benchmarks/probes/tma_rows.cu, H200,
  // 16384 x 1552 x 7184 tiles): whole lines 221 us with 256-byte promotion, 227 with 128; split lines 447
  // with 256, 377 with 128, 389 with none.
  const CUtensorMapL2promotion promotion =
      row_bytes % 128 == 0 ? CU_TENSOR_MAP_L2_PROMOTION_L2_256B : CU_TENSOR_MAP_L2_PROMOTION_L2_128B;
  CUtensorMap map;
  const CUresult r = cu->cuTensorMapEncodeTiled(&map, t.dtype, 3, t.data, dims, strides, box, element_strides,
                                                CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, promotion,
                                                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) return Status::Error(operand() + driver::describe("cuTensorMapEncodeTiled", r));
  std::memcpy(out, &map, sizeof(map));
  return Status::Ok();
}

Status replace_address(const char* operand, const void* data, TmaDescriptor* map) {
  DGPT_RETURN_IF_ERROR(check_address(operand, data));
  Status status;
  const driver::Api* cu = driver::get(&status);
  if (cu == nullptr) return status;
  const CUresult r = cu->cuTensorMapReplaceAddress(reinterpret_cast<CUtensorMap*>(map), const_cast<void*>(data));
  if (r != CUDA_SUCCESS) {
    return Status::Error(std::string("operand ") + operand + ": " + driver::describe("cuTensorMapReplaceAddress", r));
  }
  return Status::Ok();
}

}  // namespace dgpt::tma
