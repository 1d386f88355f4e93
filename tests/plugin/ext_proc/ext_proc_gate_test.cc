// Tests of ExtProcGate: every answer an ext_proc stream gives on a
// request's headers and body (pass through, read the body, admit with a
// sized ticket, or an immediate HTTP error), without gRPC.
#include "plugin/ext_proc/ext_proc_gate.h"

#include <memory>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "estimator/model_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/fake_clock.h"

namespace kvgate {

// For ElementsAre over ExtProcAdmit::sequences (found by argument-dependent
// lookup, hence outside the anonymous namespace).
bool operator==(const SequenceShape& a, const SequenceShape& b) {
  return a.prompt_tokens == b.prompt_tokens &&
         a.max_new_tokens == b.max_new_tokens;
}
void PrintTo(const SequenceShape& s, std::ostream* os) {
  *os << "{" << s.prompt_tokens << ", " << s.max_new_tokens << "}";
}

namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const absl::Time kNow = absl::FromUnixSeconds(1700000000);
constexpr ServingState kServing{/*ready=*/true, /*draining=*/false};

std::unique_ptr<ModelPool> Pool(const std::string& name, Clock* clock) {
  absl::StatusOr<ModelSpec> spec = LoadPreset("gpt2");
  EXPECT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<ServingModel> model = ServingModel::Create(*spec, {});
  EXPECT_TRUE(model.ok()) << model.status();
  Controller::Options options;
  options.capacity_bytes = uint64_t{1} << 30;
  absl::StatusOr<std::unique_ptr<Controller>> controller =
      Controller::Create(options, clock);
  EXPECT_TRUE(controller.ok()) << controller.status();
  ModelPoolSettings settings{name, *std::move(model), {}, 0.9, 0, false, {}};
  return std::make_unique<ModelPool>(
      std::move(settings), options.capacity_bytes, *std::move(controller));
}

class ExtProcGateTest : public ::testing::Test {
 protected:
  ExtProcGateTest() {
    registry_.Add(Pool("gpt2", &clock_));
    registry_.Add(Pool("other", &clock_));
  }

  ExtProcGate Gate(ExtProcOptions options = {}) const {
    return ExtProcGate(&registry_, std::move(options));
  }

  // Options that trust the token-count header (off by default).
  static ExtProcOptions Trusting() {
    ExtProcOptions options;
    options.trust_token_count_header = true;
    return options;
  }

  // A POST to `path`, with no other header.
  static ExtProcHeaders Post(const std::string& path = "/v1/completions") {
    ExtProcHeaders headers;
    headers.path = path;
    headers.method = "POST";
    return headers;
  }

  // The headers' verdict, expected to be a GatedRequest.
  static GatedRequest Gated(const ExtProcGate& gate,
                            const ExtProcHeaders& headers) {
    HeadersVerdict verdict = gate.OnRequestHeaders(headers, kServing);
    EXPECT_TRUE(std::holds_alternative<GatedRequest>(verdict));
    if (!std::holds_alternative<GatedRequest>(verdict)) return {};
    return std::get<GatedRequest>(std::move(verdict));
  }

  // The headers' verdict, expected to be an HttpError.
  static HttpError HeadersError(const ExtProcGate& gate,
                                const ExtProcHeaders& headers,
                                ServingState state = kServing) {
    HeadersVerdict verdict = gate.OnRequestHeaders(headers, state);
    EXPECT_TRUE(std::holds_alternative<HttpError>(verdict));
    if (!std::holds_alternative<HttpError>(verdict)) return {};
    return std::get<HttpError>(std::move(verdict));
  }

  static ExtProcAdmit Admit(const ExtProcGate& gate,
                            const GatedRequest& request,
                            const std::string& body) {
    BodyVerdict verdict = gate.OnRequestBody(request, body, "id-1", kNow);
    if (const HttpError* error = std::get_if<HttpError>(&verdict)) {
      ADD_FAILURE() << error->status << " " << error->message;
      return {};
    }
    return std::get<ExtProcAdmit>(std::move(verdict));
  }

