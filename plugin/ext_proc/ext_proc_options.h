// ExtProcOptions: how kvgated's Envoy external processor reads requests,
// resolved from the ExtProcConfig section of kvgated's configuration
// (proto/kvgate/v1/config.proto) with its defaults filled in and checked.
#ifndef KVGATE_PLUGIN_EXT_PROC_EXT_PROC_OPTIONS_H_
#define KVGATE_PLUGIN_EXT_PROC_EXT_PROC_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvgate/v1/config.pb.h"

namespace kvgate {

// The ext_proc service's settings. The defaults below are those of an empty
// ExtProcConfig, except max_hold (see there).
struct ExtProcOptions {
  // Separate listener for Envoy. Default empty: the main gRPC listener.
  std::string listen_address;
  // When > 0: the max new tokens of a request that sets neither max_tokens
  // nor max_completion_tokens, written into the body forwarded to the
  // engine as max_tokens. Default 0: the engine's own rule
  // (max_model_len - prompt for chat, 16 for completions; openai_sizing.h).
  uint32_t default_max_tokens = 0;
  // Prompt bytes per token, to estimate a prompt's tokens from its text when
  // no token count is known. Default 4.0.
  double bytes_per_token = 4.0;
  // Take a request's prompt token count from token_count_header. Default
  // false: the header is ignored and kvgated counts the prompt itself.
  bool trust_token_count_header = false;
  // Request headers read for the tenant, the priority and a trusted prompt
  // token count (lower case, as Envoy sends them). Defaults
  // "x-kvgate-tenant", "x-kvgate-priority", "x-kvgate-prompt-tokens".
  std::string tenant_header = "x-kvgate-tenant";
  std::string priority_header = "x-kvgate-priority";
  std::string token_count_header = "x-kvgate-prompt-tokens";
  // Largest request body read (413 beyond). Default 8 MiB.
  uint64_t max_body_bytes = uint64_t{8} << 20;
  // Longest a request is held waiting for memory. Default 30 s here;
  // ResolveExtProcConfig defaults it to the queue's max_queue_wait.
  absl::Duration max_hold = absl::Seconds(30);
  // Most sequences (prompts x n) in one request. Default 4096; not
  // configurable in ExtProcConfig.
  int max_sequences = 4096;
};

// Margin added to max_hold in the override_message_timeout sent to Envoy, so
// that kvgated's own answer (a 429 at max_hold) arrives before Envoy's timer.
inline constexpr absl::Duration kHoldTimeoutMargin = absl::Seconds(1);

// Fills defaults (max_hold defaults to `default_max_hold`, the queue's
// max_queue_wait) and checks each value. InvalidArgument naming the field,
// e.g. "ext_proc.bytes_per_token: must be in (0, 1024]".
absl::StatusOr<ExtProcOptions> ResolveExtProcConfig(
    const kvgate::v1::ExtProcConfig& config, absl::Duration default_max_hold);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_EXT_PROC_EXT_PROC_OPTIONS_H_
