// ExtProcService in process: a gRPC server with no socket
// (Server::InProcessChannel), a FakeClock and a real ModelRegistry, pools and
// controllers, driven the way Envoy's ext_proc filter drives it (request
// headers, request body, response headers, response body). Time moves only
// when a test advances the clock and calls the controller's Tick(); every
// wait for an answer is bounded and fails the test when it runs out.
//
// Each pool's capacity is exactly one request of the test's shape (100
// prompt tokens + 28 new tokens): a second one queues ("gpt2") or, on a pool
// without a queue ("gpt2-noqueue"), is rejected at once.
#include "plugin/ext_proc/ext_proc_service.h"

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "envoy/service/ext_proc/v3/external_processor.grpc.pb.h"
#include "estimator/model_spec.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "plugin/ext_proc/ext_proc_responses.h"
#include "tests/testing/ext_proc_client.h"
#include "tests/testing/fake_clock.h"

namespace kvgate {
namespace {

using envoy::service::ext_proc::v3::ExternalProcessor;
using envoy::service::ext_proc::v3::ProcessingResponse;

constexpr char kModel[] = "gpt2";
constexpr char kNoQueueModel[] = "gpt2-noqueue";
constexpr uint64_t kPromptTokens = 100;
constexpr uint64_t kMaxNewTokens = 28;
constexpr uint64_t kMaxBodyBytes = 4096;
constexpr absl::Duration kMaxHold = absl::Seconds(30);
// Longest wait for an answer that is expected (real time; never reached
// unless the test fails).
constexpr absl::Duration kWait = absl::Seconds(5);

// A chat completion of kPromptTokens (from the token-count header) and
// kMaxNewTokens.
std::string ChatBody(const std::string& model = kModel) {
  return ChatCompletionBody(model, kMaxNewTokens);
}
const std::vector<std::pair<std::string, std::string>> kChatHeaders =
    ChatHeaders(kPromptTokens);

class ExtProcServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<ModelSpec> spec = LoadPreset("gpt2");
    ASSERT_TRUE(spec.ok()) << spec.status();
    absl::StatusOr<ServingModel> model = ServingModel::Create(*spec, {});
    ASSERT_TRUE(model.ok()) << model.status();
    BatchEstimate one;
    ASSERT_TRUE(
        model->EstimateBatch({{kPromptTokens, kMaxNewTokens}}, &one).ok());
    one_request_bytes_ = one.total_bytes;
    AddPool(kModel, *model, /*max_queue_requests=*/16);
    AddPool(kNoQueueModel, *model, /*max_queue_requests=*/0);

    ExtProcOptions options;
    options.max_hold = kMaxHold;
    options.max_body_bytes = kMaxBodyBytes;
    // Requests are sized by the token-count header, as a tokenizing gateway
    // in front would send it; a body without a max gets kMaxNewTokens.
    options.trust_token_count_header = true;
    options.default_max_tokens = kMaxNewTokens;
    service_ = std::make_unique<ExtProcService>(&registry_, &clock_, options);
    service_->SetReady(true);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = ExternalProcessor::NewStub(
        server_->InProcessChannel(grpc::ChannelArguments()));
  }

  void TearDown() override {
    if (server_ != nullptr) {
      server_->Shutdown(absl::ToChronoTime(absl::Now() + kWait));
    }
    if (service_ != nullptr) {
      EXPECT_TRUE(service_->WaitForCalls(kWait));
    }
  }

  void AddPool(const std::string& name, const ServingModel& model,
               size_t max_queue_requests) {
    Controller::Options options;
    options.capacity_bytes = one_request_bytes_;
    options.max_queue_requests = max_queue_requests;
    options.max_queue_wait = kMaxHold;
    absl::StatusOr<std::unique_ptr<Controller>> controller =
        Controller::Create(options, &clock_);
    ASSERT_TRUE(controller.ok()) << controller.status();
    registry_.Add(std::make_unique<ModelPool>(
        ModelPoolSettings{name, model, {}, 0.9, 0, false, {}},
        options.capacity_bytes, *std::move(controller)));
  }

  Controller& controller(const std::string& model = kModel) {
    return registry_.Find(model)->controller();
  }

  std::unique_ptr<EnvoyStream> NewStream() {
    return std::make_unique<EnvoyStream>(stub_.get());
  }