  static HttpError BodyError(const ExtProcGate& gate,
                             const GatedRequest& request,
                             const std::string& body) {
    BodyVerdict verdict = gate.OnRequestBody(request, body, "id-1", kNow);
    EXPECT_TRUE(std::holds_alternative<HttpError>(verdict));
    if (!std::holds_alternative<HttpError>(verdict)) return {};
    return std::get<HttpError>(std::move(verdict));
  }

  BatchEstimate Estimate(const std::vector<SequenceShape>& shapes) const {
    BatchEstimate estimate;
    EXPECT_TRUE(
        registry_.Find("gpt2")->model().EstimateBatch(shapes, &estimate).ok());
    return estimate;
  }

  FakeClock clock_;
  ModelRegistry registry_;
};

// --- ReadRequestHeaders ---------------------------------------------------

envoy::service::ext_proc::v3::HttpHeaders Headers(
    const std::vector<std::pair<std::string, std::string>>& raw,
    bool end_of_stream = false) {
  envoy::service::ext_proc::v3::HttpHeaders headers;
  for (const auto& [key, value] : raw) {
    auto* h = headers.mutable_headers()->add_headers();
    h->set_key(key);
    h->set_raw_value(value);
  }
  headers.set_end_of_stream(end_of_stream);
  return headers;
}

TEST(ReadRequestHeadersTest, PicksTheConfiguredHeaders) {
  ExtProcOptions options;
  options.tenant_header = "x-team";
  options.priority_header = "x-prio";
  options.token_count_header = "x-tokens";
  const ExtProcHeaders h =
      ReadRequestHeaders(Headers({{":method", "POST"},
                                  {":path", "/v1/completions"},
                                  {"x-team", "a"},
                                  {"x-prio", "critical"},
                                  {"x-tokens", "12"},
                                  {"x-kvgate-tenant", "ignored"},
                                  {"content-length", "34"}},
                                 /*end_of_stream=*/true),
                         options);
  EXPECT_EQ(h.method, "POST");
  EXPECT_EQ(h.path, "/v1/completions");
  EXPECT_EQ(h.tenant, "a");
  EXPECT_EQ(h.priority, "critical");
  EXPECT_EQ(h.token_count, "12");
  EXPECT_EQ(h.content_length, "34");
  EXPECT_TRUE(h.end_of_stream);
}

TEST(ReadRequestHeadersTest, RawValueFirstThenValueAndLastRepeatWins) {
  envoy::service::ext_proc::v3::HttpHeaders headers;
  auto* a = headers.mutable_headers()->add_headers();
  a->set_key("x-kvgate-tenant");
  a->set_value("from-value");
  auto* b = headers.mutable_headers()->add_headers();
  b->set_key(":path");
  b->set_value("/ignored");
  b->set_raw_value("/v1/chat/completions");
  EXPECT_EQ(ReadRequestHeaders(headers, {}).tenant, "from-value");
  EXPECT_EQ(ReadRequestHeaders(headers, {}).path, "/v1/chat/completions");

  auto* c = headers.mutable_headers()->add_headers();
  c->set_key("x-kvgate-tenant");
  c->set_raw_value("second");
  EXPECT_EQ(ReadRequestHeaders(headers, {}).tenant, "second");
  EXPECT_FALSE(ReadRequestHeaders(headers, {}).end_of_stream);
}

// --- OnRequestHeaders -----------------------------------------------------

TEST_F(ExtProcGateTest, UngatedRequestsPassThrough) {
  const ExtProcGate gate = Gate();
  ExtProcHeaders other_path = Post("/v1/models");
  ExtProcHeaders get = Post();
  get.method = "GET";
  ExtProcHeaders bodiless_get = Post();
  bodiless_get.method = "GET";
  bodiless_get.end_of_stream = true;
  for (const ExtProcHeaders& h : {other_path, get, bodiless_get}) {
    EXPECT_TRUE(
        std::holds_alternative<PassThrough>(gate.OnRequestHeaders(h, kServing)))
        << h.method << " " << h.path;
    // Not gated, so neither readiness nor draining matters.
    EXPECT_TRUE(std::holds_alternative<PassThrough>(
        gate.OnRequestHeaders(h, {/*ready=*/false, /*draining=*/true})));
  }
}

// A POST to a gated path with no body (end_of_stream on the headers) is
// refused as an empty body is, not forwarded ungated.
TEST_F(ExtProcGateTest, BodilessPostIs400LikeAnEmptyBody) {
  const ExtProcGate gate = Gate();
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    ExtProcHeaders bodiless = Post(path);
    bodiless.end_of_stream = true;
    HeadersVerdict verdict = gate.OnRequestHeaders(bodiless, kServing);
    ASSERT_TRUE(std::holds_alternative<HttpError>(verdict)) << path;
    const HttpError& e = std::get<HttpError>(verdict);
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.code, "INVALID_REQUEST");
    EXPECT_EQ(e.message, BodyError(gate, Gated(gate, Post(path)), "").message);
  }
}

