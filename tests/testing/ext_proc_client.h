// An Envoy-side client of envoy.service.ext_proc.v3.ExternalProcessor for the
// tests: EnvoyStream holds one Process stream the way Envoy's ext_proc filter
// does, and the builders make the messages Envoy sends. Shared by the
// in-process suite (tests/plugin/ext_proc/ext_proc_service_test.cc) and the
// one against a real kvgated (tests/integration/ext_proc_test.cc). Every wait
// is bounded.
#ifndef KVGATE_TESTS_TESTING_EXT_PROC_CLIENT_H_
#define KVGATE_TESTS_TESTING_EXT_PROC_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "envoy/service/ext_proc/v3/external_processor.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace kvgate {

// Longest real-time wait for an answer that is expected (never reached
// unless the test fails), unless a test says otherwise.
inline constexpr absl::Duration kEnvoyWait = absl::Seconds(5);
// The gRPC deadline of a whole stream: a backstop only.
inline constexpr absl::Duration kEnvoyStreamDeadline = absl::Seconds(30);

// An ext_proc stream as Envoy holds it: messages go out in order, answers
// are collected as they arrive. Callbacks run on gRPC threads. The
// destructor cancels the stream and waits, bounded, for it to end (a test
// failure when it does not).
class EnvoyStream final
    : public grpc::ClientBidiReactor<
          envoy::service::ext_proc::v3::ProcessingRequest,
          envoy::service::ext_proc::v3::ProcessingResponse> {
 public:
  explicit EnvoyStream(
      envoy::service::ext_proc::v3::ExternalProcessor::Stub* stub,
      absl::Duration deadline = kEnvoyStreamDeadline);
  ~EnvoyStream() override;
  EnvoyStream(const EnvoyStream&) = delete;
  EnvoyStream& operator=(const EnvoyStream&) = delete;

  void Send(const envoy::service::ext_proc::v3::ProcessingRequest& request);
  // Envoy is done with the request (half-close).
  void Close();
  // The client went away or the upstream reset: Envoy resets the stream.
  void Abort();

  // The next answer, or nullopt when none arrives within `wait`.
  std::optional<envoy::service::ext_proc::v3::ProcessingResponse> Next(
      absl::Duration wait = kEnvoyWait);
  // Answers received and not taken by Next.
  size_t Pending();
  // The stream's status once it is over; DEADLINE_EXCEEDED (from the test)
  // when it is not within `wait`.
  grpc::Status Status(absl::Duration wait = kEnvoyWait);

  void OnWriteDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  grpc::ClientContext context_;
  envoy::service::ext_proc::v3::ProcessingResponse incoming_;
  absl::Mutex mu_;
  std::deque<envoy::service::ext_proc::v3::ProcessingRequest> outgoing_
      ABSL_GUARDED_BY(mu_);
  std::deque<envoy::service::ext_proc::v3::ProcessingResponse> received_
      ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool close_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

// Envoy's messages. Header values travel in raw_value, as Envoy sends them.

// Request headers: :method, :path, :authority "engine", content-type
// application/json, then `extra` in order.
envoy::service::ext_proc::v3::ProcessingRequest RequestHeaders(
    const std::string& method, const std::string& path,
    const std::vector<std::pair<std::string, std::string>>& extra = {},
    bool end_of_stream = false);
envoy::service::ext_proc::v3::ProcessingRequest RequestBody(
    const std::string& bytes, bool end_of_stream);
// Response headers with :status 200.
envoy::service::ext_proc::v3::ProcessingRequest ResponseHeaders(
    bool end_of_stream = false);
envoy::service::ext_proc::v3::ProcessingRequest ResponseBody(
    const std::string& bytes, bool end_of_stream);

// An OpenAI chat completion body for `model`: one short user message,
// `max_tokens`, "stream": true.
std::string ChatCompletionBody(const std::string& model, uint64_t max_tokens);
// The headers that size a chat completion for kvgate: x-kvgate-prompt-tokens
// `prompt_tokens` and x-kvgate-tenant `tenant`.
std::vector<std::pair<std::string, std::string>> ChatHeaders(
    uint64_t prompt_tokens, const std::string& tenant = "tenant-a");

// The raw_value of `key` in `mutation`; nullopt when not set. Fails the test
// when a value is carried in the ignored `value` field instead.
std::optional<std::string> Header(
    const envoy::service::ext_proc::v3::HeaderMutation& mutation,
    const std::string& key);

}  // namespace kvgate

#endif  // KVGATE_TESTS_TESTING_EXT_PROC_CLIENT_H_