  // Sends a gated request's headers and whole body (Envoy's BUFFERED mode);
  // expects the headers' CONTINUE.
  void SendRequest(EnvoyStream& stream, const std::string& body = ChatBody()) {
    stream.Send(RequestHeaders("POST", "/v1/chat/completions", kChatHeaders));
    std::optional<ProcessingResponse> r = stream.Next();
    ASSERT_TRUE(r.has_value()) << "no answer to request_headers";
    ASSERT_TRUE(r->has_request_headers()) << r->DebugString();
    stream.Send(RequestBody(body, /*end_of_stream=*/true));
  }

  // Expects the body's CONTINUE carrying the admission headers.
  void ExpectAdmitted(EnvoyStream& stream) {
    std::optional<ProcessingResponse> r = stream.Next();
    ASSERT_TRUE(r.has_value()) << "no answer to request_body";
    ASSERT_TRUE(r->has_request_body()) << r->DebugString();
    const auto& common = r->request_body().response();
    EXPECT_EQ(common.status(),
              envoy::service::ext_proc::v3::CommonResponse::CONTINUE);
    EXPECT_EQ(Header(common.header_mutation(), kDecisionHeader), "ADMITTED");
    EXPECT_EQ(Header(common.header_mutation(), kReservedBytesHeader),
              absl::StrCat(one_request_bytes_));
    // The body goes upstream as the client sent it.
    EXPECT_FALSE(common.has_body_mutation());
  }

  // Expects the override_message_timeout of a request held in the queue.
  void ExpectHeld(EnvoyStream& stream) {
    std::optional<ProcessingResponse> r = stream.Next();
    ASSERT_TRUE(r.has_value()) << "no wait extension";
    EXPECT_EQ(r->response_case(), ProcessingResponse::RESPONSE_NOT_SET);
    EXPECT_EQ(r->override_message_timeout().seconds(),
              absl::ToInt64Seconds(kMaxHold + kHoldTimeoutMargin));
  }

  // Expects an immediate response of `status` and `code`; returns it.
  envoy::service::ext_proc::v3::ImmediateResponse ExpectImmediate(
      EnvoyStream& stream, int status, const std::string& code) {
    std::optional<ProcessingResponse> r = stream.Next();
    EXPECT_TRUE(r.has_value()) << "no immediate response";
    if (!r.has_value()) return {};
    EXPECT_TRUE(r->has_immediate_response()) << r->DebugString();
    const auto& immediate = r->immediate_response();
    EXPECT_EQ(static_cast<int>(immediate.status().code()), status);
    EXPECT_EQ(Header(immediate.headers(), "content-type"), "application/json");
    EXPECT_EQ(Header(immediate.headers(), kDecisionHeader), "REJECTED");
    EXPECT_EQ(Header(immediate.headers(), kReasonHeader), code);
    const nlohmann::json body =
        nlohmann::json::parse(immediate.body(), nullptr, false);
    EXPECT_FALSE(body.is_discarded()) << immediate.body();
    if (!body.is_discarded()) {
      EXPECT_EQ(body["error"]["code"], code) << immediate.body();
    }
    return immediate;
  }

  // Envoy's response phase of an admitted request: headers, then a body
  // whose chunk ends the response. Expects each CONTINUE.
  void Respond(EnvoyStream& stream) {
    stream.Send(ResponseHeaders());
    std::optional<ProcessingResponse> r = stream.Next();
    ASSERT_TRUE(r.has_value()) << "no answer to response_headers";
    ASSERT_TRUE(r->has_response_headers()) << r->DebugString();
    EXPECT_EQ(Header(r->response_headers().response().header_mutation(),
                     kDecisionHeader),
              "ADMITTED");
    stream.Send(ResponseBody("data: ...", /*end_of_stream=*/true));
    r = stream.Next();
    ASSERT_TRUE(r.has_value()) << "no answer to response_body";
    ASSERT_TRUE(r->has_response_body()) << r->DebugString();
  }

  // Respond, then the half-close; expects the stream to finish OK.
  void FinishResponse(EnvoyStream& stream) {
    Respond(stream);
    CloseAndWait(stream);
  }

  // Closes Envoy's side and waits for the server to finish the stream.
  static void CloseAndWait(EnvoyStream& stream) {
    stream.Close();
    EXPECT_TRUE(stream.Status().ok());
  }

