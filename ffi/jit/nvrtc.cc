// The NVRTC back end: libnvrtc is loaded with dlopen, so neither the build nor the import needs it.
#include "jit/nvrtc.h"

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "jit/env.h"

namespace dgpt::jit {
namespace {

// NOTES: nvrtc.h is not part of every toolkit install (nor of this build's requirements), so the
// few prototypes used are declared here; they are unchanged since CUDA 11.1.
using nvrtcResult = int;
using nvrtcProgram = struct _nvrtcProgram*;
constexpr nvrtcResult kNvrtcSuccess = 0;

// The entry points and the result of loading them; built once, never destroyed.
struct NvrtcApi {
  nvrtcResult (*Version)(int*, int*) = nullptr;
  const char* (*GetErrorString)(nvrtcResult) = nullptr;
  nvrtcResult (*CreateProgram)(nvrtcProgram*, const char*, const char*, int, const char* const*,
                               const char* const*) = nullptr;
  nvrtcResult (*CompileProgram)(nvrtcProgram, int, const char* const*) = nullptr;
  nvrtcResult (*GetProgramLogSize)(nvrtcProgram, size_t*) = nullptr;
  nvrtcResult (*GetProgramLog)(nvrtcProgram, char*) = nullptr;
  nvrtcResult (*GetCUBINSize)(nvrtcProgram, size_t*) = nullptr;
  nvrtcResult (*GetCUBIN)(nvrtcProgram, char*) = nullptr;
  nvrtcResult (*DestroyProgram)(nvrtcProgram*) = nullptr;
  std::string library;  // what was loaded
  std::string version;  // "X.Y"
  std::string error;    // empty when usable
};

// Library names and paths to try, in order: the sonames (found through the loader's usual
// search), $CUDA_HOME/lib64/libnvrtc.so*, then NVIDIA's pip packages next to site-packages.
std::vector<std::string> nvrtc_candidates() {
  namespace stdfs = std::filesystem;
  std::vector<std::string> names = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"};
  // Every libnvrtc.so* in a directory, newest-looking name first (libnvrtc-builtins excluded).
  auto add_matching = [&names](const stdfs::path& dir) {
    std::vector<std::string> found;
    std::error_code ec;
    for (stdfs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().filename().string().rfind("libnvrtc.so", 0) == 0) {
        found.push_back(it->path().string());
      }
    }
    std::sort(found.rbegin(), found.rend());
    names.insert(names.end(), found.begin(), found.end());
  };
  std::string cuda_home = env_string("CUDA_HOME");
  if (!cuda_home.empty()) add_matching(stdfs::path(cuda_home) / "lib64");
  for (const std::string& site : python_site_dirs()) {
    names.push_back(site + "/nvidia/cu13/lib/libnvrtc.so.13");
    add_matching(stdfs::path(site) / "nvidia" / "cuda_nvrtc" / "lib");
  }
  return names;
}

// NOTES: libnvrtc dlopens libnvrtc-builtins.so.X.Y by soname at compile time, which fails when
// libnvrtc itself came from a directory the loader does not search (pip packages). Loading the
// builtins from the same directory first makes that later lookup find the loaded copy by soname.
void preload_builtins(const std::string& library) {
  namespace stdfs = std::filesystem;
  stdfs::path dir = stdfs::path(library).parent_path();
  if (dir.empty()) return;
  std::error_code ec;
  for (stdfs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string file = it->path().filename().string();
    if (file.rfind("libnvrtc-builtins.so", 0) != 0) continue;
    dlopen(it->path().c_str(), RTLD_NOW | RTLD_LOCAL);
  }
}

NvrtcApi* load_nvrtc() {
  auto* api = new NvrtcApi();
  // First library that loads wins; remember every failure for the message.
  void* handle = nullptr;
  std::string tried;
  for (const std::string& name : nvrtc_candidates()) {
    handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle) {
      api->library = name;
      preload_builtins(name);
      break;
    }
    const char* why = dlerror();
    tried += "\n  " + name + ": " + (why ? why : "not loadable");
  }
  if (!handle) {
    api->error = "DG_JIT_USE_NVRTC=1 but libnvrtc could not be loaded; install it with "
                 "`pip install nvidia-cuda-nvrtc` or set CUDA_HOME. Tried:" + tried;
    return api;
  }
  // Every entry point, by its C name.
  const char* missing = nullptr;
  auto need = [&](const char* name, auto* field) {
    *field = reinterpret_cast<std::remove_pointer_t<decltype(field)>>(dlsym(handle, name));
    if (!*field && !missing) missing = name;
  };
  need("nvrtcVersion", &api->Version);
  need("nvrtcGetErrorString", &api->GetErrorString);
  need("nvrtcCreateProgram", &api->CreateProgram);
  need("nvrtcCompileProgram", &api->CompileProgram);
  need("nvrtcGetProgramLogSize", &api->GetProgramLogSize);
  need("nvrtcGetProgramLog", &api->GetProgramLog);
  need("nvrtcGetCUBINSize", &api->GetCUBINSize);
  need("nvrtcGetCUBIN", &api->GetCUBIN);
  need("nvrtcDestroyProgram", &api->DestroyProgram);
  if (missing) {
    api->error = api->library + " lacks " + missing + "; NVRTC from CUDA 12.0+ is needed";
    return api;
  }
  int major = 0, minor = 0;
  api->Version(&major, &minor);
  api->version = std::to_string(major) + "." + std::to_string(minor);
  if (major < 12) api->error = api->library + " is NVRTC " + api->version + "; 12.0+ is needed";
  return api;
}

