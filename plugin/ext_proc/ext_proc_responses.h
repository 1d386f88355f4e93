// The ProcessingResponse messages kvgated sends to Envoy's ext_proc filter,
// built by pure functions so that what an HTTP client sees (status, headers,
// OpenAI-style JSON error body) is tested apart from the stream.
//
// Header values travel in HeaderValue.raw_value: current Envoy reads the
// bytes there and ignores `value` in mutations.
#ifndef KVGATE_PLUGIN_EXT_PROC_EXT_PROC_RESPONSES_H_
#define KVGATE_PLUGIN_EXT_PROC_EXT_PROC_RESPONSES_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "envoy/service/ext_proc/v3/external_processor.pb.h"
#include "plugin/admission/controller.h"

namespace kvgate {

// Headers kvgated adds: to the request sent upstream (BUFFERED body mode),
// to the response sent to the client, and to its own immediate responses.
inline constexpr char kDecisionHeader[] = "x-kvgate-decision";
inline constexpr char kReasonHeader[] = "x-kvgate-reason";
inline constexpr char kReservedBytesHeader[] = "x-kvgate-reserved-bytes";

// How a rejection or an error reaches the HTTP client.
struct HttpError {
  int status = 500;     // HTTP status code
  std::string type;     // OpenAI error type, e.g. "rate_limit_exceeded"
  std::string code;     // machine-readable, e.g. "QUEUE_TIMEOUT"
  std::string message;  // for people
  // When set (> 0), a Retry-After header in whole seconds, rounded up.
  absl::Duration retry_after;
};

// The HTTP answer to a controller rejection: 429 for QUEUE_TIMEOUT,
// QUEUE_FULL and SHED; 503 for MEMORY_PRESSURE and DRAINING (both with
// Retry-After); 400 for NEVER_FITS (retrying cannot help).
HttpError RejectionError(const AdmitOutcome& outcome);

// Seconds for a Retry-After header: `d` rounded up, at least 1.
int64_t RetryAfterSeconds(absl::Duration d);

// {"error":{"message":...,"type":...,"param":null,"code":...}}
std::string OpenAiErrorBody(const HttpError& error);

// An ImmediateResponse with the status, content-type application/json,
// Retry-After when set, x-kvgate-decision REJECTED and x-kvgate-reason (the
// error's code), and the OpenAI-style body.
envoy::service::ext_proc::v3::ProcessingResponse ImmediateError(
    const HttpError& error);

// Appends a header that replaces any existing value (raw_value bytes).
void SetHeader(envoy::service::ext_proc::v3::HeaderMutation& mutation,
               absl::string_view key, absl::string_view value);

// The x-kvgate-decision / -reserved-bytes headers of an admitted request.
void AddAdmittedHeaders(uint64_t reserved_bytes,
                        envoy::service::ext_proc::v3::HeaderMutation& mutation);

// Makes `response` (the answer to a request body message) replace the body
// sent upstream with `body`, and set content-length to its size in the same
// answer's header mutation: since Envoy 1.29 a length that does not match
// the mutated body is a 500 before the upstream sees the request.
void ReplaceRequestBody(std::string body,
                        envoy::service::ext_proc::v3::CommonResponse& response);

// Which message a plain CONTINUE answers.
enum class ExtProcPhase {
  kRequestHeaders,
  kRequestBody,
  kRequestTrailers,
  kResponseHeaders,
  kResponseBody,
  kResponseTrailers
};

// An empty CONTINUE answer to a message of `phase`.
envoy::service::ext_proc::v3::ProcessingResponse ContinueResponse(
    ExtProcPhase phase);

// A response carrying only override_message_timeout: Envoy restarts its
// timer for the message being held with `timeout` and keeps waiting.
envoy::service::ext_proc::v3::ProcessingResponse ExtendTimeout(
    absl::Duration timeout);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_EXT_PROC_EXT_PROC_RESPONSES_H_
