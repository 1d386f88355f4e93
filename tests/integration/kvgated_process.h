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
// The health and reflection clients speak the wire format by hand through
// grpc::GenericStub, since no generated stubs for those services ship with
// the Debian packages.
//
// KvgatedTest (at the bottom) is the fixture the integration suites share:
// the bytes of one request shape, probed once from a throwaway kvgated; pool
// configurations sized in that shape; starting kvgated with a connected
// Admission stub; the Admission calls, each with a deadline (through
// AdmissionClient and PendingAdmit, tests/testing/admission_client.h). Every
// wait in it is bounded.
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
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "google/protobuf/duration.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvgate/v1/admission.grpc.pb.h"
#include "tests/testing/admission_client.h"

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

// GET `path` from 127.0.0.1:`port` over HTTP/1.0; the whole response,
// headers included ("" when it cannot connect). Connecting, sending and
// each read are bounded by `timeout`.
std::string HttpGet(int port, const std::string& path,
                    absl::Duration timeout = absl::Seconds(5));

// The body of GET /metrics from 127.0.0.1:`port` ("" on failure).
std::string ScrapeMetrics(int port);

// The value of `series` (name and labels exactly as exposed) in a /metrics
// body; -1 when absent.
double MetricValue(const std::string& body, const std::string& series);

// ---------------------------------------------------------------------------
// The shared fixture.

// The model every suite serves, and the request shape pools are sized in:
// 128 tokens, 8 blocks of 16.
inline constexpr char kModel[] = "gpt2";
inline constexpr uint32_t kPromptTokens = 100;
inline constexpr uint32_t kMaxNewTokens = 28;
// Deadline of each RPC (and bound of each wait) unless a test says otherwise.
inline constexpr absl::Duration kRpcTimeout = absl::Seconds(5);

// An Admit of `sequences` sequences of the shape.
kvgate::v1::AdmitRequest Request(
    const std::string& request_id, int sequences = 1,
    kvgate::v1::Priority priority = kvgate::v1::STANDARD,
    const std::string& tenant = "tenant-a");

// Bytes of one request of the shape, as kvgated's own Estimate gives them,
// so that no test hard-codes estimator figures.
struct ShapeBytes {
  uint64_t kv = 0;
  uint64_t activation = 0;
  uint64_t total = 0;  // kv + activation
  uint64_t weights = 0;
  // Capacity into which exactly `n` such requests fit: n KV reservations
  // plus one activation reserve (the largest of the live leases).
  uint64_t CapacityFor(uint64_t n) const { return n * kv + activation; }
  // Reserved bytes of `n` live leases of the shape.
  uint64_t ReservedFor(uint64_t n) const { return n == 0 ? 0 : CapacityFor(n); }
};

// Starts a throwaway kvgated (`binary`) serving the gpt2 preset and asks its
// Estimate for one request of the shape.
absl::StatusOr<ShapeBytes> ProbeShape(const std::string& binary);

// Base of the integration fixtures. SetUp probes the shape once per test
// binary (KVGATED_PATH, the kvgated this library was built with) and fails
// the test when that fails; TearDown stops the server and removes the files
// the test wrote through ServerOptions.
class KvgatedTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // The shape's bytes (valid after SetUp).
  static const ShapeBytes& shape();

  // Config text for a gpt2 pool whose capacity is exactly `capacity` bytes
  // (gpu_memory_utilization 1.0 on a static device of weights + capacity),
  // followed by `extra` (more ServerConfig fields).
  static std::string PoolConfig(uint64_t capacity,
                                const std::string& extra = "");

  // Options to run kvgated with `config_text` (written to a file removed in
  // TearDown), serving gRPC at `address` (default: a fresh unix socket) and
  // started with `extra_args` too. Start waits for SERVING at `address`.
  KvgatedProcess::Options ServerOptions(
      const std::string& config_text, const std::string& address = "",
      const std::vector<std::string>& extra_args = {});

  // Starts kvgated (server_) and connects stub_ to it.
  void StartServer(const KvgatedProcess::Options& options);
  void StartServer(const std::string& config_text,
                   const std::string& address = "") {
    StartServer(ServerOptions(config_text, address));
  }
  // Stops the server with SIGKILL (no drain) and forgets it.
  void Kill9();

  // The Admission calls on stub_ (AdmissionClient), each with a kRpcTimeout
  // deadline and, when `token` is set, a bearer token.
  AdmissionClient client() const {
    return AdmissionClient(stub_.get(), kRpcTimeout);
  }
  grpc::Status Admit(const kvgate::v1::AdmitRequest& request,
                     kvgate::v1::AdmitResponse* response,
                     const std::string& token = "") {
    return client().Admit(request, response, token);
  }
  // Admits `request_id` and expects ADMITTED; returns the lease.
  std::string AdmitOrFail(const std::string& request_id);
  // An Admit that may wait at most `wait` in the queue; expects status OK.
  kvgate::v1::AdmitResponse AdmitWaiting(const std::string& request_id,
                                         absl::Duration wait);
  grpc::Status Release(const std::string& lease_id, uint64_t* released_bytes,
                       const std::string& token = "") {
    return client().Release(lease_id, released_bytes, token);
  }
  grpc::Status Renew(const std::string& lease_id) {
    return client().Renew(lease_id);
  }
  // The budget of kModel; a test failure unless the call succeeds.
  kvgate::v1::Budget GetBudget() { return client().GetBudgetOrFail(kModel); }
  // Polls GetBudget until `queued` requests wait; false (with a test
  // failure) after `timeout`.
  bool WaitForQueued(uint32_t queued, absl::Duration timeout = kRpcTimeout);

  std::unique_ptr<KvgatedProcess> server_;
  std::unique_ptr<kvgate::v1::Admission::Stub> stub_;
  // Files written for this test, removed in TearDown.
  std::vector<std::string> temp_files_;
};

}  // namespace kvgate

#endif  // KVGATE_TESTS_INTEGRATION_KVGATED_PROCESS_H_
