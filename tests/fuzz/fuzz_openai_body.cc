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
  return 0;
}
