#include "plugin/ext_proc/openai_request.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;

constexpr OpenAiEndpoint kChat = OpenAiEndpoint::kChatCompletions;
constexpr OpenAiEndpoint kCompletions = OpenAiEndpoint::kCompletions;

TEST(EndpointForPathTest, GatesOnlyCompletionPaths) {
  EXPECT_EQ(EndpointForPath("/v1/completions"), kCompletions);
  EXPECT_EQ(EndpointForPath("/v1/chat/completions?x=1"), kChat);
  EXPECT_EQ(EndpointForPath("/v1/chat/completions/"), kChat);
  EXPECT_EQ(EndpointForPath("/v1/models"), std::nullopt);
  EXPECT_EQ(EndpointForPath(""), std::nullopt);
}

TEST(ParseOpenAiRequestTest, ChatCountsRolesAndTextParts) {
  absl::StatusOr<OpenAiRequest> r = ParseOpenAiRequest(
      kChat, R"({"model":"m","max_completion_tokens":7,"max_tokens":99,"n":2,
      "stream":true,"messages":[{"role":"system","content":"abcd"},
      {"role":"user","content":[{"type":"text","text":"xy"},
      {"type":"image_url","image_url":{"url":"u"}}]},
      {"role":"assistant","content":null}]})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->model, "m");
  EXPECT_EQ(r->max_tokens, 7u);  // max_completion_tokens wins
  EXPECT_EQ(r->n, 2u);
  EXPECT_TRUE(r->stream);
  ASSERT_EQ(r->prompts.size(), 1u);
  // "system" + "abcd" + "user" + "xy" + "assistant"
  EXPECT_EQ(r->prompts[0].text_bytes, 6u + 4u + 2u + 9u + 4u);
  EXPECT_EQ(r->prompts[0].template_tokens, 3 * kChatTokensPerMessage);
}

TEST(ParseOpenAiRequestTest, ToolsAndToolCallsCountTheirKeysAndStrings) {
  // Chat templates render both into the prompt; numbers and JSON
  // punctuation are not counted.
  absl::StatusOr<OpenAiRequest> r = ParseOpenAiRequest(
      kChat, R"({"model":"m","tools":[{"type":"function","n":3}],
      "messages":[{"role":"assistant","content":null,
      "tool_calls":[{"id":"c1","function":{"arguments":"{}"}}]}]})");
  ASSERT_TRUE(r.ok()) << r.status();
  // tools: "type" "function" "n"; tool_calls: "id" "c1" "function"
  // "arguments" "{}"; role "assistant".
  EXPECT_EQ(r->prompts[0].text_bytes,
            (4u + 8u + 1u) + (2u + 2u + 8u + 9u + 2u) + 9u);
}

TEST(ParseOpenAiRequestTest, MaxTokensOfZeroIsRefused) {
  for (const char* body :
       {R"({"model":"m","prompt":"x","max_tokens":0})",
        R"({"model":"m","prompt":"x","max_completion_tokens":0})"}) {
    absl::StatusOr<OpenAiRequest> r = ParseOpenAiRequest(kCompletions, body);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << body;
    EXPECT_THAT(std::string(r.status().message()),
                ::testing::HasSubstr("must be at least 1"));
  }
}

TEST(ParseOpenAiRequestTest, CompletionPromptForms) {
  absl::StatusOr<OpenAiRequest> r =
      ParseOpenAiRequest(kCompletions, R"({"model":"m","prompt":"hello"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->max_tokens, std::nullopt);
  EXPECT_EQ(r->n, 1u);
  ASSERT_EQ(r->prompts.size(), 1u);
  EXPECT_EQ(r->prompts[0].text_bytes, 5u);

  r = ParseOpenAiRequest(kCompletions, R"({"model":"m","prompt":[1,2,3]})");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->prompts.size(), 1u);
  EXPECT_EQ(r->prompts[0].token_ids, 3u);

  r = ParseOpenAiRequest(kCompletions,
                         R"({"model":"m","prompt":["ab",[5,6],"cde"]})");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->prompts.size(), 3u);
  EXPECT_EQ(r->prompts[0].text_bytes, 2u);
  EXPECT_EQ(r->prompts[1].token_ids, 2u);
  EXPECT_EQ(r->prompts[2].text_bytes, 3u);
}

TEST(ParseOpenAiRequestTest, ErrorsNameTheField) {
  struct Case {
    OpenAiEndpoint endpoint;
    const char* body;
    const char* field;
  };
  const Case cases[] = {
      {kChat, "not json", "JSON"},
      {kChat, "[1,2]", "object"},
      {kChat, R"({"messages":[]})", "model"},
      {kChat, R"({"model":"","messages":[]})", "model"},
      {kChat, R"({"model":"m"})", "messages"},
      {kChat, R"({"model":"m","messages":[{"content":5}]})", "content"},
      {kCompletions, R"({"model":"m"})", "prompt"},
      {kCompletions, R"({"model":"m","prompt":[{}]})", "prompt[0]"},
      {kCompletions, R"({"model":"m","prompt":"x","max_tokens":-1})",
       "max_tokens"},
      {kCompletions, R"({"model":"m","prompt":"x","max_tokens":1.5})",
       "max_tokens"},
      {kCompletions, R"({"model":"m","prompt":"x","max_tokens":1e30})",
       "max_tokens"},
      {kCompletions, R"({"model":"m","prompt":"x","n":0})", "n"},
      {kCompletions, R"({"model":"m","prompt":"x","n":100000})", "n"},
      {kCompletions, R"({"model":"m","prompt":"x","stream":"yes"})", "stream"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<OpenAiRequest> r = ParseOpenAiRequest(c.endpoint, c.body);
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr(c.field)) << c.body;
  }
}

TEST(ParseOpenAiRequestTest, DeepNestingIsRejectedBeforeParsing) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  absl::StatusOr<OpenAiRequest> r = ParseOpenAiRequest(kCompletions, deep);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("nested"));
  // Brackets inside strings do not count.
  r = ParseOpenAiRequest(kCompletions, "{\"model\":\"m\",\"prompt\":\"" +
                                           std::string(1000, '[') + "\\\"\"}");
  EXPECT_TRUE(r.ok()) << r.status();
}

}  // namespace
}  // namespace kvgate
