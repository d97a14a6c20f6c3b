// Disk cache entries: verified reads, atomic writes, one warning per unwritable root.
#include "jit/disk_cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>

#include "jit/env.h"
#include "jit/fs.h"
#include "jit/sha256.h"

namespace dgpt::jit::disk {
namespace {

// Warns on stderr the first time `root` turns out not to be writable.
void warn_not_writable(const std::string& root, const std::string& why) {
  static auto* mutex = new std::mutex();
  static auto* warned = new std::set<std::string>();  // guarded by *mutex, never destroyed
  std::lock_guard<std::mutex> lock(*mutex);
  if (!warned->insert(root).second) return;
  std::fprintf(stderr,
               "jax_dgpt: warning: kernel cache directory %s is not writable (%s); kernels are "
               "compiled per process\n",
               root.c_str(), why.c_str());
}

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

}  // namespace

std::string cache_root() {
  if (env_flag("DG_JIT_DISABLE_CACHE")) return "";
  std::string root = env_string("DG_JIT_CACHE_DIR");
  if (!root.empty()) return root;
  std::string home = env_string("HOME");
  if (!home.empty()) return home + "/.jax_dgpt";
  // NOTES: without HOME (some daemons) fall back to a per-user directory in the shared temp root;
  // another user could have created that path first, so only a private directory of our own is
  // trusted (a cubin planted there would run on the GPU).
  const std::string dir = fs::temp_root() + "/jax_dgpt-" + std::to_string(::getuid());
  ::mkdir(dir.c_str(), 0700);
  struct stat st;
  if (::lstat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == ::getuid() &&
      (st.st_mode & 077) == 0) {
    return dir;
  }
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    std::fprintf(stderr,
                 "jax_dgpt: warning: HOME is unset and %s is not a private directory of this user; "
                 "the disk cache is off (set DG_JIT_CACHE_DIR)\n",
                 dir.c_str());
  }
  return "";
}

std::string entry_dir(const std::string& root, const std::string& name, const std::string& key) {
  // Keep names readable but path-safe: [A-Za-z0-9_.-] stay, anything else becomes '_'.
  std::string safe = name.substr(0, 96);
  for (char& c : safe) {
    bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-' || c == '.';
    if (!keep) c = '_';
  }
  if (safe.empty() || safe[0] == '.') safe = "kernel" + safe;
  return root + "/cache/" + safe + "." + key.substr(0, 32);
}

ReadResult read_entry(const std::string& dir, std::string* cubin, std::string* why) {
  if (!exists(dir)) return ReadResult::kMiss;
  // Both files must be readable and the digest must match the cubin bytes.
  std::string digest, reason;
  if (!fs::read_file(dir + "/kernel.cubin", cubin, &reason)) {
    *why = "kernel.cubin: " + reason;
    return ReadResult::kCorrupt;
  }
  if (!fs::read_file(dir + "/kernel.sha256", &digest, &reason)) {
    *why = "kernel.sha256: " + reason;
    return ReadResult::kCorrupt;
  }
  while (!digest.empty() && (digest.back() == '\n' || digest.back() == ' ')) digest.pop_back();
  if (cubin->empty() || digest != sha256_hex(*cubin)) {
    *why = "kernel.cubin does not match kernel.sha256";
    return ReadResult::kCorrupt;
  }
  return ReadResult::kHit;
}

std::string write_entry(const std::string& root, const std::string& dir, const std::string& source,
                        const std::string& cubin, bool replace) {
  // Fill a fresh temp dir on the same file system as the cache, so rename() is atomic.
  std::string why, staging;
  const std::string tmp_root = root + "/tmp";
  if (!fs::make_dirs(root + "/cache", &why) || !fs::make_dirs(tmp_root, &why) ||
      !fs::make_temp_dir(tmp_root, "entry-", &staging, &why)) {
    warn_not_writable(root, why);
    return "";
  }
  // NOTES: the entry appears all at once through rename(), so readers never see it half-written;
  // the digest still catches later damage (a full disk, a truncated copy, a manual edit).
  if (!fs::write_file(staging + "/kernel.cubin", cubin, &why) ||
      !fs::write_file(staging + "/kernel.sha256", sha256_hex(cubin) + "\n", &why) ||
      !fs::write_file(staging + "/kernel.cu", source, &why)) {
    fs::remove_tree(staging);
    warn_not_writable(root, why);
    return "";
  }
  // A corrupt entry is first moved aside (atomically) so the rename below can take its place.
  std::string trash;
  if (replace && fs::make_temp_dir(tmp_root, "trash-", &trash, &why)) {
    std::rename(dir.c_str(), (trash + "/old").c_str());
  }
  std::string result = dir + "/kernel.cubin";
  if (std::rename(staging.c_str(), dir.c_str()) != 0) {
    int err = errno;
    fs::remove_tree(staging);
    // Another process (or thread) published this entry first: keep theirs.
    if (err != EEXIST && err != ENOTEMPTY) {
      warn_not_writable(root, std::strerror(err));
      result.clear();
    }
  }
  if (!trash.empty()) fs::remove_tree(trash);
  return result;
}

}  // namespace dgpt::jit::disk
