// The CUDA driver, loaded at run time so the extension builds and imports without a GPU or libcuda.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>

#include <string>

#include "jit/status.h"

namespace dgpt::driver {

// Entry points resolved through cuGetProcAddress; add one here when a new call is needed.
struct Api {
  PFN_cuGetErrorString_v6000 cuGetErrorString;
  PFN_cuInit_v2000 cuInit;
  PFN_cuDeviceGet_v2000 cuDeviceGet;
  PFN_cuDeviceGetAttribute_v2000 cuDeviceGetAttribute;
  PFN_cuLibraryLoadData_v12000 cuLibraryLoadData;
  PFN_cuLibraryGetKernel_v12000 cuLibraryGetKernel;
  PFN_cuKernelSetAttribute_v12000 cuKernelSetAttribute;
  PFN_cuLaunchKernelEx_v11060 cuLaunchKernelEx;
  PFN_cuOccupancyMaxActiveClusters_v11070 cuOccupancyMaxActiveClusters;
  PFN_cuTensorMapEncodeTiled_v12000 cuTensorMapEncodeTiled;
  PFN_cuTensorMapReplaceAddress_v12000 cuTensorMapReplaceAddress;
};

// Loads libcuda.so.1 and resolves every entry point once (thread-safe). Returns nullptr and sets
// `*status` (when given) if the driver or an entry point is missing; never aborts.
const Api* get(Status* status = nullptr);

// "cuXxx failed: CUDA_ERROR_... (message)" for a failed driver call.
std::string describe(const char* call, CUresult result);

}  // namespace dgpt::driver