TEST_F(ExtProcGateTest, GatedPathsWithQueryOrTrailingSlash) {
  const ExtProcGate gate = Gate();
  EXPECT_EQ(Gated(gate, Post("/v1/completions?x=1")).endpoint,
            OpenAiEndpoint::kCompletions);
  EXPECT_EQ(Gated(gate, Post("/v1/chat/completions/")).endpoint,
            OpenAiEndpoint::kChatCompletions);
}

TEST_F(ExtProcGateTest, NotReadyThenDrainingAre503WithRetryAfter) {
  const ExtProcGate gate = Gate();
  HttpError e = HeadersError(gate, Post(),
                             {/*ready=*/false,
                              /*draining=*/true});
  EXPECT_EQ(e.status, 503);
  EXPECT_EQ(e.type, "service_unavailable");
  EXPECT_EQ(e.code, "NOT_READY");
  EXPECT_EQ(e.retry_after, absl::Seconds(1));

  e = HeadersError(gate, Post(), {/*ready=*/true, /*draining=*/true});
  EXPECT_EQ(e.status, 503);
  EXPECT_EQ(e.code, "DRAINING");
  EXPECT_EQ(e.retry_after, absl::Seconds(1));
}

TEST_F(ExtProcGateTest, DefaultsWithoutHeaders) {
  const GatedRequest r = Gated(Gate(), Post("/v1/chat/completions"));
  EXPECT_EQ(r.endpoint, OpenAiEndpoint::kChatCompletions);
  EXPECT_EQ(r.tenant, "");
  EXPECT_EQ(r.priority, Priority::kStandard);
  EXPECT_FALSE(r.token_count.has_value());
}

TEST_F(ExtProcGateTest, TenantUpTo128Bytes) {
  const ExtProcGate gate = Gate();
  ExtProcHeaders h = Post();
  h.tenant = std::string(128, 't');
  EXPECT_EQ(Gated(gate, h).tenant, h.tenant);
  h.tenant += "t";
  const HttpError e = HeadersError(gate, h);
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "INVALID_REQUEST");
  EXPECT_EQ(e.type, "invalid_request_error");
  EXPECT_EQ(e.message, "x-kvgate-tenant: at most 128 bytes");
  EXPECT_EQ(e.retry_after, absl::ZeroDuration());
}

TEST_F(ExtProcGateTest, PriorityIsCaseInsensitive) {
  const ExtProcGate gate = Gate();
  ExtProcHeaders h = Post();
  h.priority = "CRITICAL";
  EXPECT_EQ(Gated(gate, h).priority, Priority::kCritical);
  h.priority = "Standard";
  EXPECT_EQ(Gated(gate, h).priority, Priority::kStandard);
  h.priority = "sheddable";
  EXPECT_EQ(Gated(gate, h).priority, Priority::kSheddable);
  h.priority = "urgent";
  const HttpError e = HeadersError(gate, h);
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.message,
            "x-kvgate-priority: must be critical, standard or sheddable");
}

