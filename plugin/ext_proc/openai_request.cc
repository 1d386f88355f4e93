#include "plugin/ext_proc/openai_request.h"

#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace kvgate {
namespace {

using Json = nlohmann::json;

absl::Status Invalid(absl::string_view message) {
  return absl::InvalidArgumentError(message);
}

// The deepest nesting of arrays and objects in `body`, counting brackets
// outside strings, stopping once it exceeds `limit`. nlohmann's parser
// recurses once per level, so this bounds its stack.
bool NestingWithin(absl::string_view body, int limit) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : body) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

// A non-negative integer field of at most `max`; nullopt when absent or null.
absl::StatusOr<std::optional<uint64_t>> Count(const Json& object,
                                              const char* field, uint64_t max) {
  const auto it = object.find(field);
  if (it == object.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer() ||
      (!it->is_number_unsigned() && it->get<int64_t>() < 0)) {
    return Invalid(absl::StrCat(field, ": must be a non-negative integer"));
  }
  const uint64_t value = it->get<uint64_t>();
  if (value > max) {
    return Invalid(
        absl::StrCat(field, ": ", value, " exceeds the limit of ", max));
  }
  return value;
}

// Bytes of text in a chat message's content: a string, or a list of parts
// whose `text` strings count (images and audio are not sized here).
absl::StatusOr<uint64_t> ContentBytes(const Json& content, size_t index) {
  if (content.is_null()) return 0;  // e.g. an assistant message with tool calls
  if (content.is_string()) return content.get_ref<const std::string&>().size();
  if (!content.is_array()) {
    return Invalid(absl::StrCat(
        "messages[", index, "].content: must be a string or a list of parts"));
  }
  uint64_t bytes = 0;
  for (const Json& part : content) {
    if (!part.is_object()) {
      return Invalid(absl::StrCat("messages[", index,
                                  "].content: each part must be an object"));
    }
    const auto text = part.find("text");
    if (text != part.end() && text->is_string()) {
      bytes += text->get_ref<const std::string&>().size();
    }
  }
  return bytes;
}

// Bytes of every key and string value in `value` (tool definitions, tool
// calls): the text a chat template renders into the prompt. Recursion is
// bounded by OpenAiParseLimits::max_depth, checked before parsing.
uint64_t StringBytes(const Json& value) {
  if (value.is_string()) return value.get_ref<const std::string&>().size();
  uint64_t bytes = 0;
  if (value.is_object()) {
    for (const auto& [key, item] : value.items()) {
      bytes += key.size() + StringBytes(item);
    }
  } else if (value.is_array()) {
    for (const Json& item : value) bytes += StringBytes(item);
  }
  return bytes;
}

absl::Status ReadMessages(const Json& request, OpenAiRequest& out) {
  const auto messages = request.find("messages");
  if (messages == request.end()) return Invalid("messages: is required");
  if (!messages->is_array() || messages->empty()) {
    return Invalid("messages: must be a non-empty list");
  }
  PromptSize prompt;
  for (size_t i = 0; i < messages->size(); ++i) {
    const Json& message = (*messages)[i];
    if (!message.is_object()) {
      return Invalid(absl::StrCat("messages[", i, "]: must be an object"));
    }
    const auto role = message.find("role");
    if (role != message.end() && role->is_string()) {
      prompt.text_bytes += role->get_ref<const std::string&>().size();
    }
    prompt.template_tokens += kChatTokensPerMessage;
    const auto tool_calls = message.find("tool_calls");
    if (tool_calls != message.end()) {
      prompt.text_bytes += StringBytes(*tool_calls);
    }
    const auto content = message.find("content");
    if (content == message.end()) continue;
    absl::StatusOr<uint64_t> bytes = ContentBytes(*content, i);
    if (!bytes.ok()) return bytes.status();
    prompt.text_bytes += *bytes;
  }
  const auto tools = request.find("tools");
  if (tools != request.end()) prompt.text_bytes += StringBytes(*tools);
  out.prompts.push_back(prompt);
  return absl::OkStatus();
}

bool IsTokenIdList(const Json& value) {
  if (!value.is_array() || value.empty()) return false;
  for (const Json& id : value) {
    if (!id.is_number_integer()) return false;
  }
  return true;
}

