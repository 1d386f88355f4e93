// ExtProcGate: the decisions of an ext_proc stream (ext_proc_service.h) as
// pure functions of what the stream has seen, so that every answer an HTTP
// client can get is tested apart from gRPC. No gRPC call state, no threads,
// no clock reads (`now` is an argument): the ext_proc counterpart of
// plugin/server/admit_request.h on the Admission service's path.
//
// A stream asks the gate twice:
//
//   ExtProcGate gate(&registry, options);
//   HeadersVerdict h = gate.OnRequestHeaders(
//       ReadRequestHeaders(message.request_headers(), gate.options()),
//       ServingState{/*ready=*/true, /*draining=*/false});
//   // PassThrough: CONTINUE, not gated. HttpError: immediate response.
//   // GatedRequest: read the body (OnBodyChunk on each chunk), then
//   BodyVerdict b = gate.OnRequestBody(std::get<GatedRequest>(h), body,
//                                      request_id, now);
//   // ExtProcAdmit: Admit its ticket on its pool's controller.
//   // HttpError: immediate response.
#ifndef KVGATE_PLUGIN_EXT_PROC_EXT_PROC_GATE_H_
#define KVGATE_PLUGIN_EXT_PROC_EXT_PROC_GATE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "envoy/service/ext_proc/v3/external_processor.pb.h"
#include "estimator/serving.h"
#include "plugin/admission/controller.h"
#include "plugin/admission/model_pool.h"
#include "plugin/ext_proc/ext_proc_options.h"
#include "plugin/ext_proc/ext_proc_responses.h"
#include "plugin/ext_proc/openai_request.h"
#include "plugin/ext_proc/openai_sizing.h"

namespace kvgate {

// The request headers the gate reads, as Envoy sent them (each value is the
// header's raw_value, else its value; of a repeated header the last wins).
// Empty when absent.
struct ExtProcHeaders {
  std::string path;            // :path
  std::string method;          // :method
  std::string tenant;          // ExtProcOptions::tenant_header
  std::string priority;        // ExtProcOptions::priority_header
  std::string token_count;     // ExtProcOptions::token_count_header
  std::string content_length;  // content-length
  // The request has no body (request_headers.end_of_stream).
  bool end_of_stream = false;
};

// Picks the headers the gate reads out of Envoy's request_headers message.
// Keys are compared as sent (Envoy sends them in lower case, and
// ResolveExtProcConfig lower-cases the configured names).
ExtProcHeaders ReadRequestHeaders(
    const envoy::service::ext_proc::v3::HttpHeaders& headers,
    const ExtProcOptions& options);

// Whether kvgated takes gated requests now (ExtProcService::SetReady and
// StartDraining).
struct ServingState {
  bool ready = false;
  bool draining = false;
};

// A request that is not gated (another path, a method other than POST, or
// no body): every message of it is answered CONTINUE.
struct PassThrough {};

// A gated request whose headers passed the checks: what its body's sizing
// and its ticket take from them.
struct GatedRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
  std::string tenant;  // "" = the controller's "default"
  Priority priority = Priority::kStandard;
  // The trusted prompt token count (token-count header), for all the
  // request's prompts together; nullopt when the header is absent or not
  // trusted (ExtProcOptions::trust_token_count_header).
  std::optional<uint64_t> token_count;
};

// The answer to request_headers: not gated, gated (read the body), or an
// immediate response.
using HeadersVerdict = std::variant<PassThrough, GatedRequest, HttpError>;

// A gated request ready for the controller.
struct ExtProcAdmit {
  // The model's pool, from the registry; Admit `ticket` on its controller.
  ModelPool* pool = nullptr;
  // request_id, tenant, priority, the estimated KV and activation bytes, and
  // a deadline of now + ExtProcOptions::max_hold.
  AdmitTicket ticket;
  // The sizing behind ticket.cost: one shape per sequence (each prompt n
  // times, in order), with the prompt tokens and max new tokens assumed.
  std::vector<SequenceShape> sequences;
  // The body to forward instead of the client's, when kvgated wrote its
  // default max_tokens into it (ExtProcOptions::default_max_tokens); the
  // answer must also set content-length to its size.
  std::optional<std::string> body;
};

// The answer once the body is complete: admit, or an immediate response.
using BodyVerdict = std::variant<ExtProcAdmit, HttpError>;

// The decisions of ExtProcService's streams, from ExtProcOptions and the
// model registry. Immutable and thread-safe: one gate serves every stream.
class ExtProcGate {
 public:
  // Longest tenant accepted (bytes), and longest model name quoted back in a
  // 404 message.
  static constexpr size_t kMaxTenantBytes = 128;

  // `registry` must outlive the gate.
  ExtProcGate(const ModelRegistry* registry, ExtProcOptions options);

  const ExtProcOptions& options() const { return options_; }

  // Decides on the request headers, in this order:
  //   - PassThrough for a path other than /v1/completions and
  //     /v1/chat/completions (EndpointForPath) or a method other than
  //     POST;
  //   - 503 NOT_READY while !state.ready, then 503 DRAINING while
  //     state.draining (both Retry-After: 1);
  //   - 400 INVALID_REQUEST for a tenant over kMaxTenantBytes, a priority
  //     other than critical / standard / sheddable (any case), or (with
  //     trust_token_count_header) a token-count header that is not a uint32;
  //   - 413 BODY_TOO_LARGE for a content-length over max_body_bytes (an
  //     unreadable content-length is ignored);
  //   - 400 INVALID_REQUEST for a request without a body (end_of_stream on
  //     the headers), with the message an empty body gets;
  //   - otherwise the GatedRequest (priority STANDARD when absent).
  // The token-count header is read only with trust_token_count_header, and
  // then trusted as sent: only behind a gateway that tokenizes and strips
  // client-sent values.
  HeadersVerdict OnRequestHeaders(const ExtProcHeaders& headers,
                                  ServingState state) const;

  // 413 BODY_TOO_LARGE when a chunk of `chunk_bytes` after `buffered_bytes`
  // already read would take the body over max_body_bytes; nullopt otherwise.
  std::optional<HttpError> OnBodyChunk(uint64_t buffered_bytes,
                                       uint64_t chunk_bytes) const;

  // Decides on the complete body, in this order:
  //   - 400 INVALID_REQUEST with the parser's message for a body
  //     ParseOpenAiRequest refuses;
  //   - 404 MODEL_NOT_FOUND for a model no pool serves;
  //   - 400 INVALID_REQUEST for prompts x n over max_sequences, a sequence
  //     whose prompt + max new tokens exceeds the model's max_model_len, or
  //     a batch the model's estimator refuses;
  //   - 500 INTERNAL for a chat request without a max when neither the
  //     model's max_model_len nor default_max_tokens is known;
  //   - otherwise ExtProcAdmit with ticket id `request_id`, a deadline of
  //     `now` + max_hold, and the rewritten body when default_max_tokens
  //     applied.
  // Sizing: SizeOpenAiRequest (openai_sizing.h) with the model's
  // max_model_len, default_max_tokens and bytes_per_token.
  BodyVerdict OnRequestBody(const GatedRequest& request, absl::string_view body,
                            std::string request_id, absl::Time now) const;

  // The answer when the controller refuses a ticket outright (Admit returned
  // an error): 400 INVALID_REQUEST for InvalidArgument, 500 INTERNAL
  // otherwise, with the status' message.
  static HttpError AdmitError(const absl::Status& status);

 private:
  const ModelRegistry* registry_;
  const ExtProcOptions options_;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_EXT_PROC_EXT_PROC_GATE_H_