  FakeClock clock_;
  ModelRegistry registry_;
  uint64_t one_request_bytes_ = 0;
  std::unique_ptr<ExtProcService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<ExternalProcessor::Stub> stub_;
};

TEST_F(ExtProcServiceTest, AdmittedRequestContinuesAndReleasesAtEndOfStream) {
  auto stream = NewStream();
  SendRequest(*stream);
  ExpectAdmitted(*stream);
  BudgetSnapshot budget = controller().Snapshot();
  EXPECT_EQ(budget.active_leases, 1u);
  EXPECT_EQ(budget.reserved_bytes, one_request_bytes_);

  FinishResponse(*stream);
  budget = controller().Snapshot();
  EXPECT_EQ(budget.active_leases, 0u);
  EXPECT_EQ(budget.reserved_bytes, 0u);
  EXPECT_TRUE(controller().CheckInvariants().ok());
}

TEST_F(ExtProcServiceTest, StreamedChunksAreHeldThenAllContinue) {
  auto stream = NewStream();
  stream->Send(RequestHeaders("POST", "/v1/chat/completions", kChatHeaders));
  ASSERT_TRUE(stream->Next().has_value());
  const std::string body = ChatBody();
  const size_t half = body.size() / 2;
  stream->Send(RequestBody(body.substr(0, half), /*end_of_stream=*/false));
  // The first chunk's answer waits for the decision: Envoy is asked to wait.
  ExpectHeld(*stream);
  stream->Send(RequestBody(body.substr(half), /*end_of_stream=*/true));
  std::optional<ProcessingResponse> r = stream->Next();
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->has_request_body()) << r->DebugString();
  EXPECT_FALSE(r->request_body().response().has_header_mutation());
  ExpectAdmitted(*stream);
  FinishResponse(*stream);
  EXPECT_EQ(controller().Snapshot().active_leases, 0u);
}

TEST_F(ExtProcServiceTest, DefaultMaxTokensIsWrittenIntoTheForwardedBody) {
  auto stream = NewStream();
  const std::string body =
      R"({"model":"gpt2","messages":[{"role":"user","content":"hi"}]})";
  SendRequest(*stream, body);
  std::optional<ProcessingResponse> r = stream->Next();
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->has_request_body()) << r->DebugString();
  const auto& common = r->request_body().response();
  const std::string expected =
      R"({"model":"gpt2","messages":[{"role":"user","content":"hi"}],)"
      R"("max_tokens":28})";
  EXPECT_EQ(common.body_mutation().body(), expected);
  // Envoy answers 500 when content-length disagrees with a mutated body.
  EXPECT_EQ(Header(common.header_mutation(), "content-length"),
            absl::StrCat(expected.size()));
  // Sized like ChatBody(): kPromptTokens + kMaxNewTokens.
  EXPECT_EQ(Header(common.header_mutation(), kReservedBytesHeader),
            absl::StrCat(one_request_bytes_));
  FinishResponse(*stream);
}

TEST_F(ExtProcServiceTest, StreamedChunksOfARewrittenBodyAreReplacedWhole) {
  auto stream = NewStream();
  stream->Send(RequestHeaders("POST", "/v1/chat/completions", kChatHeaders));
  ASSERT_TRUE(stream->Next().has_value());
  const std::string body =
      R"({"model":"gpt2","messages":[{"role":"user","content":"hi"}]})";
  const size_t half = body.size() / 2;
  stream->Send(RequestBody(body.substr(0, half), /*end_of_stream=*/false));
  ExpectHeld(*stream);
  stream->Send(RequestBody(body.substr(half), /*end_of_stream=*/true));
  std::optional<ProcessingResponse> first = stream->Next();
  ASSERT_TRUE(first.has_value());
  ASSERT_TRUE(first->has_request_body()) << first->DebugString();
  EXPECT_TRUE(first->request_body().response().body_mutation().clear_body());
  std::optional<ProcessingResponse> last = stream->Next();
  ASSERT_TRUE(last.has_value());
  ASSERT_TRUE(last->has_request_body()) << last->DebugString();
  const auto& common = last->request_body().response();
  EXPECT_EQ(common.body_mutation().body(),
            R"({"model":"gpt2","messages":[{"role":"user","content":"hi"}],)"
            R"("max_tokens":28})");
  EXPECT_EQ(Header(common.header_mutation(), kDecisionHeader), "ADMITTED");
  FinishResponse(*stream);
}

