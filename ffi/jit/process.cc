// posix_spawn with a pipe for the child's stdout and stderr.
#include "jit/process.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

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

Status run_process(const std::vector<std::string>& argv, std::string* output, int* exit_code) {
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
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    return Status::Error("cannot run " + argv[0] + ": " + std::strerror(rc));
  }
  // Parent: read to EOF, then reap the child.
  char chunk[4096];
  while (true) {
    ssize_t n = ::read(fds[0], chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    output->append(chunk, size_t(n));
  }
  ::close(fds[0]);
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0) {
    if (errno == EINTR) continue;
    return Status::Error("waitpid for " + argv[0] + ": " + std::strerror(errno));
  }
  *exit_code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
  return Status::Ok();
}

}  // namespace dgpt::jit
