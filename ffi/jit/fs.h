// Small file-system helpers for the JIT layer. None throws; failures come back as text.
#pragma once

#include <string>
#include <vector>

namespace dgpt::jit::fs {

// Whole file into `*out`. On failure returns false and sets `*why` (strerror text).
bool read_file(const std::string& path, std::string* out, std::string* why);

// Writes `data` to a new file at `path` (truncating). On failure returns false and sets `*why`.
bool write_file(const std::string& path, const std::string& data, std::string* why);

// Creates `dir` and its parents. On failure returns false and sets `*why`.
bool make_dirs(const std::string& dir, std::string* why);

// A fresh directory `<parent>/<prefix>XXXXXX` (mkdtemp). On failure returns false, sets `*why`.
bool make_temp_dir(const std::string& parent, const std::string& prefix, std::string* out,
                   std::string* why);

// Removes a file or directory tree; missing paths and errors are ignored.
void remove_tree(const std::string& path);

// $TMPDIR when it names a directory, else /tmp.
std::string temp_root();

// True when `path` is a regular file the process may execute.
bool is_executable(const std::string& path);

// Regular files under `dir` (recursively) as paths relative to `dir` with '/' separators, sorted.
std::vector<std::string> list_files(const std::string& dir);

}  // namespace dgpt::jit::fs
