#include "plugin/ext_proc/ext_proc_responses.h"

#include <cmath>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace kvgate {
namespace {

using envoy::config::core::v3::HeaderValueOption;
using envoy::service::ext_proc::v3::HeaderMutation;
using envoy::service::ext_proc::v3::ProcessingResponse;

// HTTP answer per rejection reason. 429 tells the client to slow down; 503
// that the server cannot take work now (memory pressure seen on the device,
// or shutting down); NEVER_FITS is the request's own size.
struct RejectionRow {
  RejectReason reason;
  int status;
  const char* type;
  bool retry_after;
};
constexpr RejectionRow kRejections[] = {
    {RejectReason::kQueueTimeout, 429, "rate_limit_exceeded", true},
    {RejectReason::kQueueFull, 429, "rate_limit_exceeded", true},
    {RejectReason::kShed, 429, "rate_limit_exceeded", true},
    {RejectReason::kMemoryPressure, 503, "service_unavailable", true},
    {RejectReason::kDraining, 503, "service_unavailable", true},
    {RejectReason::kNeverFits, 400, "invalid_request_error", false},
    {RejectReason::kCancelled, 503, "service_unavailable", false},
};

}  // namespace

HttpError RejectionError(const AdmitOutcome& outcome) {
  HttpError error;
  error.status = 503;
  error.type = "service_unavailable";
  error.code = std::string(RejectReasonName(outcome.reason));
  error.message =
      outcome.message.empty()
          ? absl::StrCat("kvgate rejected the request: ", error.code)
          : outcome.message;
  for (const RejectionRow& row : kRejections) {
    if (row.reason != outcome.reason) continue;
    error.status = row.status;
    error.type = row.type;
    if (row.retry_after) {
      error.retry_after = outcome.retry_after > absl::ZeroDuration()
                              ? outcome.retry_after
                              : absl::Seconds(1);
    }
  }
  return error;
}

int64_t RetryAfterSeconds(absl::Duration d) {
  const int64_t seconds = absl::ToInt64Seconds(absl::Ceil(d, absl::Seconds(1)));
  return seconds < 1 ? 1 : seconds;
}

std::string OpenAiErrorBody(const HttpError& error) {
  nlohmann::json body;
  body["error"] = {{"message", error.message},
                   {"type", error.type},
                   {"param", nullptr},
                   {"code", error.code}};
  // Replace, not throw, on invalid UTF-8 in a message that quotes input.
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void SetHeader(HeaderMutation& mutation, absl::string_view key,
               absl::string_view value) {
  HeaderValueOption* option = mutation.add_set_headers();
  option->mutable_header()->set_key(std::string(key));
  option->mutable_header()->set_raw_value(std::string(value));
  option->set_append_action(HeaderValueOption::OVERWRITE_IF_EXISTS_OR_ADD);
}

void AddAdmittedHeaders(uint64_t reserved_bytes, HeaderMutation& mutation) {
  SetHeader(mutation, kDecisionHeader, "ADMITTED");
  SetHeader(mutation, kReservedBytesHeader, absl::StrCat(reserved_bytes));
}

void ReplaceRequestBody(
    std::string body, envoy::service::ext_proc::v3::CommonResponse& response) {
  SetHeader(*response.mutable_header_mutation(), "content-length",
            absl::StrCat(body.size()));
  response.mutable_body_mutation()->set_body(std::move(body));
}

ProcessingResponse ImmediateError(const HttpError& error) {
  ProcessingResponse response;
  auto* immediate = response.mutable_immediate_response();
  immediate->mutable_status()->set_code(
      static_cast<envoy::type::v3::StatusCode>(error.status));
  HeaderMutation* headers = immediate->mutable_headers();
  SetHeader(*headers, "content-type", "application/json");
  if (error.retry_after > absl::ZeroDuration()) {
    SetHeader(*headers, "retry-after",
              absl::StrCat(RetryAfterSeconds(error.retry_after)));
  }
  SetHeader(*headers, kDecisionHeader, "REJECTED");
  SetHeader(*headers, kReasonHeader, error.code);
  immediate->set_body(OpenAiErrorBody(error));
  // Envoy's response code details allow no spaces.
  immediate->set_details(
      absl::StrCat("kvgate_", absl::AsciiStrToLower(error.code)));
  return response;
}

ProcessingResponse ContinueResponse(ExtProcPhase phase) {
  ProcessingResponse response;
  switch (phase) {
    case ExtProcPhase::kRequestHeaders:
      response.mutable_request_headers()->mutable_response();
      break;
    case ExtProcPhase::kRequestBody:
      response.mutable_request_body()->mutable_response();
      break;
    case ExtProcPhase::kRequestTrailers:
      response.mutable_request_trailers();
      break;
    case ExtProcPhase::kResponseHeaders:
      response.mutable_response_headers()->mutable_response();
      break;
    case ExtProcPhase::kResponseBody:
      response.mutable_response_body()->mutable_response();
      break;
    case ExtProcPhase::kResponseTrailers:
      response.mutable_response_trailers();
      break;
  }
  return response;
}

ProcessingResponse ExtendTimeout(absl::Duration timeout) {
  ProcessingResponse response;
  auto* d = response.mutable_override_message_timeout();
  const int64_t seconds =
      absl::IDivDuration(timeout, absl::Seconds(1), &timeout);
  d->set_seconds(seconds);
  d->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(timeout)));
  return response;
}

}  // namespace kvgate
