// Cache keys, the in-memory cubin map and the lookup order memory -> disk -> compile.
#include "jit/kernel_cache.h"

#include <cstdio>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "jit/compiler.h"
#include "jit/disk_cache.h"
#include "jit/env.h"
#include "jit/fs.h"
#include "jit/sha256.h"

namespace dgpt::jit {
namespace {

// NOTES: bump when the key's inputs or the disk layout change, so old entries are never reused.
const char* const kKeyFormat = "jax_dgpt-jit-key-v1";

struct KernelsDir {
  std::mutex mutex;
  std::string path;
};

KernelsDir& kernels_dir_state() {
  static auto* state = new KernelsDir();  // never destroyed
  return *state;
}

struct MemoryCache {
  std::mutex mutex;
  std::unordered_map<std::string, std::shared_ptr<const CubinEntry>> entries;  // key -> entry
  // One lock per key: the first thread to miss compiles, the others wait and then hit memory.
  std::unordered_map<std::string, std::shared_ptr<std::mutex>> key_locks;
};

MemoryCache& memory_cache() {
  static auto* cache = new MemoryCache();  // never destroyed: handlers may run during exit
  return *cache;
}

std::shared_ptr<std::mutex> key_lock(MemoryCache& cache, const std::string& key) {
  std::lock_guard<std::mutex> lock(cache.mutex);
  std::shared_ptr<std::mutex>& slot = cache.key_locks[key];
  if (!slot) slot = std::make_shared<std::mutex>();
  return slot;
}

// Digest of every regular file under `dir`: relative path and contents, sorted by path.
std::string directory_digest(const std::string& dir) {
  Sha256 hash;
  hash.update_field(dir.empty() ? "<no kernels dir>" : "<kernels dir>");
  for (const std::string& relative : fs::list_files(dir)) {
    std::string contents, why;
    hash.update_field(relative);
    // An unreadable header gets a marker; the compile that follows reports the real problem.
    hash.update_field(fs::read_file(dir + "/" + relative, &contents, &why) ? contents
                                                                           : "<unreadable>");
  }
  return hash.hex_digest();
}

std::string cache_key(const std::string& name, const std::string& source,
                      const std::string& signature, bool ptxas_verbose) {
  Sha256 hash;
  hash.update_field(kKeyFormat);
  hash.update_field(name);
  hash.update_field(source);
  hash.update_field(directory_digest(kernels_dir()));
  hash.update_field(signature);
  hash.update_field(ptxas_verbose ? "ptxas-verbose" : "ptxas-quiet");
  return hash.hex_digest();
}

// Fills `out` from a shared entry with this call's origin and no log.
void fill_from(const CubinEntry& entry, Origin origin, CubinEntry* out) {
  *out = entry;
  out->origin = origin;
  out->log.clear();
}

void debug_print(const std::string& name, const CubinEntry& entry) {
  if (!env_flag("DG_JIT_DEBUG")) return;
  std::fprintf(stderr, "jax_dgpt: jit: kernel %s key %s origin %s path %s\n", name.c_str(),
               entry.key.c_str(), origin_name(entry.origin),
               entry.path.empty() ? "(none)" : entry.path.c_str());
}

}  // namespace

void set_kernels_dir(const std::string& dir) {
  KernelsDir& state = kernels_dir_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  state.path = dir;
}

std::string kernels_dir() {
  KernelsDir& state = kernels_dir_state();
  std::lock_guard<std::mutex> lock(state.mutex);
  return state.path;
}

const char* origin_name(Origin origin) {
  switch (origin) {
    case Origin::kCompiled: return "compiled";
    case Origin::kMemory: return "memory";
    case Origin::kDisk: return "disk";
  }
  return "unknown";
}

namespace {

// A memory hit, or nullptr.
std::shared_ptr<const CubinEntry> find_in_memory(MemoryCache& memory, const std::string& key) {
  std::lock_guard<std::mutex> lock(memory.mutex);
  auto it = memory.entries.find(key);
  return it == memory.entries.end() ? nullptr : it->second;
}

// The first insert wins; returns the entry that is cached.
std::shared_ptr<const CubinEntry> remember(MemoryCache& memory, const std::string& key,
                                            std::shared_ptr<const CubinEntry> entry) {
  std::lock_guard<std::mutex> lock(memory.mutex);
  return memory.entries.emplace(key, std::move(entry)).first->second;
}

// A disk hit, or nullptr; `*corrupt` when an entry was there but damaged (reported, to be replaced).
std::shared_ptr<CubinEntry> find_on_disk(const std::string& dir, const std::string& key, bool* corrupt) {
  auto entry = std::make_shared<CubinEntry>();
  std::string why;
  const disk::ReadResult read = disk::read_entry(dir, &entry->cubin, &why);
  if (read == disk::ReadResult::kHit) {
    entry->key = key;
    entry->origin = Origin::kDisk;
    entry->path = dir + "/kernel.cubin";
    return entry;
  }
  if (read == disk::ReadResult::kCorrupt) {
    *corrupt = true;
    std::fprintf(stderr, "jax_dgpt: warning: corrupted kernel cache entry %s (%s); recompiling\n", dir.c_str(),
                 why.c_str());
  }
  return nullptr;
}

}  // namespace

Status get_or_compile(const std::string& name, const std::string& source, bool ptxas_verbose,
                      CubinEntry* out) {
  // The compiler and the key. DG_JIT_PTXAS_VERBOSE acts like ptxas_verbose=true.
  const bool from_env = env_flag("DG_JIT_PTXAS_VERBOSE");
  const bool verbose = ptxas_verbose || from_env;
  const Compiler* compiler = nullptr;
  DGPT_RETURN_IF_ERROR(select_compiler(&compiler));
  const std::string key = cache_key(name, source, compiler->signature(), verbose);
  MemoryCache& memory = memory_cache();

  // NOTES: XLA may instantiate one kernel from several threads (one per GPU, or several
  // executables); without this lock each would start its own nvcc.
  const std::shared_ptr<std::mutex> compiling = key_lock(memory, key);
  std::lock_guard<std::mutex> compiling_lock(*compiling);
  // Memory, then disk. NOTES: a verbose request skips both caches so the caller always gets ptxas's report.
  const std::string root = disk::cache_root();
  const std::string dir = root.empty() ? "" : disk::entry_dir(root, name, key);
  bool corrupt = false;
  std::shared_ptr<const CubinEntry> hit;
  Origin origin = Origin::kMemory;
  if (!verbose) hit = find_in_memory(memory, key);
  if (!verbose && hit == nullptr && !dir.empty()) {
    hit = find_on_disk(dir, key, &corrupt);
    if (hit != nullptr) hit = remember(memory, key, hit), origin = Origin::kDisk;
  }
  if (hit != nullptr) {
    fill_from(*hit, origin, out);
    debug_print(name, *out);
    return Status::Ok();
  }
  // Compile outside every lock but this key's.
  CompileOutput compiled;
  std::vector<std::string> include_dirs;
  if (std::string dir_path = kernels_dir(); !dir_path.empty()) include_dirs.push_back(dir_path);
  Status status = compiler->compile(source, include_dirs, verbose, &compiled);
  if (!status.ok()) {
    return Status::Error("JIT compilation of kernel '" + name + "' failed: " + status.message());
  }
  if (from_env && !compiled.log.empty()) {
    std::fprintf(stderr, "jax_dgpt: jit: %s:\n%s\n", name.c_str(), compiled.log.c_str());
  }
  // Publish: disk (atomic rename, the first writer wins), then memory (the first insert wins).
  auto entry = std::make_shared<CubinEntry>();
  entry->key = key;
  entry->cubin = std::move(compiled.cubin);
  entry->origin = Origin::kCompiled;
  if (!dir.empty()) entry->path = disk::write_entry(root, dir, source, entry->cubin, corrupt);
  remember(memory, key, entry);
  *out = *entry;
  out->log = std::move(compiled.log);
  debug_print(name, *out);
  return Status::Ok();
}

}  // namespace dgpt::jit