TEST_F(ExtProcServiceTest, RequestThatDoesNotFitIsAnswered429AtOnce) {
  auto first = NewStream();
  SendRequest(*first, ChatBody(kNoQueueModel));
  ExpectAdmitted(*first);

  auto second = NewStream();
  SendRequest(*second, ChatBody(kNoQueueModel));
  const auto immediate = ExpectImmediate(*second, 429, "QUEUE_FULL");
  const std::optional<std::string> retry =
      Header(immediate.headers(), "retry-after");
  ASSERT_TRUE(retry.has_value());
  EXPECT_GE(std::stoi(*retry), 1);
  const nlohmann::json body =
      nlohmann::json::parse(immediate.body(), nullptr, false);
  EXPECT_EQ(body["error"]["type"], "rate_limit_exceeded");
  CloseAndWait(*second);
  EXPECT_EQ(controller(kNoQueueModel).Snapshot().active_leases, 1u);

  FinishResponse(*first);
  EXPECT_EQ(controller(kNoQueueModel).Snapshot().active_leases, 0u);
}

TEST_F(ExtProcServiceTest, QueuedRequestTimesOutWith429OnTheFakeClock) {
  auto first = NewStream();
  SendRequest(*first);
  ExpectAdmitted(*first);
  auto second = NewStream();
  SendRequest(*second);
  ExpectHeld(*second);
  EXPECT_EQ(controller().Snapshot().queued_requests, 1u);

  clock_.Advance(kMaxHold - absl::Seconds(1));
  controller().Tick();
  EXPECT_EQ(second->Pending(), 0u);  // still waiting (answers come in Tick)
  clock_.Advance(absl::Seconds(1));
  controller().Tick();
  const auto immediate = ExpectImmediate(*second, 429, "QUEUE_TIMEOUT");
  EXPECT_TRUE(Header(immediate.headers(), "retry-after").has_value());
  CloseAndWait(*second);
  EXPECT_EQ(controller().Snapshot().queued_requests, 0u);
  FinishResponse(*first);
}

TEST_F(ExtProcServiceTest, QueuedRequestIsAdmittedWhenAnotherStreamEnds) {
  auto first = NewStream();
  SendRequest(*first);
  ExpectAdmitted(*first);
  auto second = NewStream();
  SendRequest(*second);
  ExpectHeld(*second);
  EXPECT_EQ(second->Pending(), 0u);

  // The first response ends (end_of_stream, before Envoy closes the
  // stream): its lease goes back and the second request goes on.
  Respond(*first);
  ExpectAdmitted(*second);
  BudgetSnapshot budget = controller().Snapshot();
  EXPECT_EQ(budget.active_leases, 1u);
  EXPECT_EQ(budget.queued_requests, 0u);
  CloseAndWait(*first);
  EXPECT_EQ(controller().Snapshot().active_leases, 1u);  // released once
  FinishResponse(*second);
  EXPECT_EQ(controller().Snapshot().active_leases, 0u);
}

TEST_F(ExtProcServiceTest, StreamEndWithoutResponseReleasesForTheQueue) {
  auto first = NewStream();
  SendRequest(*first);
  ExpectAdmitted(*first);
  auto second = NewStream();
  SendRequest(*second);
  ExpectHeld(*second);

  CloseAndWait(*first);  // Envoy closes the stream without a response phase
  ExpectAdmitted(*second);
  FinishResponse(*second);
  EXPECT_EQ(controller().Snapshot().active_leases, 0u);
}

TEST_F(ExtProcServiceTest, ClientAbortReleasesTheLeaseForTheQueue) {
  auto first = NewStream();
  SendRequest(*first);
  ExpectAdmitted(*first);
  auto second = NewStream();
  SendRequest(*second);
  ExpectHeld(*second);

  first->Abort();  // mid-response: Envoy resets the stream
  ExpectAdmitted(*second);
  FinishResponse(*second);
  ASSERT_TRUE(service_->WaitForCalls(kWait));
  EXPECT_EQ(controller().Snapshot().active_leases, 0u);
}

