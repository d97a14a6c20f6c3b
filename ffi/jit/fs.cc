// File-system helpers: POSIX calls for files, std::filesystem (error_code overloads) for trees.
#include "jit/fs.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "jit/env.h"

namespace dgpt::jit::fs {
namespace stdfs = std::filesystem;

bool read_file(const std::string& path, std::string* out, std::string* why) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return *why = std::strerror(errno), false;
  // Read to EOF in chunks; files here are at most a few MB.
  out->clear();
  char chunk[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *why = std::strerror(errno);
      ::close(fd);
      return false;
    }
    if (n == 0) break;
    out->append(chunk, size_t(n));
  }
  ::close(fd);
  return true;
}

bool write_file(const std::string& path, const std::string& data, std::string* why) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return *why = std::strerror(errno), false;
  // Loop over short writes.
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *why = std::strerror(errno);
      ::close(fd);
      return false;
    }
    done += size_t(n);
  }
  if (::close(fd) != 0) return *why = std::strerror(errno), false;
  return true;
}

bool make_dirs(const std::string& dir, std::string* why) {
  std::error_code ec;
  stdfs::create_directories(dir, ec);
  if (ec) return *why = ec.message(), false;
  // NOTES: create_directories reports success when `dir` exists as a symlink to a non-directory.
  if (!stdfs::is_directory(dir, ec)) return *why = std::strerror(ENOTDIR), false;
  return true;
}

bool make_temp_dir(const std::string& parent, const std::string& prefix, std::string* out,
                   std::string* why) {
  std::string pattern = parent + "/" + prefix + "XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) return *why = std::strerror(errno), false;
  *out = pattern;
  return true;
}

void remove_tree(const std::string& path) {
  std::error_code ec;
  stdfs::remove_all(path, ec);
}

std::string temp_root() {
  std::string dir = env_string("TMPDIR");
  std::error_code ec;
  if (!dir.empty() && stdfs::is_directory(dir, ec)) return dir;
  return "/tmp";
}

bool is_executable(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) &&
         ::access(path.c_str(), X_OK) == 0;
}

std::vector<std::string> list_files(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  stdfs::recursive_directory_iterator it(dir, ec), end;
  // Walk with error_code increments: unreadable subdirectories end the walk instead of throwing.
  for (; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (!it->is_regular_file(type_ec)) continue;
    files.push_back(it->path().lexically_relative(dir).generic_string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace dgpt::jit::fs
