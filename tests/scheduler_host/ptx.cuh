// Host stand-in for kernels/ptx.cuh, for tests/test_tile_scheduler.py: the scheduler's only device calls are its
// loads of the group-layout array, which on the host read memory directly.
#pragma once

#include "dgpt_types.cuh"

namespace dgpt::ptx {
inline i32 load_global_nc(const i32* ptr) { return *ptr; }
inline float load_global_nc(const float* ptr) { return *ptr; }
}  // namespace dgpt::ptx
