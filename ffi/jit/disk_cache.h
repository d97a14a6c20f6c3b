// The on-disk half of the kernel cache (private to kernel_cache.cc).
//
// Layout: <root>/cache/<name>.<key[:32]>/{kernel.cubin, kernel.sha256, kernel.cu} where
// kernel.sha256 holds the hex SHA-256 of kernel.cubin; <root>/tmp/ holds entries being written.
#pragma once

#include <string>

namespace dgpt::jit::disk {

// DG_JIT_CACHE_DIR, else $HOME/.jax_dgpt; "" when DG_JIT_DISABLE_CACHE is set.
std::string cache_root();

// The entry directory for `name` (unsafe characters replaced) and `key`.
std::string entry_dir(const std::string& root, const std::string& name, const std::string& key);

enum class ReadResult { kMiss, kHit, kCorrupt };

// kMiss when `dir` does not exist; kCorrupt (with `*why`) when it exists but a file is missing,
// unreadable or the cubin does not match its digest.
ReadResult read_entry(const std::string& dir, std::string* cubin, std::string* why);

// Writes the entry atomically (temp dir in <root>/tmp, then rename) and returns the cubin's path
// in the cache. An existing entry is kept unless `replace` (it was found corrupt). Returns "" and
// warns once per root on stderr when the cache cannot be written.
std::string write_entry(const std::string& root, const std::string& dir, const std::string& source,
                        const std::string& cubin, bool replace);

}  // namespace dgpt::jit::disk
