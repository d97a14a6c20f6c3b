// Environment variables of the JIT layer and the places NVIDIA's pip packages may live.
// Every getter reads the environment at call time, so tests can change it in-process.
#pragma once

#include <string>
#include <vector>

#include "jit/status.h"

namespace dgpt::jit {

// Value of `name`, or "" when unset.
std::string env_string(const char* name);

// True when `name` is set to anything except "", "0", "false", "off" or "no" (case-insensitive).
bool env_flag(const char* name);

// A strict boolean: unset or "" is false; 1/0, true/false, yes/no, on/off (any case) are accepted;
// any other value is an error naming the variable.
Status env_bool(const char* name, bool* value);

// DeepGEMM's two variables for its SASS FFMA-interleave pass, accepted (and validated with env_bool)
// for compatibility. NOTES: DeepGEMM rewrote the cubin's SASS after NVCC to interleave the FFMAs of
// its FP32 promotion with other instructions (DG_JIT_DISABLE_FFMA_INTERLEAVE=1 skipped the pass,
// DG_JIT_PRINT_REG_REUSE=1 printed the register-reuse changes it made); NVCC 12.9 and newer interleave
// FFMAs themselves, which is why DeepGEMM dropped the pass. jax_dgpt has no such pass with any
// compiler, so the variables change nothing; DG_JIT_DEBUG=1 says so at each compile.
struct FfmaInterleaveEnv {
  bool disable = false;          // DG_JIT_DISABLE_FFMA_INTERLEAVE
  bool print_reg_reuse = false;  // DG_JIT_PRINT_REG_REUSE
};
Status read_ffma_interleave_env(FfmaInterleaveEnv* env);

// The DG_JIT_DEBUG line about the two variables for `compiler` ("nvcc", "nvrtc") of `version`
// ("X.Y"), or "" when neither variable is set.
std::string ffma_interleave_note(const FfmaInterleaveEnv& env, const std::string& compiler,
                                 const std::string& version);

// Directories that may hold NVIDIA pip packages (`<dir>/nvidia/...`): the site-packages directory
// this extension was loaded from, then every PYTHONPATH entry. Existing directories only.
std::vector<std::string> python_site_dirs();

}  // namespace dgpt::jit