TEST_F(ExtProcGateTest, ErrorsNameTheConfiguredHeader) {
  ExtProcOptions options = Trusting();
  options.priority_header = "x-prio";
  options.token_count_header = "x-tokens";
  const ExtProcGate gate = Gate(options);
  ExtProcHeaders h = Post();
  h.priority = "high";
  EXPECT_THAT(HeadersError(gate, h).message, HasSubstr("x-prio:"));
  h.priority = "";
  h.token_count = "many";
  EXPECT_THAT(HeadersError(gate, h).message, HasSubstr("x-tokens:"));
}

TEST_F(ExtProcGateTest, TokenCountMustBeAUint32) {
  const ExtProcGate gate = Gate(Trusting());
  ExtProcHeaders h = Post();
  h.token_count = "4294967295";
  EXPECT_EQ(Gated(gate, h).token_count, uint64_t{4294967295});
  for (const char* bad : {"abc", "-1", "1.5", "4294967296"}) {
    h.token_count = bad;
    const HttpError e = HeadersError(gate, h);
    EXPECT_EQ(e.status, 400) << bad;
    EXPECT_EQ(e.message, "x-kvgate-prompt-tokens: must be a token count");
  }
}

TEST_F(ExtProcGateTest, ContentLengthOverTheLimitIs413) {
  ExtProcOptions options;
  options.max_body_bytes = 1000;
  const ExtProcGate gate = Gate(options);
  ExtProcHeaders h = Post();
  h.content_length = "1000";
  Gated(gate, h);
  h.content_length = "not a number";  // ignored; the body is counted instead
  Gated(gate, h);
  h.content_length = "1001";
  const HttpError e = HeadersError(gate, h);
  EXPECT_EQ(e.status, 413);
  EXPECT_EQ(e.code, "BODY_TOO_LARGE");
  EXPECT_EQ(e.message, "request body exceeds 1000 bytes");
}

TEST_F(ExtProcGateTest, ChecksInOrder) {
  const ExtProcGate gate = Gate(Trusting());
  ExtProcHeaders h = Post();
  h.tenant = std::string(200, 't');
  h.priority = "urgent";
  h.token_count = "x";
  h.content_length = "999999999999";
  EXPECT_EQ(HeadersError(gate, h, {false, true}).code, "NOT_READY");
  EXPECT_EQ(HeadersError(gate, h, {true, true}).code, "DRAINING");
  EXPECT_THAT(HeadersError(gate, h).message, HasSubstr("tenant"));
  h.tenant = "";
  EXPECT_THAT(HeadersError(gate, h).message, HasSubstr("priority"));
  h.priority = "";
  EXPECT_THAT(HeadersError(gate, h).message, HasSubstr("prompt-tokens"));
  h.token_count = "";
  EXPECT_EQ(HeadersError(gate, h).status, 413);
}

// --- OnBodyChunk ----------------------------------------------------------

TEST_F(ExtProcGateTest, BodyChunksUpToMaxBodyBytes) {
  ExtProcOptions options;
  options.max_body_bytes = 100;
  const ExtProcGate gate = Gate(options);
  EXPECT_FALSE(gate.OnBodyChunk(0, 100).has_value());
  EXPECT_FALSE(gate.OnBodyChunk(60, 40).has_value());
  EXPECT_FALSE(gate.OnBodyChunk(100, 0).has_value());
  const std::optional<HttpError> e = gate.OnBodyChunk(60, 41);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->status, 413);
  EXPECT_EQ(e->code, "BODY_TOO_LARGE");
  EXPECT_TRUE(gate.OnBodyChunk(0, 101).has_value());
}

// --- OnRequestBody: rejections --------------------------------------------

TEST_F(ExtProcGateTest, MalformedBodiesAre400WithTheParserMessage) {
  const ExtProcGate gate = Gate();
  const GatedRequest completions = Gated(gate, Post());
  HttpError e = BodyError(gate, completions, "not json");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "INVALID_REQUEST");
  EXPECT_EQ(e.message, "body: is not valid JSON");
  e = BodyError(gate, completions, R"({"prompt":"hi"})");
  EXPECT_EQ(e.status, 400);
  EXPECT_THAT(e.message, HasSubstr("model: is required"));
  e = BodyError(gate, Gated(gate, Post("/v1/chat/completions")),
                R"({"model":"gpt2","prompt":"chat needs messages"})");
  EXPECT_EQ(e.status, 400);
  EXPECT_THAT(e.message, HasSubstr("messages: is required"));
}