TEST_F(ExtProcServiceTest, AbortWhileQueuedLeavesTheQueue) {
  auto first = NewStream();
  SendRequest(*first);
  ExpectAdmitted(*first);
  auto second = NewStream();
  SendRequest(*second);
  ExpectHeld(*second);

  second->Abort();
  EXPECT_FALSE(second->Status().ok());
  CloseAndWait(*first);  // Envoy closes without a response phase
  ASSERT_TRUE(service_->WaitForCalls(kWait));
  const BudgetSnapshot budget = controller().Snapshot();
  EXPECT_EQ(budget.queued_requests, 0u);
  EXPECT_EQ(budget.active_leases, 0u);
  EXPECT_TRUE(controller().CheckInvariants().ok());
}

TEST_F(ExtProcServiceTest, UnknownModelIs404) {
  auto stream = NewStream();
  SendRequest(*stream, ChatBody("llama"));
  const auto immediate = ExpectImmediate(*stream, 404, "MODEL_NOT_FOUND");
  EXPECT_EQ(immediate.details(), "kvgate_model_not_found");
  CloseAndWait(*stream);
}

TEST_F(ExtProcServiceTest, MalformedBodiesAre400) {
  for (const std::string& body :
       {std::string("not json"), std::string(R"({"messages":[]})")}) {
    auto stream = NewStream();
    SendRequest(*stream, body);
    const auto immediate = ExpectImmediate(*stream, 400, "INVALID_REQUEST");
    EXPECT_FALSE(Header(immediate.headers(), "retry-after").has_value());
    CloseAndWait(*stream);
  }
  EXPECT_EQ(controller().Snapshot().active_leases, 0u);
}

TEST_F(ExtProcServiceTest, BodyOverTheLimitIs413) {
  auto stream = NewStream();
  SendRequest(*stream, std::string(kMaxBodyBytes + 1, ' '));
  ExpectImmediate(*stream, 413, "BODY_TOO_LARGE");
  CloseAndWait(*stream);
}

TEST_F(ExtProcServiceTest, BadHeaderIs400BeforeTheBody) {
  auto stream = NewStream();
  stream->Send(RequestHeaders("POST", "/v1/completions",
                              {{"x-kvgate-priority", "urgent"}}));
  const auto immediate = ExpectImmediate(*stream, 400, "INVALID_REQUEST");
  const nlohmann::json body =
      nlohmann::json::parse(immediate.body(), nullptr, false);
  EXPECT_EQ(body["error"]["message"],
            "x-kvgate-priority: must be critical, standard or sheddable");
  CloseAndWait(*stream);
}

TEST_F(ExtProcServiceTest, UngatedRequestPassesThrough) {
  auto stream = NewStream();
  stream->Send(RequestHeaders("GET", "/v1/models"));
  std::optional<ProcessingResponse> r = stream->Next();
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->has_request_headers()) << r->DebugString();
  stream->Send(ResponseHeaders());
  r = stream->Next();
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->has_response_headers()) << r->DebugString();
  // No lease, so no admission headers on the response.
  EXPECT_FALSE(r->response_headers().response().has_header_mutation());
  CloseAndWait(*stream);
}

TEST_F(ExtProcServiceTest, NotReadyIs503) {
  service_->SetReady(false);
  auto stream = NewStream();
  stream->Send(RequestHeaders("POST", "/v1/chat/completions", kChatHeaders));
  const auto immediate = ExpectImmediate(*stream, 503, "NOT_READY");
  EXPECT_EQ(Header(immediate.headers(), "retry-after"), "1");
  CloseAndWait(*stream);
}

TEST_F(ExtProcServiceTest, DrainingRejectsNewRequestsAndLetsAdmittedFinish) {
  auto admitted = NewStream();
  SendRequest(*admitted);
  ExpectAdmitted(*admitted);

  service_->StartDraining();
  auto late = NewStream();
  late->Send(RequestHeaders("POST", "/v1/chat/completions", kChatHeaders));
  const auto immediate = ExpectImmediate(*late, 503, "DRAINING");
  EXPECT_EQ(Header(immediate.headers(), "retry-after"), "1");
  CloseAndWait(*late);

  FinishResponse(*admitted);
  EXPECT_EQ(controller().Snapshot().active_leases, 0u);
}

}  // namespace
}  // namespace kvgate
