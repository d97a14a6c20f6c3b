// Runs a program without a shell and captures its output (for nvcc).
#pragma once

#include <string>
#include <vector>

#include "jit/status.h"

namespace dgpt::jit {

// `*exit_code` when the status cannot be known: SIGCHLD is ignored and the kernel reaped the child.
constexpr int kExitStatusUnknown = -1;

// Runs argv[0] (a path) with `argv`, stdout and stderr merged into `*output` (the first 16 KiB and
// the last 48 KiB of it). `*exit_code` gets the exit status, 128 + signal number when the program
// was killed, or kExitStatusUnknown. An error Status when the program could not be started or ran
// longer than `timeout_seconds` (it is then killed with its process group).
Status run_process(const std::vector<std::string>& argv, std::string* output, int* exit_code,
                   double timeout_seconds);

// `argv` as one line for messages, single-quoting arguments that hold spaces or quotes.
std::string command_line(const std::vector<std::string>& argv);

}  // namespace dgpt::jit
