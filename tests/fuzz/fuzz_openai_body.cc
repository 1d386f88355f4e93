// libFuzzer target: the body of an OpenAI-style request as the ext_proc
// service receives it from Envoy (plugin/ext_proc/openai_request.h).
//
// The first byte picks the endpoint (completions or chat completions), the
// rest is the body. A body that parses must respect the parser's limits.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/string_view.h"
#include "plugin/ext_proc/openai_request.h"
#include "plugin/ext_proc/openai_sizing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const kvgate::OpenAiEndpoint endpoint =
      (data[0] & 1) != 0 ? kvgate::OpenAiEndpoint::kChatCompletions
                         : kvgate::OpenAiEndpoint::kCompletions;
  const absl::string_view body(reinterpret_cast<const char*>(data) + 1,
                               size - 1);
  const kvgate::OpenAiParseLimits limits;
  absl::StatusOr<kvgate::OpenAiRequest> request =
      kvgate::ParseOpenAiRequest(endpoint, body, limits);
  if (!request.ok()) return 0;
  if (request->model.empty() || request->n > limits.max_n ||
      request->prompts.size() > limits.max_prompts) {
    std::abort();
  }
  if (endpoint == kvgate::OpenAiEndpoint::kChatCompletions &&
      request->prompts.size() != 1) {
    std::abort();
  }
  // Sized the engine's way with an operator default: every sequence within
  // max_model_len, and the rewritten body parses to the same request with
  // that max_tokens.
  kvgate::OpenAiSizingOptions options;
  options.max_model_len = 4096;
  options.default_max_tokens = (data[0] & 2) != 0 ? 64 : 0;
  absl::StatusOr<kvgate::OpenAiSizing> sizing =
      kvgate::SizeOpenAiRequest(endpoint, *request, options, std::nullopt);
  if (!sizing.ok()) return 0;
  for (const kvgate::OpenAiSequence& s : sizing->sequences) {
    if (s.max_new_tokens == 0 ||
        s.prompt_tokens + s.max_new_tokens > options.max_model_len) {
      std::abort();
    }
  }
  if (!sizing->written_max_tokens.has_value()) return 0;
  absl::StatusOr<std::string> rewritten =
      kvgate::BodyWithMaxTokens(body, *sizing->written_max_tokens);
  if (!rewritten.ok()) return 0;
  absl::StatusOr<kvgate::OpenAiRequest> again =
      kvgate::ParseOpenAiRequest(endpoint, *rewritten, limits);
  if (!again.ok() || again->max_tokens != sizing->written_max_tokens ||
      again->model != request->model ||
      again->prompts.size() != request->prompts.size()) {
    std::abort();
  }
  return 0;
}