TEST_F(ExtProcGateTest, UnknownModelIs404ListsTheServedOnesAndQuotesAtMost128) {
  const ExtProcGate gate = Gate();
  const GatedRequest r = Gated(gate, Post());
  HttpError e = BodyError(gate, r, R"({"model":"llama","prompt":"hi"})");
  EXPECT_EQ(e.status, 404);
  EXPECT_EQ(e.type, "invalid_request_error");
  EXPECT_EQ(e.code, "MODEL_NOT_FOUND");
  EXPECT_EQ(e.message,
            "The model 'llama' is not served here; served models: 'gpt2', "
            "'other'");
  EXPECT_EQ(e.retry_after, absl::ZeroDuration());

  const std::string long_name(300, 'm');
  e = BodyError(gate, r,
                nlohmann::json{{"model", long_name}, {"prompt", "hi"}}.dump());
  EXPECT_EQ(e.message, absl::StrCat("The model '", std::string(128, 'm'),
                                    "' is not served here; served models: "
                                    "'gpt2', 'other'"));
}

TEST_F(ExtProcGateTest, TooManySequencesIs400) {
  ExtProcOptions options;
  options.max_sequences = 4;
  const ExtProcGate gate = Gate(options);
  const GatedRequest r = Gated(gate, Post());
  Admit(gate, r, R"({"model":"gpt2","prompt":["a","b"],"n":2})");
  const HttpError e =
      BodyError(gate, r, R"({"model":"gpt2","prompt":["a","b","c"],"n":2})");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.message, "n x prompts: 6 sequences exceed the limit of 4");
}

TEST_F(ExtProcGateTest, OverTheModelsContextIs400) {
  // gpt2's context is 1024 tokens.
  const ExtProcGate gate = Gate(Trusting());
  ExtProcHeaders h = Post();
  h.token_count = "1000";
  const HttpError e =
      BodyError(gate, Gated(gate, h),
                R"({"model":"gpt2","prompt":"x","max_tokens":100})");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "INVALID_REQUEST");
  EXPECT_EQ(e.message,
            "This model's maximum context length is 1024 tokens. However, you "
            "requested 1100 tokens (1000 in the prompt, 100 in the "
            "completion). Please reduce the prompt or max_tokens.");
}

// --- OnRequestBody: the ticket and its sizing -----------------------------

TEST_F(ExtProcGateTest, TicketCarriesIdTenantPriorityCostAndDeadline) {
  ExtProcOptions options = Trusting();
  options.max_hold = absl::Seconds(7);
  const ExtProcGate gate = Gate(options);
  ExtProcHeaders h = Post("/v1/chat/completions");
  h.tenant = "team-a";
  h.priority = "sheddable";
  h.token_count = "100";
  const GatedRequest r = Gated(gate, h);
  BodyVerdict verdict = gate.OnRequestBody(
      r,
      R"({"model":"other","messages":[{"role":"user","content":"hi"}],
          "max_tokens":28})",
      "extproc-7", kNow);
  ASSERT_TRUE(std::holds_alternative<ExtProcAdmit>(verdict));
  const ExtProcAdmit& admit = std::get<ExtProcAdmit>(verdict);
  EXPECT_EQ(admit.pool, registry_.Find("other"));
  EXPECT_EQ(admit.ticket.request_id, "extproc-7");
  EXPECT_EQ(admit.ticket.tenant, "team-a");
  EXPECT_EQ(admit.ticket.priority, Priority::kSheddable);
  EXPECT_EQ(admit.ticket.deadline, kNow + absl::Seconds(7));
  EXPECT_THAT(admit.sequences, ElementsAre(SequenceShape{100, 28}));
  const BatchEstimate expected = Estimate({{100, 28}});
  EXPECT_EQ(admit.ticket.cost.kv_bytes, expected.kv_cache_bytes);
  EXPECT_EQ(admit.ticket.cost.activation_bytes, expected.activation_bytes);
  EXPECT_GT(admit.ticket.cost.kv_bytes, 0u);
}