absl::Status ReadPrompt(const Json& request, const OpenAiParseLimits& limits,
                        OpenAiRequest& out) {
  const auto prompt = request.find("prompt");
  if (prompt == request.end() || prompt->is_null()) {
    return Invalid("prompt: is required");
  }
  if (prompt->is_string()) {
    out.prompts.push_back(
        {prompt->get_ref<const std::string&>().size(), 0, {}});
    return absl::OkStatus();
  }
  if (IsTokenIdList(*prompt)) {
    out.prompts.push_back({0, 0, prompt->size()});
    return absl::OkStatus();
  }
  if (!prompt->is_array() || prompt->empty()) {
    return Invalid(
        "prompt: must be a string, a list of strings, a list of token ids or "
        "a list of token-id lists");
  }
  if (prompt->size() > limits.max_prompts) {
    return Invalid(absl::StrCat("prompt: ", prompt->size(),
                                " prompts exceed the limit of ",
                                limits.max_prompts));
  }
  for (size_t i = 0; i < prompt->size(); ++i) {
    const Json& item = (*prompt)[i];
    if (item.is_string()) {
      out.prompts.push_back({item.get_ref<const std::string&>().size(), 0, {}});
    } else if (IsTokenIdList(item)) {
      out.prompts.push_back({0, 0, item.size()});
    } else {
      return Invalid(
          absl::StrCat("prompt[", i,
                       "]: must be a string or a non-empty list of token ids"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::optional<OpenAiEndpoint> EndpointForPath(absl::string_view path) {
  const size_t query = path.find('?');
  if (query != absl::string_view::npos) path = path.substr(0, query);
  if (absl::EndsWith(path, "/")) path.remove_suffix(1);
  if (path == "/v1/completions") return OpenAiEndpoint::kCompletions;
  if (path == "/v1/chat/completions") return OpenAiEndpoint::kChatCompletions;
  return std::nullopt;
}

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(
    OpenAiEndpoint endpoint, absl::string_view body,
    const OpenAiParseLimits& limits) {
  if (!NestingWithin(body, limits.max_depth)) {
    return Invalid(absl::StrCat("body: JSON nested deeper than ",
                                limits.max_depth, " levels"));
  }
  const Json request = Json::parse(body.begin(), body.end(), /*cb=*/nullptr,
                                   /*allow_exceptions=*/false);
  if (request.is_discarded()) return Invalid("body: is not valid JSON");
  if (!request.is_object()) return Invalid("body: must be a JSON object");

  OpenAiRequest out;
  const auto model = request.find("model");
  if (model == request.end() || !model->is_string() ||
      model->get_ref<const std::string&>().empty()) {
    return Invalid("model: is required (a non-empty string)");
  }
  out.model = model->get<std::string>();

  constexpr uint64_t kMaxTokens = std::numeric_limits<uint32_t>::max();
  absl::StatusOr<std::optional<uint64_t>> max_completion =
      Count(request, "max_completion_tokens", kMaxTokens);
  if (!max_completion.ok()) return max_completion.status();
  absl::StatusOr<std::optional<uint64_t>> max_tokens =
      Count(request, "max_tokens", kMaxTokens);
  if (!max_tokens.ok()) return max_tokens.status();
  out.max_tokens = max_completion->has_value() ? *max_completion : *max_tokens;
  if (*max_completion == uint64_t{0} || *max_tokens == uint64_t{0}) {
    return Invalid(absl::StrCat(
        *max_completion == uint64_t{0} ? "max_completion_tokens" : "max_tokens",
        ": must be at least 1"));
  }

  absl::StatusOr<std::optional<uint64_t>> n = Count(request, "n", limits.max_n);
  if (!n.ok()) return n.status();
  if (n->has_value()) {
    if (**n == 0) return Invalid("n: must be at least 1");
    out.n = static_cast<uint32_t>(**n);
  }

  const auto stream = request.find("stream");
  if (stream != request.end() && !stream->is_null()) {
    if (!stream->is_boolean()) return Invalid("stream: must be true or false");
    out.stream = stream->get<bool>();
  }

  const absl::Status prompt = endpoint == OpenAiEndpoint::kChatCompletions
                                  ? ReadMessages(request, out)
                                  : ReadPrompt(request, limits, out);
  if (!prompt.ok()) return prompt;
  return out;
}

}  // namespace kvgate
