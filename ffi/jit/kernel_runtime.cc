// Loaded kernels: one CUlibrary per cache key, kept for the life of the process.
#include "jit/kernel_runtime.h"

#include <map>
#include <mutex>
#include <utility>

#include "jit/driver.h"

namespace dgpt::jit {
namespace {

struct Loaded {
  std::mutex mutex;
  std::map<std::string, CUlibrary> libraries;                        // key -> library
  std::map<std::pair<std::string, std::string>, CUkernel> kernels;  // (key, symbol) -> kernel
};

Loaded& loaded() {
  // NOTES: never destroyed and never unloaded: a CUDA graph XLA captured may launch a kernel
  // after every owner we could name is gone.
  static auto* state = new Loaded();
  return *state;
}

}  // namespace

Status load_kernel(const CubinEntry& entry, const char* symbol, LoadedKernel* out) {
  Status status;
  const driver::Api* api = driver::get(&status);
  if (!api) return status;
  if (entry.cubin.empty()) return Status::Error("load_kernel: empty cubin for key " + entry.key);
  // NOTES: libraries are kept per key for the life of the process; a keyless entry would leak one
  // library per call.
  if (entry.key.empty()) return Status::Error("load_kernel: a cubin without a cache key");
  Loaded& state = loaded();
  // NOTES: loading under the lock keeps one library per key; it runs once per kernel at
  // compile time (instantiate/initialize), never in execute.
  std::lock_guard<std::mutex> lock(state.mutex);
  // The library: reuse the one loaded for this key, or load the cubin now.
  CUlibrary library = nullptr;
  auto known = state.libraries.find(entry.key);
  if (known != state.libraries.end()) {
    library = known->second;
  } else {
    CUresult result = api->cuLibraryLoadData(&library, entry.cubin.data(), nullptr, nullptr, 0,
                                             nullptr, nullptr, 0);
    if (result != CUDA_SUCCESS) return Status::Error(driver::describe("cuLibraryLoadData", result));
    state.libraries.emplace(entry.key, library);
  }
  // The kernel: cached per (key, symbol).
  auto kernel_key = std::make_pair(entry.key, std::string(symbol));
  auto found = state.kernels.find(kernel_key);
  CUkernel kernel = nullptr;
  if (found != state.kernels.end()) {
    kernel = found->second;
  } else {
    CUresult result = api->cuLibraryGetKernel(&kernel, library, symbol);
    if (result != CUDA_SUCCESS) {
      return Status::Error(driver::describe("cuLibraryGetKernel", result) + " for symbol " +
                           symbol);
    }
    state.kernels.emplace(kernel_key, kernel);
  }
  out->library = library;
  out->kernel = kernel;
  return Status::Ok();
}

}  // namespace dgpt::jit