TEST_F(ExtProcGateTest, MaxNewTokensFromTheBodyElseTheConfiguredDefault) {
  ExtProcOptions options = Trusting();
  options.default_max_tokens = 64;
  const ExtProcGate gate = Gate(options);
  ExtProcHeaders h = Post();
  h.token_count = "10";
  const GatedRequest r = Gated(gate, h);
  const ExtProcAdmit defaulted =
      Admit(gate, r, R"({"model":"gpt2","prompt":"x"})");
  EXPECT_THAT(defaulted.sequences, ElementsAre(SequenceShape{10, 64}));
  // The default is written into the forwarded body.
  EXPECT_EQ(defaulted.body, R"({"model":"gpt2","prompt":"x","max_tokens":64})");
  EXPECT_THAT(
      Admit(gate, r, R"({"model":"gpt2","prompt":"x","max_tokens":null})")
          .sequences,
      ElementsAre(SequenceShape{10, 64}));
  // A request with its own max goes upstream unchanged.
  EXPECT_EQ(
      Admit(gate, r, R"({"model":"gpt2","prompt":"x","max_tokens":5})").body,
      std::nullopt);
  EXPECT_THAT(Admit(gate, r, R"({"model":"gpt2","prompt":"x","max_tokens":5})")
                  .sequences,
              ElementsAre(SequenceShape{10, 5}));
  EXPECT_THAT(
      Admit(gate, r,
            R"({"model":"gpt2","prompt":"x","max_completion_tokens":7})")
          .sequences,
      ElementsAre(SequenceShape{10, 7}));
  // max_completion_tokens wins over max_tokens.
  EXPECT_THAT(Admit(gate, r,
                    R"({"model":"gpt2","prompt":"x","max_tokens":5,
                        "max_completion_tokens":9})")
                  .sequences,
              ElementsAre(SequenceShape{10, 9}));
}

TEST_F(ExtProcGateTest, WithoutADefaultMaxTokensTheEnginesRuleApplies) {
  // gpt2's context is 1024 tokens: chat gets the rest of it (vLLM), legacy
  // completions 16 (the OpenAI default); the body is forwarded unchanged.
  const ExtProcGate gate = Gate(Trusting());
  ExtProcHeaders h = Post();
  h.token_count = "10";
  const ExtProcAdmit completion =
      Admit(gate, Gated(gate, h), R"({"model":"gpt2","prompt":"x"})");
  EXPECT_THAT(completion.sequences, ElementsAre(SequenceShape{10, 16}));
  EXPECT_EQ(completion.body, std::nullopt);
  h.path = "/v1/chat/completions";
  const ExtProcAdmit chat =
      Admit(gate, Gated(gate, h),
            R"({"model":"gpt2","messages":[{"role":"user","content":"x"}]})");
  EXPECT_THAT(chat.sequences, ElementsAre(SequenceShape{10, 1014}));
  EXPECT_EQ(chat.body, std::nullopt);
}

TEST_F(ExtProcGateTest, UntrustedTokenCountHeaderIsIgnored) {
  // Default: kvgated counts the prompt itself, whatever the client claims.
  const ExtProcGate gate = Gate();
  ExtProcHeaders h = Post();
  h.token_count = "1";
  const GatedRequest r = Gated(gate, h);
  EXPECT_FALSE(r.token_count.has_value());
  EXPECT_THAT(Admit(gate, r, R"({"model":"gpt2","prompt":"0123456789abcdef",
                         "max_tokens":1})")
                  .sequences,
              ElementsAre(SequenceShape{4, 1}));
  h.token_count = "not a number";  // not read, so not an error
  Gated(gate, h);
}

