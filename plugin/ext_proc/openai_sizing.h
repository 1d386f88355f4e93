// How many tokens an OpenAI-style request may use, sized the way the engine
// sizes it (docs/design.md, "OpenAI requests"). The Python middleware
// (clients/python/kvgate/openai_request.py) applies the same rules, and both
// pass the shared corpus tests/golden/openai_sizing.json.
//
//   absl::StatusOr<OpenAiSizing> sizing = SizeOpenAiRequest(
//       endpoint, parsed, {.max_model_len = 8192, .bytes_per_token = 4.0},
//       /*trusted_prompt_tokens=*/std::nullopt);
//
// Pure functions of their arguments; thread-safe.
#ifndef KVGATE_PLUGIN_EXT_PROC_OPENAI_SIZING_H_
#define KVGATE_PLUGIN_EXT_PROC_OPENAI_SIZING_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "plugin/ext_proc/openai_request.h"

namespace kvgate {

// max_tokens of a legacy completion (/v1/completions) that sets none: the
// OpenAI API's default, which vLLM follows (CompletionRequest.max_tokens).
inline constexpr uint64_t kCompletionsDefaultMaxTokens = 16;

// What the sizing depends on besides the request.
struct OpenAiSizingOptions {
  // Longest prompt + new tokens of one sequence (the model's max_model_len);
  // 0 = not known: no 400 for length, and a chat request without a max needs
  // default_max_tokens.
  uint64_t max_model_len = 0;
  // When > 0: the max new tokens of a request that sets none, written into
  // the body forwarded to the engine. 0: the engine's own rule.
  uint64_t default_max_tokens = 0;
  // Prompt bytes per token, to estimate a text prompt's tokens.
  double bytes_per_token = 4.0;
};

// One sequence the engine will run.
struct OpenAiSequence {
  uint64_t prompt_tokens = 0;
  uint64_t max_new_tokens = 0;
};

// A request's size: one sequence per prompt and sample (each prompt n
// times, in order), and the max_tokens to write into the forwarded body.
struct OpenAiSizing {
  std::vector<OpenAiSequence> sequences;
  // Set when the request had no max and default_max_tokens applied: the
  // forwarded body must carry `max_tokens` = this value.
  std::optional<uint64_t> written_max_tokens;
};

// Prompt tokens of one of `prompts` prompts: the trusted count (shared
// evenly across the prompts, rounded up) when given, else the token ids
// sent, else ceil(text_bytes / bytes_per_token) + template_tokens. At
// least 1.
uint64_t PromptTokens(const PromptSize& prompt, size_t prompts,
                      double bytes_per_token,
                      std::optional<uint64_t> trusted_prompt_tokens);

// Sizes `request`. Max new tokens: max_completion_tokens, else max_tokens;
// when neither is set, options.default_max_tokens if > 0 (and then
// written_max_tokens is set), else max_model_len - prompt tokens for chat
// completions (vLLM's rule) and kCompletionsDefaultMaxTokens for completions.
// InvalidArgument (an HTTP 400, as the engine answers) when a sequence's
// prompt + max new tokens exceeds a known max_model_len, or a chat prompt
// leaves no room for a completion. FailedPrecondition (a server
// misconfiguration) for a chat request without a max when neither
// max_model_len nor default_max_tokens is known.
absl::StatusOr<OpenAiSizing> SizeOpenAiRequest(
    OpenAiEndpoint endpoint, const OpenAiRequest& request,
    const OpenAiSizingOptions& options,
    std::optional<uint64_t> trusted_prompt_tokens);

// `body` (a JSON object ParseOpenAiRequest accepted) with `max_tokens` set to
// `max_tokens`, every other field kept in its order. InvalidArgument when
// `body` is not a JSON object.
absl::StatusOr<std::string> BodyWithMaxTokens(absl::string_view body,
                                              uint64_t max_tokens);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_EXT_PROC_OPENAI_SIZING_H_
