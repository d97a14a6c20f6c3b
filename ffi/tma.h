// TMA descriptor encoding for row-major tensors viewed as (inner, rows, groups).
#pragma once

#include <cuda.h>

#include <cstdint>

#include "dgpt_types.cuh"
#include "jit/status.h"

namespace dgpt::tma {

struct Tensor3d {
  const char* operand;  // for messages: "a", "b", "out"
  void* data;
  CUtensorMapDataType dtype;
  uint32_t element_bytes;
  uint64_t inner;   // contiguous dimension (elements)
  uint64_t rows;
  uint64_t groups;
};

// Encodes `tensor` with box (box_inner, box_rows, 1) and the given swizzle. Checks the TMA rules
// (16-byte aligned base and strides, box limits) and reports which one failed.
Status encode(const Tensor3d& tensor, uint32_t box_inner, uint32_t box_rows, CUtensorMapSwizzle swizzle,
              TmaDescriptor* out);

// Points a map `encode` made at another buffer of the same shape (`operand` names it in messages).
Status replace_address(const char* operand, const void* data, TmaDescriptor* map);

CUtensorMapSwizzle swizzle_for_bytes(uint32_t bytes);

}  // namespace dgpt::tma