TEST_F(ExtProcGateTest, PromptTokensFromTextBytes) {
  ExtProcOptions options;
  options.bytes_per_token = 4.0;
  const ExtProcGate gate = Gate(options);
  const GatedRequest r = Gated(gate, Post());
  // 10 bytes / 4 = 2.5, rounded up.
  EXPECT_THAT(
      Admit(gate, r, R"({"model":"gpt2","prompt":"0123456789","max_tokens":1})")
          .sequences,
      ElementsAre(SequenceShape{3, 1}));
  // An empty prompt counts as one token.
  EXPECT_THAT(Admit(gate, r, R"({"model":"gpt2","prompt":"","max_tokens":1})")
                  .sequences,
              ElementsAre(SequenceShape{1, 1}));
  // Chat: the roles' and contents' bytes together ("user" + 12 = 16 -> 4),
  // plus 5 template tokens per message.
  EXPECT_THAT(Admit(gate, Gated(gate, Post("/v1/chat/completions")),
                    R"({"model":"gpt2","max_tokens":1,
                        "messages":[{"role":"user","content":"0123456789ab"}]})")
                  .sequences,
              ElementsAre(SequenceShape{9, 1}));
}

TEST_F(ExtProcGateTest, PromptTokensFromTokenIds) {
  const ExtProcGate gate = Gate();
  EXPECT_THAT(Admit(gate, Gated(gate, Post()),
                    R"({"model":"gpt2","prompt":[[1,2,3],[4,5]],
                        "max_tokens":2})")
                  .sequences,
              ElementsAre(SequenceShape{3, 2}, SequenceShape{2, 2}));
}

TEST_F(ExtProcGateTest, TrustedTokenCountHeaderOverridesTheBody) {
  // Once trusted, the header is taken as sent: it wins over token ids and
  // text, and is shared evenly (rounded up) across a batch of prompts.
  const ExtProcGate gate = Gate(Trusting());
  ExtProcHeaders h = Post();
  h.token_count = "10";
  const GatedRequest r = Gated(gate, h);
  EXPECT_THAT(
      Admit(gate, r, R"({"model":"gpt2","prompt":[1,2,3],"max_tokens":1})")
          .sequences,
      ElementsAre(SequenceShape{10, 1}));
  EXPECT_THAT(Admit(gate, r,
                    R"({"model":"gpt2","prompt":["a","b","c"],
                        "max_tokens":1})")
                  .sequences,
              ElementsAre(SequenceShape{4, 1}, SequenceShape{4, 1},
                          SequenceShape{4, 1}));
  h.token_count = "0";  // at least one token per prompt
  EXPECT_THAT(Admit(gate, Gated(gate, h),
                    R"({"model":"gpt2","prompt":"abcdefgh","max_tokens":1})")
                  .sequences,
              ElementsAre(SequenceShape{1, 1}));
}

TEST_F(ExtProcGateTest, EachPromptNTimesInOrder) {
  const ExtProcGate gate = Gate();
  const ExtProcAdmit admit =
      Admit(gate, Gated(gate, Post()),
            R"({"model":"gpt2","prompt":[[1],[1,2]],"n":2,"max_tokens":3})");
  EXPECT_THAT(admit.sequences,
              ElementsAre(SequenceShape{1, 3}, SequenceShape{1, 3},
                          SequenceShape{2, 3}, SequenceShape{2, 3}));
  const BatchEstimate expected = Estimate(admit.sequences);
  EXPECT_EQ(admit.ticket.cost.kv_bytes, expected.kv_cache_bytes);
  EXPECT_EQ(admit.ticket.cost.activation_bytes, expected.activation_bytes);
}

// --- AdmitError -----------------------------------------------------------

TEST(AdmitErrorTest, InvalidArgumentIs400ElseInternal) {
  HttpError e =
      ExtProcGate::AdmitError(absl::InvalidArgumentError("cost overflows"));
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "INVALID_REQUEST");
  EXPECT_EQ(e.message, "cost overflows");
  e = ExtProcGate::AdmitError(absl::AlreadyExistsError("queued twice"));
  EXPECT_EQ(e.status, 500);
  EXPECT_EQ(e.type, "api_error");
  EXPECT_EQ(e.code, "INTERNAL");
  EXPECT_EQ(e.message, "queued twice");
  EXPECT_EQ(e.retry_after, absl::ZeroDuration());
}

}  // namespace
}  // namespace kvgate
