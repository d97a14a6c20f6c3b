// Compiler selection and the NVCC back end.
#include "jit/compiler.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>

#include "jit/env.h"
#include "jit/fs.h"
#include "jit/nvrtc.h"
#include "jit/process.h"

namespace dgpt::jit {
namespace {

// NOTES: sm_90a (not sm_90) unlocks wgmma and setmaxnreg; such a cubin runs only on sm_90.
const char* const kGencode = "-gencode=arch=compute_90a,code=sm_90a";

// Where nvcc is looked for, in order: DG_JIT_NVCC_COMPILER (used as given, even if broken),
// $CUDA_HOME/bin/nvcc, nvcc on PATH, /usr/local/cuda/bin/nvcc, and NVIDIA's pip packages
// (`nvidia/cu13/bin/nvcc`, `nvidia/cuda_nvcc/bin/nvcc`) in the directories python_site_dirs()
// names. NOTES: the pip search does not ask Python for sys.path (no Python calls in ffi/).
Status find_nvcc(std::string* path) {
  std::string forced = env_string("DG_JIT_NVCC_COMPILER");
  if (!forced.empty()) {
    if (!fs::is_executable(forced)) {
      return Status::Error("DG_JIT_NVCC_COMPILER=" + forced + " is not an executable file");
    }
    return *path = forced, Status::Ok();
  }
  std::vector<std::string> candidates;
  std::string cuda_home = env_string("CUDA_HOME");
  if (!cuda_home.empty()) candidates.push_back(cuda_home + "/bin/nvcc");
  std::string search = env_string("PATH");
  for (size_t start = 0; start <= search.size();) {
    size_t end = search.find(':', start);
    if (end == std::string::npos) end = search.size();
    if (end > start) candidates.push_back(search.substr(start, end - start) + "/nvcc");
    start = end + 1;
  }
  candidates.push_back("/usr/local/cuda/bin/nvcc");
  for (const std::string& site : python_site_dirs()) {
    candidates.push_back(site + "/nvidia/cu13/bin/nvcc");
    candidates.push_back(site + "/nvidia/cuda_nvcc/bin/nvcc");
  }
  for (const std::string& candidate : candidates) {
    if (fs::is_executable(candidate)) return *path = candidate, Status::Ok();
  }
  return Status::Error(
      "no CUDA compiler found: set DG_JIT_NVCC_COMPILER or CUDA_HOME, put nvcc on PATH, or set "
      "DG_JIT_USE_NVRTC=1 with NVRTC installed (pip install nvidia-cuda-nvrtc)");
}

// Seconds one nvcc run may take: DG_JIT_COMPILE_TIMEOUT, default 600. NOTES: a hung compiler would
// otherwise block XLA's compilation (and the program) forever.
Status compile_timeout(double* seconds) {
  const std::string text = env_string("DG_JIT_COMPILE_TIMEOUT");
  *seconds = 600;
  if (text.empty()) return Status::Ok();
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0' || !(value > 0)) {
    return Status::Error("DG_JIT_COMPILE_TIMEOUT=" + text + " is not a positive number of seconds");
  }
  *seconds = value;
  return Status::Ok();
}

// "X.Y" from `nvcc --version` ("... release 13.0, V13.0.88").
Status query_nvcc_version(const std::string& path, std::string* version) {
  std::vector<std::string> argv = {path, "--version"};
  std::string output;
  int exit_code = 0;
  DGPT_RETURN_IF_ERROR(run_process(argv, &output, &exit_code, /*timeout_seconds=*/60));
  size_t at = output.find("release ");
  if ((exit_code != 0 && exit_code != kExitStatusUnknown) || at == std::string::npos) {
    return Status::Error("cannot read the version of " + path + " (exit code " +
                         std::to_string(exit_code) + "):\n" + output);
  }
  at += 8;
  size_t end = output.find_first_not_of("0123456789.", at);
  *version = output.substr(at, end == std::string::npos ? std::string::npos : end - at);
  // NOTES: wgmma with FP8 operands and sm_90a need CUDA 12.0 or newer.
  int major = std::atoi(version->c_str());
  if (major < 12) {
    return Status::Error(path + " is CUDA " + *version + "; sm_90a kernels need CUDA 12.0+");
  }
  return Status::Ok();
}

class NvccCompiler : public Compiler {
 public:
  NvccCompiler(std::string path, const std::string& version, const std::string& cxx_standard)
      : path_(std::move(path)),
        version_(version),
        flags_{"-cubin", "-std=c++" + cxx_standard, "-O3", kGencode, "--expt-relaxed-constexpr"} {
    signature_ = "nvcc " + version;
    for (const std::string& flag : flags_) signature_ += " " + flag;
  }

  std::string signature() const override { return signature_; }

  Status compile(const std::string& source, const std::vector<std::string>& include_dirs,
                 bool ptxas_verbose, CompileOutput* out) const override {
    // A private scratch directory for the source and the cubin.
    std::string dir, why;
    if (!fs::make_temp_dir(fs::temp_root(), "jax_dgpt-nvcc-", &dir, &why)) {
      return Status::Error("cannot create a temporary directory in " + fs::temp_root() + ": " +
                           why);
    }
    Status status = compile_in(dir, source, include_dirs, ptxas_verbose, out);
    fs::remove_tree(dir);
    return status;
  }