const NvrtcApi& nvrtc() {
  static const NvrtcApi* api = load_nvrtc();  // thread-safe one-time load (C++11 statics)
  return *api;
}

class NvrtcCompiler : public Compiler {
 public:
  explicit NvrtcCompiler(const std::string& cxx_standard)
      : flags_{"--gpu-architecture=sm_90a", "-std=c++" + cxx_standard, "-default-device"} {
    signature_ = "nvrtc " + nvrtc().version;
    for (const std::string& flag : flags_) signature_ += " " + flag;
  }

  std::string signature() const override { return signature_; }

  Status compile(const std::string& source, const std::vector<std::string>& include_dirs,
                 bool ptxas_verbose, CompileOutput* out) const override {
    const NvrtcApi& api = nvrtc();
    // Options: fixed flags, optional ptxas report, include dirs.
    std::vector<std::string> options = flags_;
    if (ptxas_verbose || env_flag("DG_JIT_PTXAS_VERBOSE")) options.push_back("--ptxas-options=-v");
    for (const std::string& include : include_dirs) options.push_back("-I" + include);
    std::vector<const char*> option_ptrs;
    for (const std::string& option : options) option_ptrs.push_back(option.c_str());
    std::string command = "nvrtc (" + api.library + ")";
    for (const std::string& option : options) command += " " + option;
    if (env_flag("DG_JIT_PRINT_COMPILER_COMMAND")) {
      std::fprintf(stderr, "jax_dgpt: jit: running %s\n", command.c_str());
    }
    // Create, compile, collect the log; the program is destroyed on every path.
    nvrtcProgram program = nullptr;
    nvrtcResult result =
        api.CreateProgram(&program, source.c_str(), "kernel.cu", 0, nullptr, nullptr);
    if (result != kNvrtcSuccess) {
      return Status::Error(std::string("nvrtcCreateProgram failed: ") + api.GetErrorString(result));
    }
    auto start = std::chrono::steady_clock::now();
    nvrtcResult compiled = api.CompileProgram(program, int(option_ptrs.size()), option_ptrs.data());
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    size_t log_size = 0;
    out->log.clear();
    if (api.GetProgramLogSize(program, &log_size) == kNvrtcSuccess && log_size > 1) {
      out->log.resize(log_size);
      api.GetProgramLog(program, out->log.data());
      // NOTES: NVRTC's log can hold an embedded NUL before its terminator (after ptxas's part).
      out->log.resize(std::strlen(out->log.c_str()));
    }
    Status status;
    if (compiled != kNvrtcSuccess) {
      status = Status::Error(std::string("nvrtcCompileProgram failed: ") +
                             api.GetErrorString(compiled) + "\ncommand: " + command + "\n" +
                             out->log);
    } else {
      status = read_cubin(program, out);
    }
    api.DestroyProgram(&program);
    if (status.ok() && env_flag("DG_JIT_DEBUG")) {
      std::fprintf(stderr, "jax_dgpt: jit: nvrtc compiled a %zu-byte cubin in %.3f s\n",
                   out->cubin.size(), seconds);
      FfmaInterleaveEnv ffma;
      const std::string note =
          read_ffma_interleave_env(&ffma).ok() ? ffma_interleave_note(ffma, "nvrtc", api.version) : "";
      if (!note.empty()) std::fprintf(stderr, "jax_dgpt: jit: %s\n", note.c_str());
    }
    return status;
  }

 private:
  static Status read_cubin(nvrtcProgram program, CompileOutput* out) {
    const NvrtcApi& api = nvrtc();
    size_t size = 0;
    nvrtcResult result = api.GetCUBINSize(program, &size);
    if (result == kNvrtcSuccess && size > 0) {
      out->cubin.resize(size);
      result = api.GetCUBIN(program, out->cubin.data());
    }
    if (result != kNvrtcSuccess || size == 0) {
      return Status::Error(std::string("nvrtcGetCUBIN failed: ") + api.GetErrorString(result));
    }
    return Status::Ok();
  }

  std::vector<std::string> flags_;
  std::string signature_;
};

}  // namespace

Status create_nvrtc_compiler(const std::string& cxx_standard, std::unique_ptr<Compiler>* out) {
  if (!nvrtc().error.empty()) return Status::Error(nvrtc().error);
  *out = std::make_unique<NvrtcCompiler>(cxx_standard);
  return Status::Ok();
}

}  // namespace dgpt::jit
