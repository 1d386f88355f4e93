#include "plugin/ext_proc/ext_proc_gate.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace kvgate {
namespace {

// Values of the priority header (case-insensitive); absent = STANDARD.
struct PriorityRow {
  const char* name;
  Priority priority;
};
constexpr PriorityRow kPriorities[] = {
    {"critical", Priority::kCritical},
    {"standard", Priority::kStandard},
    {"sheddable", Priority::kSheddable},
};

HttpError BadRequest(absl::string_view message) {
  return {400, "invalid_request_error", "INVALID_REQUEST", std::string(message),
          absl::ZeroDuration()};
}

HttpError Unavailable(absl::string_view code, absl::string_view message) {
  return {503, "service_unavailable", std::string(code), std::string(message),
          absl::Seconds(1)};
}

HttpError BodyTooLarge(uint64_t max_body_bytes) {
  return {413, "invalid_request_error", "BODY_TOO_LARGE",
          absl::StrCat("request body exceeds ", max_body_bytes, " bytes"),
          absl::ZeroDuration()};
}

// The 400 an empty body of `endpoint` gets: the parser's message.
HttpError EmptyBody(OpenAiEndpoint endpoint) {
  const absl::StatusOr<OpenAiRequest> parsed = ParseOpenAiRequest(endpoint, "");
  return BadRequest(parsed.ok() ? "body: is required"
                                : parsed.status().message());
}

// A header's bytes: raw_value (what current Envoy sends), else value.
const std::string& HeaderBytes(const envoy::config::core::v3::HeaderValue& h) {
  return h.raw_value().empty() ? h.value() : h.raw_value();
}

}  // namespace

ExtProcHeaders ReadRequestHeaders(
    const envoy::service::ext_proc::v3::HttpHeaders& headers,
    const ExtProcOptions& options) {
  ExtProcHeaders out;
  for (const auto& h : headers.headers().headers()) {
    const std::string& key = h.key();
    if (key == ":path") {
      out.path = HeaderBytes(h);
    } else if (key == ":method") {
      out.method = HeaderBytes(h);
    } else if (key == options.tenant_header) {
      out.tenant = HeaderBytes(h);
    } else if (key == options.priority_header) {
      out.priority = HeaderBytes(h);
    } else if (key == options.token_count_header) {
      out.token_count = HeaderBytes(h);
    } else if (key == "content-length") {
      out.content_length = HeaderBytes(h);
    }
  }
  out.end_of_stream = headers.end_of_stream();
  return out;
}

ExtProcGate::ExtProcGate(const ModelRegistry* registry, ExtProcOptions options)
    : registry_(registry), options_(std::move(options)) {}

HeadersVerdict ExtProcGate::OnRequestHeaders(const ExtProcHeaders& headers,
                                             ServingState state) const {
  const std::optional<OpenAiEndpoint> endpoint = EndpointForPath(headers.path);
  if (!endpoint.has_value() || headers.method != "POST") {
    return PassThrough{};
  }
  if (!state.ready) return Unavailable("NOT_READY", "kvgated is not ready");
  if (state.draining) {
    return Unavailable("DRAINING", "kvgated is shutting down; retry shortly");
  }
  GatedRequest request;
  request.endpoint = *endpoint;
  if (headers.tenant.size() > kMaxTenantBytes) {
    return BadRequest(absl::StrCat(options_.tenant_header, ": at most ",
                                   kMaxTenantBytes, " bytes"));
  }
  request.tenant = headers.tenant;
  if (!headers.priority.empty()) {
    bool known = false;
    for (const PriorityRow& row : kPriorities) {
      if (absl::EqualsIgnoreCase(headers.priority, row.name)) {
        request.priority = row.priority;
        known = true;
      }
    }
    if (!known) {
      return BadRequest(
          absl::StrCat(options_.priority_header,
                       ": must be critical, standard or sheddable"));
    }
  }
  if (options_.trust_token_count_header && !headers.token_count.empty()) {
    uint32_t tokens = 0;
    if (!absl::SimpleAtoi(headers.token_count, &tokens)) {
      return BadRequest(
          absl::StrCat(options_.token_count_header, ": must be a token count"));
    }
    request.token_count = tokens;
  }
  uint64_t length = 0;
  if (absl::SimpleAtoi(headers.content_length, &length) &&
      length > options_.max_body_bytes) {
    return BodyTooLarge(options_.max_body_bytes);
  }
  // No body at all (end_of_stream on the headers): refused as an empty body
  // is, never forwarded ungated.
  if (headers.end_of_stream) return EmptyBody(*endpoint);
  return request;
}