 private:
  Status compile_in(const std::string& dir, const std::string& source,
                    const std::vector<std::string>& include_dirs, bool ptxas_verbose,
                    CompileOutput* out) const {
    const std::string source_path = dir + "/kernel.cu", cubin_path = dir + "/kernel.cubin";
    std::string why;
    if (!fs::write_file(source_path, source, &why)) {
      return Status::Error("cannot write " + source_path + ": " + why);
    }
    // The command: fixed flags, optional ptxas report, include dirs, output, input.
    std::vector<std::string> argv = {path_};
    argv.insert(argv.end(), flags_.begin(), flags_.end());
    if (ptxas_verbose || env_flag("DG_JIT_PTXAS_VERBOSE")) {
      argv.insert(argv.end(), {"-Xptxas", "-v"});
    }
    for (const std::string& include : include_dirs) argv.push_back("-I" + include);
    argv.insert(argv.end(), {"-o", cubin_path, source_path});
    if (env_flag("DG_JIT_PRINT_COMPILER_COMMAND")) {
      std::fprintf(stderr, "jax_dgpt: jit: running %s\n", command_line(argv).c_str());
    }
    // Run it; a nonzero exit is an error carrying the command and everything nvcc printed.
    auto start = std::chrono::steady_clock::now();
    int exit_code = 0;
    double timeout = 0;
    DGPT_RETURN_IF_ERROR(compile_timeout(&timeout));
    DGPT_RETURN_IF_ERROR(run_process(argv, &out->log, &exit_code, timeout));
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // With an unknown exit status, a missing cubin below reports the failure.
    if (exit_code != 0 && exit_code != kExitStatusUnknown) {
      return Status::Error("nvcc failed with exit code " + std::to_string(exit_code) + "\n" +
                           "command: " + command_line(argv) + "\n" + out->log);
    }
    if (env_flag("DG_JIT_DEBUG")) {
      std::fprintf(stderr, "jax_dgpt: jit: nvcc compiled %s in %.3f s\n", cubin_path.c_str(),
                   seconds);
      FfmaInterleaveEnv ffma;
      const std::string note =
          read_ffma_interleave_env(&ffma).ok() ? ffma_interleave_note(ffma, "nvcc", version_) : "";
      if (!note.empty()) std::fprintf(stderr, "jax_dgpt: jit: %s\n", note.c_str());
    }
    if (!fs::read_file(cubin_path, &out->cubin, &why) || out->cubin.empty()) {
      return Status::Error("nvcc produced no cubin at " + cubin_path + " (" + why + ")\n" +
                           "command: " + command_line(argv) + "\n" + out->log);
    }
    return Status::Ok();
  }

  std::string path_;
  std::string version_;  // "X.Y"
  std::vector<std::string> flags_;
  std::string signature_;
};

// Process-lived state of select_compiler: nvcc versions per path and one compiler per setting.
struct Registry {
  std::mutex mutex;
  std::map<std::string, std::string> nvcc_versions;                 // path -> "X.Y"
  std::map<std::string, std::unique_ptr<Compiler>> compilers;  // setting -> instance
};

Registry& registry() {
  static auto* instance = new Registry();  // never destroyed: compilers are handed out for good
  return *instance;
}

}  // namespace

Status select_compiler(const Compiler** out) {
  *out = nullptr;
  // DeepGEMM's FFMA-interleave variables: validated here, so a typo fails the compile (env.h).
  FfmaInterleaveEnv ffma;
  DGPT_RETURN_IF_ERROR(read_ffma_interleave_env(&ffma));
  // C++ standard: 17 unless DG_JIT_OVERRIDE_CPP_STANDARD names another (digits only).
  std::string cxx_standard = env_string("DG_JIT_OVERRIDE_CPP_STANDARD");
  if (cxx_standard.empty()) cxx_standard = "17";
  if (cxx_standard.find_first_not_of("0123456789") != std::string::npos) {
    return Status::Error("DG_JIT_OVERRIDE_CPP_STANDARD=" + cxx_standard +
                         " is not a C++ standard number such as 17 or 20");
  }
  Registry& reg = registry();
  // NVRTC: one instance per C++ standard.
  if (env_flag("DG_JIT_USE_NVRTC")) {
    std::lock_guard<std::mutex> lock(reg.mutex);
    std::unique_ptr<Compiler>& slot = reg.compilers["nvrtc\n" + cxx_standard];
    if (!slot) DGPT_RETURN_IF_ERROR(create_nvrtc_compiler(cxx_standard, &slot));
    return *out = slot.get(), Status::Ok();
  }
  // NVCC: one instance per path and standard; the version query runs once per path.
  std::string path;
  DGPT_RETURN_IF_ERROR(find_nvcc(&path));
  std::lock_guard<std::mutex> lock(reg.mutex);
  std::unique_ptr<Compiler>& slot = reg.compilers["nvcc\n" + path + "\n" + cxx_standard];
  if (!slot) {
    // NOTES: `nvcc --version` runs under the lock; it takes milliseconds and runs once per path.
    auto known = reg.nvcc_versions.find(path);
    if (known == reg.nvcc_versions.end()) {
      std::string version;
      DGPT_RETURN_IF_ERROR(query_nvcc_version(path, &version));
      known = reg.nvcc_versions.emplace(path, version).first;
    }
    slot = std::make_unique<NvccCompiler>(path, known->second, cxx_standard);
  }
  return *out = slot.get(), Status::Ok();
}

}  // namespace dgpt::jit
