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

Status run_process(const std::vector<std::string>& argv, std::string* output, int* exit_code,
                   double timeout_seconds) {
  output->clear();
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
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0].c_str(), &actions, &attributes, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    return Status::Error("cannot run " + argv[0] + ": " + std::strerror(rc));
  }
  // Parent: read to EOF (keeping the head and the tail of a huge output), then reap the child.
  // NOTES: the output ends up in error messages that XLA passes on; a runaway compiler must not
  // turn them into megabytes.
  constexpr size_t kHead = 16 << 10, kTail = 48 << 10;
  std::string tail;
  size_t omitted = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
  char chunk[4096];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd readable = {fds[0], POLLIN, 0};
    const int ready = left.count() > 0 ? ::poll(&readable, 1, static_cast<int>(std::min<int64_t>(left.count(), 1 << 30))) : 0;
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      // Out of time: stop the whole process group and report it.
      ::kill(-pid, SIGKILL);
      ::close(fds[0]);
      int ignored = 0;
      while (::waitpid(pid, &ignored, 0) < 0 && errno == EINTR) {
      }
      return Status::Error(argv[0] + " did not finish within " + std::to_string(static_cast<int>(timeout_seconds)) +
                           " s and was stopped (DG_JIT_COMPILE_TIMEOUT); output so far:\n" + *output + tail);
    }
    ssize_t n = ::read(fds[0], chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    size_t used = 0;
    if (output->size() < kHead) {
      used = std::min(size_t(n), kHead - output->size());
      output->append(chunk, used);
    }
    tail.append(chunk + used, size_t(n) - used);
    if (tail.size() > 2 * kTail) {
      omitted += tail.size() - kTail;
      tail.erase(0, tail.size() - kTail);
    }
  }
  ::close(fds[0]);
  if (omitted > 0) output->append("\n[... " + std::to_string(omitted) + " bytes of output omitted ...]\n");
  output->append(tail);
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0) {
    if (errno == EINTR) continue;
    if (errno == ECHILD) {
      // NOTES: with SIGCHLD ignored (some frameworks do that) the kernel reaps the child itself;
      // the caller then judges by what the program produced.
      *exit_code = kExitStatusUnknown;
      return Status::Ok();
    }
    return Status::Error("waitpid for " + argv[0] + ": " + std::strerror(errno));
  }
  *exit_code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
  return Status::Ok();
}

}  // namespace dgpt::jit
