// Test helper: runs the real kvgated binary as a child process.
//
//   KvgatedProcess::Options options;
//   options.args = {"--config=" + path};
//   options.address = "unix:/tmp/kvgated_test_1.sock";
//   absl::StatusOr<std::unique_ptr<KvgatedProcess>> kvgated =
//       KvgatedProcess::Start(options);
//   auto stub = kvgate::v1::Admission::NewStub((*kvgated)->NewChannel());
//
// Start returns once the server's grpc.health.v1 service answers SERVING at
// `address` (or fails with the captured stderr when the process exits first
// or the wait times out). The child's stdout and stderr go to temporary
// files. Destruction sends SIGTERM, waits a bounded time, then SIGKILLs; the
// child is also SIGKILLed if the thread that started it dies (start it from
// the test's main thread), so a killed test leaves no kvgated running.
//
// The health and reflection clients at the bottom speak the wire format by
// hand through grpc::GenericStub, since no generated stubs for those services
// ship with the Debian packages.
#ifndef KVGATE_TESTS_INTEGRATION_KVGATED_PROCESS_H_
#define KVGATE_TESTS_INTEGRATION_KVGATED_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace kvgate {

class KvgatedProcess {
 public:
  struct Options {
    // Path of the kvgated binary.
    std::string binary;
    // Command-line arguments (without argv[0]).
    std::vector<std::string> args;
    // Environment variables set for the child on top of the test's own.
    std::vector<std::pair<std::string, std::string>> env;
    // gRPC address to wait on for SERVING ("unix:/path" or "host:port").
    // Empty: Start does not wait.
    std::string address;
    // Longest wait for SERVING.
    absl::Duration start_timeout = absl::Seconds(10);
    // Longest wait after SIGTERM before SIGKILL, on destruction. kvgated's
    // own drain is bounded (5 s for the servers' Shutdown, 5 s for the last
    // callbacks), so a longer wait means it hangs.
    absl::Duration stop_timeout = absl::Seconds(15);
  };

  // What a finished process left behind.
  struct Exit {
    // Exit code, or 128 + signal number when killed by a signal.
    int code = -1;
    std::string stdout_text;
    std::string stderr_text;
  };

  // Starts the binary and waits until it serves. Unavailable (with the
  // child's stderr) when it exits or does not serve in time.
  static absl::StatusOr<std::unique_ptr<KvgatedProcess>> Start(
      const Options& options);

  // Runs the binary to completion (for --validate and start-up failures).
  // DeadlineExceeded (after killing it) when it runs past `timeout`.
  static absl::StatusOr<Exit> Run(const Options& options,
                                  absl::Duration timeout = absl::Seconds(10));

  KvgatedProcess(const KvgatedProcess&) = delete;
  KvgatedProcess& operator=(const KvgatedProcess&) = delete;
  ~KvgatedProcess();

  pid_t pid() const { return pid_; }
  const std::string& address() const { return options_.address; }

  // A new channel to address(), with short reconnect backoff.
  std::shared_ptr<grpc::Channel> NewChannel() const;

  // Sends `signal` and waits up to `timeout` for the process to exit.
  // DeadlineExceeded when it is still running then (it is left running).
  absl::StatusOr<Exit> SignalAndWait(int signal, absl::Duration timeout);

  // The child's stderr so far.
  std::string Stderr() const;

 private:
  KvgatedProcess(Options options, pid_t pid, std::string stdout_path,
                 std::string stderr_path);

  // Polls waitpid until the child exits or `timeout` passes.
  std::optional<int> WaitForExit(absl::Duration timeout);
  Exit Collect(int code) const;

  Options options_;
  pid_t pid_;
  std::string stdout_path_;
  std::string stderr_path_;
  bool exited_ = false;
};

// A free TCP port on 127.0.0.1 (bound to port 0, then closed).
absl::StatusOr<int> FreeTcpPort();

// A unique "unix:/tmp/..." address for this process; the path does not exist.
std::string UniqueUnixAddress(const std::string& tag);

// Writes `text` to a new file in the test temporary directory whose name
// ends with `suffix`; returns its path.
std::string WriteTempFile(const std::string& suffix, const std::string& text);

// grpc.health.v1.Health/Check for `service` ("" = the whole server).
// Returns the ServingStatus number: 1 SERVING, 2 NOT_SERVING, 3
// SERVICE_UNKNOWN; a gRPC error as a status.
absl::StatusOr<int> HealthCheck(const std::shared_ptr<grpc::Channel>& channel,
                                const std::string& service,
                                absl::Duration timeout = absl::Seconds(2));

// grpc.reflection.v1alpha.ServerReflection: the names ListServices returns.
absl::StatusOr<std::vector<std::string>> ReflectionListServices(
    const std::shared_ptr<grpc::Channel>& channel,
    absl::Duration timeout = absl::Seconds(5));

}  // namespace kvgate

#endif  // KVGATE_TESTS_INTEGRATION_KVGATED_PROCESS_H_