std::optional<HttpError> ExtProcGate::OnBodyChunk(uint64_t buffered_bytes,
                                                  uint64_t chunk_bytes) const {
  // buffered_bytes never exceeds max_body_bytes: each chunk was checked.
  if (buffered_bytes > options_.max_body_bytes ||
      chunk_bytes > options_.max_body_bytes - buffered_bytes) {
    return BodyTooLarge(options_.max_body_bytes);
  }
  return std::nullopt;
}

BodyVerdict ExtProcGate::OnRequestBody(const GatedRequest& request,
                                       absl::string_view body,
                                       std::string request_id,
                                       absl::Time now) const {
  const absl::StatusOr<OpenAiRequest> parsed =
      ParseOpenAiRequest(request.endpoint, body);
  if (!parsed.ok()) return BadRequest(parsed.status().message());
  ModelPool* pool = registry_->Find(parsed->model);
  if (pool == nullptr) {
    return HttpError{
        404, "invalid_request_error", "MODEL_NOT_FOUND",
        absl::StrCat(
            "The model '", parsed->model.substr(0, kMaxTenantBytes),
            "' is not served here; served models: ", registry_->QuotedNames()),
        absl::ZeroDuration()};
  }
  const uint64_t sequences =
      static_cast<uint64_t>(parsed->prompts.size()) * parsed->n;
  if (sequences > static_cast<uint64_t>(options_.max_sequences)) {
    return BadRequest(absl::StrCat("n x prompts: ", sequences,
                                   " sequences exceed the limit of ",
                                   options_.max_sequences));
  }
  OpenAiSizingOptions sizing_options;
  sizing_options.max_model_len = pool->model().max_model_len();
  sizing_options.default_max_tokens = options_.default_max_tokens;
  sizing_options.bytes_per_token = options_.bytes_per_token;
  const absl::StatusOr<OpenAiSizing> sizing = SizeOpenAiRequest(
      request.endpoint, *parsed, sizing_options, request.token_count);
  if (!sizing.ok()) return AdmitError(sizing.status());
  ExtProcAdmit admit;
  if (sizing->written_max_tokens.has_value()) {
    absl::StatusOr<std::string> rewritten =
        BodyWithMaxTokens(body, *sizing->written_max_tokens);
    if (!rewritten.ok()) return AdmitError(rewritten.status());
    admit.body = *std::move(rewritten);
  }
  admit.sequences.reserve(sizing->sequences.size());
  for (const OpenAiSequence& s : sizing->sequences) {
    admit.sequences.push_back({s.prompt_tokens, s.max_new_tokens});
  }
  BatchEstimate estimate;
  if (absl::Status s = pool->model().EstimateBatch(admit.sequences, &estimate);
      !s.ok()) {
    return BadRequest(s.message());
  }
  admit.pool = pool;
  admit.ticket.request_id = std::move(request_id);
  admit.ticket.tenant = request.tenant;
  admit.ticket.priority = request.priority;
  admit.ticket.cost =
      pool->LeaseCost(estimate.kv_cache_bytes, estimate.activation_bytes);
  admit.ticket.deadline = now + options_.max_hold;
  return admit;
}

HttpError ExtProcGate::AdmitError(const absl::Status& status) {
  if (status.code() == absl::StatusCode::kInvalidArgument) {
    return BadRequest(status.message());
  }
  return {500, "api_error", "INTERNAL", std::string(status.message()),
          absl::ZeroDuration()};
}

}  // namespace kvgate
