// OpenAiRequest: what admission needs from the body of an OpenAI-style
// completion request (POST /v1/completions or /v1/chat/completions), read by
// a pure parser of the body's bytes.
//
//   absl::StatusOr<OpenAiRequest> r =
//       ParseOpenAiRequest(OpenAiEndpoint::kChatCompletions, body);
//
// The parser reads only the fields that size a request: `model`,
// `max_tokens` / `max_completion_tokens`, `n`, `stream`, and the prompt
// (`prompt` for completions: a string, a list of strings, a list of token
// ids or a list of token-id lists; `messages` for chat: each message's role,
// its content (a string or a list of parts whose `text` counts; image and
// audio parts are not counted) and its `tool_calls`, and the request's
// `tools`). Other fields are ignored. The counting rules are the ones in
// docs/design.md, "OpenAI requests", shared with the Python middleware. It
// allocates no more than the JSON document needs and never throws; every
// failure is InvalidArgument with a message naming the field, fit for the
// client.
#ifndef KVGATE_PLUGIN_EXT_PROC_OPENAI_REQUEST_H_
#define KVGATE_PLUGIN_EXT_PROC_OPENAI_REQUEST_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvgate {

enum class OpenAiEndpoint { kCompletions, kChatCompletions };

// The endpoint a request path names ("/v1/completions",
// "/v1/chat/completions", with or without a query string); nullopt for any
// other path (not gated).
std::optional<OpenAiEndpoint> EndpointForPath(absl::string_view path);

// Tokens a chat template adds around each message (role markers,
// separators): Llama 3's template spends 4-5 per message
// (<|start_header_id|>role<|end_header_id|>\n\n ... <|eot_id|>), ChatML
// (Qwen) 5.
inline constexpr uint64_t kChatTokensPerMessage = 5;

// One prompt of the request: its size in UTF-8 bytes of text plus the tokens
// a chat template adds, or its exact token count when the client sent token
// ids.
struct PromptSize {
  // Chat: each message's role, text content and tool calls, and the
  // request's tool definitions. Tool definitions and tool calls are rendered
  // into the prompt by the chat template, so they count as the bytes of
  // every key and string value in them (JSON punctuation, numbers and
  // booleans are not counted).
  uint64_t text_bytes = 0;
  // Chat: kChatTokensPerMessage per message. 0 for completions.
  uint64_t template_tokens = 0;
  std::optional<uint64_t> token_ids;
};

// What ParseOpenAiRequest reads from a body: the fields that size it.
struct OpenAiRequest {
  std::string model;
  // max_completion_tokens, else max_tokens (each at least 1); nullopt when
  // neither is set.
  std::optional<uint64_t> max_tokens;
  // Completions per prompt (`n`, default 1).
  uint32_t n = 1;
  bool stream = false;
  // One entry per prompt: a completions request may batch several prompts;
  // a chat request has one (all its messages).
  std::vector<PromptSize> prompts;
};

// Bounds on what ParseOpenAiRequest accepts (InvalidArgument beyond).
struct OpenAiParseLimits {
  // Largest `n` accepted.
  uint32_t max_n = 128;
  // Most prompts in one completions request.
  uint32_t max_prompts = 4096;
  // Deepest JSON nesting accepted (checked before parsing, so a hostile body
  // cannot exhaust the stack).
  int max_depth = 64;
};

// Parses `body`. InvalidArgument when it is not a JSON object, when `model`
// is missing or not a non-empty string, when the prompt (or messages) is
// missing or malformed, or when a number is negative, fractional or out of
// range (max_tokens and max_completion_tokens of 0 included).
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(
    OpenAiEndpoint endpoint, absl::string_view body,
    const OpenAiParseLimits& limits = {});

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_EXT_PROC_OPENAI_REQUEST_H_
