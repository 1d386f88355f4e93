// The shared golden corpus of OpenAI request sizing
// (tests/golden/openai_sizing.json), run whole through the ext_proc gate:
// headers, then body, as an ext_proc stream asks. The Python middleware runs
// the same corpus (clients/python/tests/test_openai_sizing_golden.py), so
// both reserve the same memory for the same request.
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <variant>

#include "estimator/model_spec.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "plugin/ext_proc/ext_proc_gate.h"
#include "tests/testing/fake_clock.h"

#ifndef KVGATE_GOLDEN_DIR
#error "KVGATE_GOLDEN_DIR must name tests/golden (set by CMake)"
#endif

namespace kvgate {
namespace {

using Json = nlohmann::json;

const absl::Time kNow = absl::FromUnixSeconds(1700000000);

Json LoadCorpus() {
  const std::string path =
      std::string(KVGATE_GOLDEN_DIR) + "/openai_sizing.json";
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  Json corpus = Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  EXPECT_TRUE(in.good() && corpus.is_object()) << "cannot read " << path;
  return corpus;
}

// A registry with the one model "m" of the given context limit (0: none).
ModelRegistry Registry(uint64_t max_model_len, Clock* clock) {
  absl::StatusOr<ModelSpec> spec = LoadPreset("gpt2");
  EXPECT_TRUE(spec.ok()) << spec.status();
  spec->max_position_embeddings = 0;  // the limit is max_model_len alone
  ServingOptions serving;
  serving.max_model_len = max_model_len;
  absl::StatusOr<ServingModel> model =
      ServingModel::Create(*std::move(spec), serving);
  EXPECT_TRUE(model.ok()) << model.status();
  Controller::Options options;
  options.capacity_bytes = uint64_t{1} << 40;
  absl::StatusOr<std::unique_ptr<Controller>> controller =
      Controller::Create(options, clock);
  EXPECT_TRUE(controller.ok()) << controller.status();
  ModelPoolSettings settings{"m", *std::move(model), {}, 0.9, 0, false, {}};
  ModelRegistry registry;
  registry.Add(std::make_unique<ModelPool>(
      std::move(settings), options.capacity_bytes, *std::move(controller)));
  return registry;
}

ExtProcOptions Options(const Json& settings) {
  ExtProcOptions options;
  options.default_max_tokens =
      settings.at("default_max_tokens").get<uint32_t>();
  options.bytes_per_token = settings.at("bytes_per_token").get<double>();
  options.trust_token_count_header =
      settings.at("trust_token_count_header").get<bool>();
  return options;
}

// The gate's answer to a case: {"sequences", "max_tokens_written"} as the
// corpus writes them, or {"status"}; and the body forwarded, if rewritten.
std::pair<Json, std::optional<std::string>> Answer(const Json& test,
                                                   Clock* clock) {
  const Json& settings = test.at("settings");
  const ModelRegistry registry =
      Registry(settings.at("max_model_len").get<uint64_t>(), clock);
  const ExtProcGate gate(&registry, Options(settings));
  ExtProcHeaders headers;
  headers.path = test.at("endpoint") == "chat" ? "/v1/chat/completions"
                                               : "/v1/completions";
  headers.method = "POST";
  if (test.contains("token_count_header")) {
    headers.token_count = test.at("token_count_header").get<std::string>();
  }
  const HeadersVerdict h =
      gate.OnRequestHeaders(headers, {/*ready=*/true, /*draining=*/false});
  if (const HttpError* e = std::get_if<HttpError>(&h)) {
    return {Json{{"status", e->status}}, std::nullopt};
  }
  const std::string body = test.at("body").dump();
  BodyVerdict b =
      gate.OnRequestBody(std::get<GatedRequest>(h), body, "golden", kNow);
  if (const HttpError* e = std::get_if<HttpError>(&b)) {
    return {Json{{"status", e->status}}, std::nullopt};
  }
  ExtProcAdmit& admit = std::get<ExtProcAdmit>(b);
  Json sequences = Json::array();
  for (const SequenceShape& s : admit.sequences) {
    sequences.push_back({{"prompt_tokens", s.prompt_tokens},
                         {"max_new_tokens", s.max_new_tokens}});
  }
  Json written = nullptr;
  if (admit.body.has_value()) {
    const Json forwarded = Json::parse(*admit.body, nullptr, false);
    if (forwarded.is_object() && forwarded.contains("max_tokens")) {
      written = forwarded.at("max_tokens");
    }
  }
  return {Json{{"sequences", sequences}, {"max_tokens_written", written}},
          std::move(admit.body)};
}

TEST(OpenAiSizingGoldenTest, ExtProcGateAnswersEveryCase) {
  const Json corpus = LoadCorpus();
  ASSERT_TRUE(corpus.contains("cases"));
  ASSERT_GE(corpus.at("cases").size(), 20u);
  FakeClock clock;
  for (const Json& test : corpus.at("cases")) {
    SCOPED_TRACE(test.at("name").get<std::string>());
    const auto [answer, forwarded] = Answer(test, &clock);
    EXPECT_EQ(answer, test.at("expect")) << "got " << answer.dump();
    if (forwarded.has_value()) {
      // Every other field kept; only max_tokens set.
      Json expected = test.at("body");
      expected["max_tokens"] = test.at("expect").at("max_tokens_written");
      EXPECT_EQ(Json::parse(*forwarded), expected);
    }
  }
}

TEST(OpenAiSizingGoldenTest, RewrittenBodyKeepsTheFieldOrder) {
  FakeClock clock;
  const ModelRegistry registry = Registry(4096, &clock);
  ExtProcOptions options;
  options.default_max_tokens = 64;
  const ExtProcGate gate(&registry, options);
  ExtProcHeaders headers;
  headers.path = "/v1/completions";
  headers.method = "POST";
  const HeadersVerdict h =
      gate.OnRequestHeaders(headers, {/*ready=*/true, /*draining=*/false});
  BodyVerdict b = gate.OnRequestBody(
      std::get<GatedRequest>(h),
      R"({"prompt":"abcd","model":"m","temperature":0.25,"max_tokens":null})",
      "order", kNow);
  ASSERT_TRUE(std::holds_alternative<ExtProcAdmit>(b));
  EXPECT_EQ(
      std::get<ExtProcAdmit>(b).body,
      R"({"prompt":"abcd","model":"m","temperature":0.25,"max_tokens":64})");
}

}  // namespace
}  // namespace kvgate
