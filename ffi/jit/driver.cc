// Loads libcuda.so.1 with dlopen and resolves the Api through cuGetProcAddress, once per process.
#include "jit/driver.h"

#include <dlfcn.h>

#include <string>

namespace dgpt::driver {
namespace {

// NOTES: every entry point in Api exists since CUDA 12.0 (cuLibrary*, cuTensorMap*), so asking
// for the 12.0 ABI of each gives the typedefs' signatures on any newer driver.
constexpr int kRequestedVersion = 12000;

// Everything the one-time load produces; never destroyed.
struct Loaded {
  Api api{};
  PFN_cuGetErrorName_v6000 get_error_name = nullptr;
  PFN_cuGetErrorString_v6000 get_error_string = nullptr;
  std::string error;  // empty when the driver is usable
};

// The two cuGetProcAddress ABIs: v2 (CUDA >= 12.0) reports why a symbol is missing.
struct ProcAddress {
  PFN_cuGetProcAddress_v12000 v2 = nullptr;
  PFN_cuGetProcAddress_v11030 v1 = nullptr;

  template <typename Fn>
  bool resolve(const char* name, Fn* out) const {
    void* fn = nullptr;
    CUresult result;
    if (v2) {
      CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
      result = v2(name, &fn, kRequestedVersion, CU_GET_PROC_ADDRESS_DEFAULT, &found);
      if (found != CU_GET_PROC_ADDRESS_SUCCESS) fn = nullptr;
    } else {
      result = v1(name, &fn, kRequestedVersion, CU_GET_PROC_ADDRESS_DEFAULT);
    }
    *out = (result == CUDA_SUCCESS) ? reinterpret_cast<Fn>(fn) : nullptr;
    return *out != nullptr;
  }
};

std::string describe_with(const Loaded& loaded, const char* call, CUresult result) {
  // Name and message from the driver when it is loaded far enough to tell us.
  const char* name = nullptr;
  const char* text = nullptr;
  if (loaded.get_error_name && loaded.get_error_name(result, &name) != CUDA_SUCCESS) name = nullptr;
  if (loaded.get_error_string && loaded.get_error_string(result, &text) != CUDA_SUCCESS) {
    text = nullptr;
  }
  std::string message = std::string(call) + " failed: ";
  message += name ? std::string(name) : "CUDA error " + std::to_string(int(result));
  if (text) message += std::string(" (") + text + ")";
  return message;
}

Loaded* load() {
  auto* loaded = new Loaded();
  // The library itself. NOTES: RTLD_LOCAL keeps its symbols from interposing on other modules;
  // the handle is never closed because kernels and graphs outlive any owner we could name.
  void* handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    loaded->error = std::string("CUDA driver libcuda.so.1 not found: ") + (why ? why : "unknown");
    return loaded;
  }
  // cuGetProcAddress: the v2 ABI when the driver exports it, else the CUDA 11.3 one.
  ProcAddress proc;
  proc.v2 = reinterpret_cast<PFN_cuGetProcAddress_v12000>(dlsym(handle, "cuGetProcAddress_v2"));
  if (!proc.v2) {
    proc.v1 = reinterpret_cast<PFN_cuGetProcAddress_v11030>(dlsym(handle, "cuGetProcAddress"));
  }
  if (!proc.v2 && !proc.v1) {
    loaded->error =
        "CUDA driver libcuda.so.1 has no cuGetProcAddress; a CUDA 12.0+ driver is needed";
    return loaded;
  }
  // Error text first, so later failures can be described.
  proc.resolve("cuGetErrorName", &loaded->get_error_name);
  proc.resolve("cuGetErrorString", &loaded->get_error_string);
  // Every Api field; the first missing one is reported.
  Api& api = loaded->api;
  const char* missing = nullptr;
  auto need = [&](const char* name, auto* field) {
    if (!proc.resolve(name, field) && !missing) missing = name;
  };
  need("cuGetErrorString", &api.cuGetErrorString);
  need("cuInit", &api.cuInit);
  need("cuDeviceGet", &api.cuDeviceGet);
  need("cuDeviceGetAttribute", &api.cuDeviceGetAttribute);
  need("cuLibraryLoadData", &api.cuLibraryLoadData);
  need("cuLibraryGetKernel", &api.cuLibraryGetKernel);
  need("cuKernelSetAttribute", &api.cuKernelSetAttribute);
  need("cuLaunchKernelEx", &api.cuLaunchKernelEx);
  need("cuOccupancyMaxActiveClusters", &api.cuOccupancyMaxActiveClusters);
  need("cuTensorMapEncodeTiled", &api.cuTensorMapEncodeTiled);
  need("cuTensorMapReplaceAddress", &api.cuTensorMapReplaceAddress);
  if (missing) {
    loaded->error = std::string("CUDA driver entry point ") + missing +
                    " not found in libcuda.so.1; a CUDA 12.0+ driver is needed";
    return loaded;
  }
  // Initialise once; a failure here (no device, driver/kernel mismatch) makes the driver unusable.
  CUresult result = api.cuInit(0);
  if (result != CUDA_SUCCESS) loaded->error = describe_with(*loaded, "cuInit", result);
  return loaded;
}

// The process-wide load result. NOTES: a function-local static is initialised exactly once even
// under concurrent first calls (C++11), and the pointer is never freed (no exit-time teardown).
const Loaded& loaded() {
  static const Loaded* instance = load();
  return *instance;
}

}  // namespace

const Api* get(Status* status) {
  const Loaded& state = loaded();
  if (!state.error.empty()) {
    if (status) *status = Status::Error(state.error);
    return nullptr;
  }
  if (status) *status = Status::Ok();
  return &state.api;
}

std::string describe(const char* call, CUresult result) {
  return describe_with(loaded(), call, result);
}

}  // namespace dgpt::driver
