#include "plugin/ext_proc/openai_sizing.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace kvgate {
namespace {

// vLLM's words for a request over the context, so clients see one message
// whoever refuses them.
absl::Status TooLong(uint64_t max_model_len, uint64_t prompt,
                     uint64_t max_new) {
  return absl::InvalidArgumentError(absl::StrCat(
      "This model's maximum context length is ", max_model_len,
      " tokens. However, you requested ", prompt + max_new, " tokens (", prompt,
      " in the prompt, ", max_new,
      " in the completion). Please reduce the prompt or max_tokens."));
}

}  // namespace

uint64_t PromptTokens(const PromptSize& prompt, size_t prompts,
                      double bytes_per_token,
                      std::optional<uint64_t> trusted_prompt_tokens) {
  uint64_t tokens = 0;
  if (trusted_prompt_tokens.has_value()) {
    tokens = (*trusted_prompt_tokens + prompts - 1) / prompts;
  } else if (prompt.token_ids.has_value()) {
    tokens = *prompt.token_ids;
  } else {
    // text_bytes is bounded by the body size (<= 1 GiB), so this fits.
    tokens = static_cast<uint64_t>(std::ceil(
                 static_cast<double>(prompt.text_bytes) / bytes_per_token)) +
             prompt.template_tokens;
  }
  return tokens == 0 ? 1 : tokens;
}

absl::StatusOr<OpenAiSizing> SizeOpenAiRequest(
    OpenAiEndpoint endpoint, const OpenAiRequest& request,
    const OpenAiSizingOptions& options,
    std::optional<uint64_t> trusted_prompt_tokens) {
  const bool engine_rule_for_chat =
      !request.max_tokens.has_value() && options.default_max_tokens == 0 &&
      endpoint == OpenAiEndpoint::kChatCompletions;
  if (engine_rule_for_chat && options.max_model_len == 0) {
    return absl::FailedPreconditionError(
        "the model's max_model_len is not known, so a chat request without "
        "max_tokens cannot be sized: set the model's max_model_len or a "
        "default max_tokens");
  }
  OpenAiSizing sizing;
  if (!request.max_tokens.has_value() && options.default_max_tokens > 0) {
    sizing.written_max_tokens = options.default_max_tokens;
  }
  sizing.sequences.reserve(request.prompts.size() * request.n);
  for (const PromptSize& prompt : request.prompts) {
    const uint64_t tokens =
        PromptTokens(prompt, request.prompts.size(), options.bytes_per_token,
                     trusted_prompt_tokens);
    uint64_t max_new = 0;
    if (request.max_tokens.has_value()) {
      max_new = *request.max_tokens;
    } else if (sizing.written_max_tokens.has_value()) {
      max_new = *sizing.written_max_tokens;
    } else if (engine_rule_for_chat) {
      if (tokens >= options.max_model_len) {
        return TooLong(options.max_model_len, tokens, 1);
      }
      max_new = options.max_model_len - tokens;
    } else {
      max_new = kCompletionsDefaultMaxTokens;
    }
    if (options.max_model_len > 0 &&
        (tokens > options.max_model_len ||
         max_new > options.max_model_len - tokens)) {
      return TooLong(options.max_model_len, tokens, max_new);
    }
    for (uint32_t i = 0; i < request.n; ++i) {
      sizing.sequences.push_back({tokens, max_new});
    }
  }
  return sizing;
}

absl::StatusOr<std::string> BodyWithMaxTokens(absl::string_view body,
                                              uint64_t max_tokens) {
  // ordered_json keeps the client's field order.
  nlohmann::ordered_json request =
      nlohmann::ordered_json::parse(body.begin(), body.end(), /*cb=*/nullptr,
                                    /*allow_exceptions=*/false);
  if (request.is_discarded() || !request.is_object()) {
    return absl::InvalidArgumentError("body: must be a JSON object");
  }
  request["max_tokens"] = max_tokens;
  // Replace, not throw, on invalid UTF-8 (the parser let it through).
  return request.dump(-1, ' ', false,
                      nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace kvgate
