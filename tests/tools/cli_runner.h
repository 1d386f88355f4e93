// RunCli: runs the built `kvgate` binary with arguments and captures its
// exit code, stdout and stderr, for tests of the command-line contract.
#ifndef KVGATE_TESTS_TOOLS_CLI_RUNNER_H_
#define KVGATE_TESTS_TOOLS_CLI_RUNNER_H_

#include <string>
#include <vector>

namespace kvgate {

struct CliResult {
  // The exit status; 128 + signal number when killed by a signal; -1 when
  // the binary could not be started.
  int exit_code = -1;
  std::string stdout_text;
  std::string stderr_text;
};

// The kvgate binary of this build (KVGATE_BINARY_DIR "/tools/kvgate").
std::string KvgateBinary();

// Runs `binary` with `args` (no shell), with stdin closed, and waits for it.
CliResult RunBinary(const std::string& binary,
                    const std::vector<std::string>& args);

// RunBinary(KvgateBinary(), args).
CliResult RunCli(const std::vector<std::string>& args);

// Lines of `text` without the trailing newline's empty remainder.
std::vector<std::string> Lines(const std::string& text);

}  // namespace kvgate

#endif  // KVGATE_TESTS_TOOLS_CLI_RUNNER_H_
