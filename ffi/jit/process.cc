// posix_spawn with a pipe for the child's stdout and stderr.
#include "jit/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cerrno>
#include <cstring>

extern char** environ;

namespace dgpt::jit {

std::string command_line(const std::vector<std::string>& argv) {
  std::string line;
  for (const std::string& arg : argv) {
    if (!line.empty()) line += ' ';
    if (arg.find_first_of(" \t'\"\\$") == std::string::npos && !arg.empty()) {
      line += arg;
      continue;
    }
    // Single quotes protect everything; an embedded quote becomes '\''.
    line += '\'';
    for (char c : arg) line += (c == '\'') ? std::string("'\\''") : std::string(1, c);
    line += '\'';
  }
  return line;
}

namespace {

// Starts argv[0] in its own process group with stdout and stderr on a pipe; `*read_fd` is the read end.
Status spawn_with_pipe(const std::vector<std::string>& argv, pid_t* pid, int* read_fd) {
  // NOTES: O_CLOEXEC keeps the pipe out of processes other threads spawn meanwhile; otherwise
  // their copy of the write end would delay our EOF until they exit.
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return Status::Error("cannot create a pipe for " + argv[0] + ": " + std::strerror(errno));
  }
  // Child: both output streams into the write end (dup2 clears close-on-exec on the copies).
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  // Its own process group, so a timeout can stop nvcc's children (cicc, ptxas) too.
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attributes, 0);
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  const int rc = posix_spawn(pid, argv[0].c_str(), &actions, &attributes, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    return Status::Error("cannot run " + argv[0] + ": " + std::strerror(rc));
  }
  *read_fd = fds[0];
  return Status::Ok();
}

// The head and the tail of a stream. NOTES: the output ends up in error messages that XLA passes
// on; a runaway compiler must not turn them into megabytes.
class BoundedOutput {
 public:
  void append(const char* data, size_t n) {
    size_t used = 0;
    if (head_.size() < kHead) {
      used = std::min(n, kHead - head_.size());
      head_.append(data, used);
    }
    tail_.append(data + used, n - used);
    if (tail_.size() > 2 * kTail) {
      omitted_ += tail_.size() - kTail;
      tail_.erase(0, tail_.size() - kTail);
    }
  }
  std::string text() const {
    const std::string gap =
        omitted_ > 0 ? "\n[... " + std::to_string(omitted_) + " bytes of output omitted ...]\n" : std::string();
    return head_ + gap + tail_;
  }

 private:
  static constexpr size_t kHead = 16 << 10, kTail = 48 << 10;
  std::string head_, tail_;
  size_t omitted_ = 0;
};

// Reads `fd` to EOF into `out`; false when the deadline passed first.
bool read_until_eof(int fd, std::chrono::steady_clock::time_point deadline, BoundedOutput* out) {
  char chunk[4096];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd readable = {fd, POLLIN, 0};
    const int ready = left.count() > 0 ? ::poll(&readable, 1, static_cast<int>(std::min<int64_t>(left.count(), 1 << 30))) : 0;
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) return false;
    const ssize_t n = ::read(fd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return true;
    out->append(chunk, static_cast<size_t>(n));
  }
}

// Waits for the child; its exit status, 128 + signal, or kExitStatusUnknown.
Status reap(const std::string& program, pid_t pid, int* exit_code) {
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0) {
    if (errno == EINTR) continue;
    if (errno == ECHILD) {
      // NOTES: with SIGCHLD ignored (some frameworks do that) the kernel reaps the child itself;
      // the caller then judges by what the program produced.
      *exit_code = kExitStatusUnknown;
      return Status::Ok();
    }
    return Status::Error("waitpid for " + program + ": " + std::strerror(errno));
  }
  *exit_code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
  return Status::Ok();
}

}  // namespace

Status run_process(const std::vector<std::string>& argv, std::string* output, int* exit_code,
                   double timeout_seconds) {
  output->clear();
  pid_t pid = -1;
  int fd = -1;
  DGPT_RETURN_IF_ERROR(spawn_with_pipe(argv, &pid, &fd));
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(timeout_seconds));
  BoundedOutput captured;
  const bool finished = read_until_eof(fd, deadline, &captured);
  ::close(fd);
  *output = captured.text();
  if (!finished) {
    // Out of time: stop the whole process group and report it.
    ::kill(-pid, SIGKILL);
    int ignored = 0;
    while (::waitpid(pid, &ignored, 0) < 0 && errno == EINTR) {
    }
    return Status::Error(argv[0] + " did not finish within " + std::to_string(static_cast<int>(timeout_seconds)) +
                         " s and was stopped (DG_JIT_COMPILE_TIMEOUT); output so far:\n" + *output);
  }
  return reap(argv[0], pid, exit_code);
}

}  // namespace dgpt::jit
