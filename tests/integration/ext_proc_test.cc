// The real kvgated driven over envoy.service.ext_proc.v3.ExternalProcessor
// the way Envoy's ext_proc filter drives it: request headers, the request
// body (whole, or in chunks), response headers and a streamed response body
// to end_of_stream; a client abort mid-stream; a stream held while memory is
// short. After each, GetBudget on the Admission service shows every lease
// released.
//
// The pool serves the gpt2 preset with a capacity of exactly two requests of
// one shape (100 prompt tokens + 28 new tokens), whose bytes come from the
// server's own Estimate RPC (KvgatedTest, in kvgated_process.h).
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "envoy/service/ext_proc/v3/external_processor.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvgate/v1/admission.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/integration/kvgated_process.h"
#include "tests/testing/ext_proc_client.h"

namespace kvgate {
namespace {

using envoy::service::ext_proc::v3::ExternalProcessor;
using envoy::service::ext_proc::v3::HeaderMutation;
using envoy::service::ext_proc::v3::ProcessingResponse;
using kvgate::v1::Admission;

constexpr absl::Duration kWait = kRpcTimeout;

// A chat completion whose size comes from the trusted token-count header.
std::string ChatBody(const std::string& model = kModel) {
  return ChatCompletionBody(model, kMaxNewTokens);
}
const std::vector<std::pair<std::string, std::string>> kChatHeaders =
    ChatHeaders(kPromptTokens);

class ExtProcTest : public KvgatedTest {
 protected:
  // kvgated with room for exactly two requests; ext_proc on its own socket.
  void StartWithExtProc(const std::string& ext_proc_extra = "",
                        const std::string& queue = "") {
    const std::string ext_proc_address = UniqueUnixAddress("extproc_envoy");
    StartServer(ServerOptions(
        PoolConfig(
            shape().CapacityFor(2),
            absl::StrCat("lease_ttl { seconds: 60 }\n", queue,
                         "ext_proc { default_max_tokens: ", kMaxNewTokens,
                         " trust_token_count_header: true",
                         " max_body_bytes: 4096 ", ext_proc_extra, " }\n")),
        UniqueUnixAddress("extproc_main"),
        {"--ext_proc_address=" + ext_proc_address}));
    if (HasFatalFailure()) return;
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
    envoy_channel_ = grpc::CreateCustomChannel(
        ext_proc_address, grpc::InsecureChannelCredentials(), args);
    ASSERT_TRUE(envoy_channel_->WaitForConnected(
        absl::ToChronoTime(absl::Now() + kWait)))
        << "ext_proc socket not connected within " << kWait;
    ext_proc_ = ExternalProcessor::NewStub(envoy_channel_);
  }

  // Polls until the budget reports `reserved` bytes (release runs just after
  // the answer is sent, so a test may see the answer first).
  uint64_t AwaitReserved(uint64_t reserved) {
    const absl::Time until = absl::Now() + kWait;
    kvgate::v1::Budget budget = GetBudget();
    while (budget.reserved_bytes() != reserved && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(10));
      budget = GetBudget();
    }
    return budget.reserved_bytes();
  }
  uint32_t AwaitQueued(uint32_t queued) {
    const absl::Time until = absl::Now() + kWait;
    kvgate::v1::Budget budget = GetBudget();
    while (budget.queued_requests() != queued && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(10));
      budget = GetBudget();
    }
    return budget.queued_requests();
  }

  // Takes one request's worth of budget through the Admission service.
  std::string AdmitDirect(const std::string& id) { return AdmitOrFail(id); }
  void ReleaseDirect(const std::string& lease) {
    uint64_t released = 0;
    const grpc::Status status = Release(lease, &released);
    EXPECT_TRUE(status.ok()) << status.error_message();
  }

  // Sends headers and the whole body (BUFFERED mode) and expects the headers
  // answer.
  void SendChat(EnvoyStream& stream, const std::string& body = ChatBody()) {
    stream.Send(RequestHeaders("POST", "/v1/chat/completions", kChatHeaders));
    std::optional<ProcessingResponse> r = stream.Next();
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(r->has_request_headers()) << r->DebugString();
    stream.Send(RequestBody(body, true));
  }

  // Expects the admitted answer to the body: CONTINUE with the headers.
  void ExpectAdmitted(EnvoyStream& stream) {
    std::optional<ProcessingResponse> r = stream.Next();
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(r->has_request_body()) << r->DebugString();
    const HeaderMutation& m = r->request_body().response().header_mutation();
    EXPECT_EQ(Header(m, "x-kvgate-decision"), "ADMITTED");
    EXPECT_EQ(Header(m, "x-kvgate-reserved-bytes"),
              absl::StrCat(shape().total));
  }

  // Envoy passes the upstream's streamed (SSE) response: headers, then
  // `chunks` body chunks, the last with end_of_stream when `finish`.
  void StreamResponse(EnvoyStream& stream, int chunks, bool finish = true) {
    stream.Send(ResponseHeaders(false));
    std::optional<ProcessingResponse> r = stream.Next();
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(r->has_response_headers()) << r->DebugString();
    EXPECT_EQ(Header(r->response_headers().response().header_mutation(),
                     "x-kvgate-decision"),
              "ADMITTED");
    for (int i = 0; i < chunks; ++i) {
      stream.Send(ResponseBody(absl::StrCat("data: {\"i\":", i, "}\n\n"),
                               finish && i + 1 == chunks));
      r = stream.Next();
      ASSERT_TRUE(r.has_value());
      ASSERT_TRUE(r->has_response_body()) << r->DebugString();
    }
  }

  // Expects an ImmediateResponse with `status` and the error `code`.
  nlohmann::json ExpectImmediate(EnvoyStream& stream, int status,
                                 const std::string& code) {
    std::optional<ProcessingResponse> r = stream.Next();
    EXPECT_TRUE(r.has_value());
    if (!r.has_value()) return {};
    EXPECT_TRUE(r->has_immediate_response()) << r->DebugString();
    const auto& immediate = r->immediate_response();
    EXPECT_EQ(static_cast<int>(immediate.status().code()), status);
    EXPECT_EQ(Header(immediate.headers(), "content-type"), "application/json");
    EXPECT_EQ(Header(immediate.headers(), "x-kvgate-reason"), code);
    last_immediate_ = immediate;
    nlohmann::json body =
        nlohmann::json::parse(immediate.body(), nullptr, false);
    EXPECT_FALSE(body.is_discarded()) << immediate.body();
    EXPECT_EQ(body["error"]["code"], code) << immediate.body();
    EXPECT_TRUE(body["error"]["message"].is_string());
    return body;
  }

  std::shared_ptr<grpc::Channel> envoy_channel_;
  std::unique_ptr<ExternalProcessor::Stub> ext_proc_;
  envoy::service::ext_proc::v3::ImmediateResponse last_immediate_;
};

TEST_F(ExtProcTest, ChunkedBodyIsAdmittedAndLeaseReleasedAtEndOfStream) {
  StartWithExtProc();
  EnvoyStream stream(ext_proc_.get());
  stream.Send(RequestHeaders("POST", "/v1/chat/completions", kChatHeaders));
  std::optional<ProcessingResponse> r = stream.Next();
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->has_request_headers());

  // STREAMED request body: three chunks; their answers wait for the
  // decision, and Envoy is first asked to wait longer than message_timeout.
  const std::string body = ChatBody();
  const size_t third = body.size() / 3;
  stream.Send(RequestBody(body.substr(0, third), false));
  r = stream.Next();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->response_case(), ProcessingResponse::RESPONSE_NOT_SET);
  EXPECT_EQ(r->override_message_timeout().seconds(), 31);  // 30 s + 1 s
  stream.Send(RequestBody(body.substr(third, third), false));
  stream.Send(RequestBody(body.substr(2 * third), true));
  for (int i = 0; i < 2; ++i) {
    r = stream.Next();
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(r->has_request_body());
    EXPECT_FALSE(r->request_body().response().has_header_mutation());
  }
  ExpectAdmitted(stream);
  EXPECT_EQ(GetBudget().reserved_bytes(), shape().total);
  EXPECT_EQ(GetBudget().active_leases(), 1u);

  StreamResponse(stream, 2, /*finish=*/false);
  // Not yet: one more chunk to go.
  EXPECT_EQ(GetBudget().active_leases(), 1u);
  stream.Send(ResponseBody("data: [DONE]\n\n", true));
  r = stream.Next();
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->has_response_body());
  EXPECT_EQ(AwaitReserved(0), 0u);
  EXPECT_EQ(GetBudget().active_leases(), 0u);
  stream.Close();
  EXPECT_TRUE(stream.Status().ok());
}

TEST_F(ExtProcTest, BufferedBodyAndBodilessResponseReleaseTheLease) {
  StartWithExtProc();
  EnvoyStream stream(ext_proc_.get());
  SendChat(stream);
  ExpectAdmitted(stream);
  EXPECT_EQ(GetBudget().active_leases(), 1u);
  stream.Send(ResponseHeaders(/*end_of_stream=*/true));
  std::optional<ProcessingResponse> r = stream.Next();
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->has_response_headers());
  EXPECT_EQ(AwaitReserved(0), 0u);
  stream.Close();
  EXPECT_TRUE(stream.Status().ok());
}

TEST_F(ExtProcTest, HeldWhileMemoryIsShortThenForwarded) {
  StartWithExtProc();
  const std::string a = AdmitDirect("fill-a");
  const std::string b = AdmitDirect("fill-b");
  EnvoyStream stream(ext_proc_.get());
  SendChat(stream);
  std::optional<ProcessingResponse> r = stream.Next();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->response_case(), ProcessingResponse::RESPONSE_NOT_SET);
  EXPECT_EQ(r->override_message_timeout().seconds(), 31);
  EXPECT_EQ(AwaitQueued(1), 1u);
  // Held: no answer while the budget is full.
  EXPECT_FALSE(stream.Next(absl::Milliseconds(300)).has_value());

  ReleaseDirect(a);
  ExpectAdmitted(stream);
  StreamResponse(stream, 3);
  ReleaseDirect(b);
  EXPECT_EQ(AwaitReserved(0), 0u);
  stream.Close();
  EXPECT_TRUE(stream.Status().ok());
}

TEST_F(ExtProcTest, QueueTimeoutIs429WithRetryAfter) {
  StartWithExtProc("max_hold { nanos: 300000000 }");
  const std::string a = AdmitDirect("fill-a");
  const std::string b = AdmitDirect("fill-b");
  EnvoyStream stream(ext_proc_.get());
  SendChat(stream);
  std::optional<ProcessingResponse> r = stream.Next();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->override_message_timeout().seconds(), 1);
  EXPECT_EQ(r->override_message_timeout().nanos(), 300000000);

  const nlohmann::json body = ExpectImmediate(stream, 429, "QUEUE_TIMEOUT");
  EXPECT_EQ(body["error"]["type"], "rate_limit_exceeded");
  const std::optional<std::string> retry =
      Header(last_immediate_.headers(), "retry-after");
  ASSERT_TRUE(retry.has_value());
  EXPECT_GE(std::stoi(*retry), 1);
  EXPECT_EQ(Header(last_immediate_.headers(), "x-kvgate-decision"), "REJECTED");
  EXPECT_EQ(GetBudget().active_leases(), 2u);
  ReleaseDirect(a);
  ReleaseDirect(b);
  EXPECT_EQ(AwaitReserved(0), 0u);
}

TEST_F(ExtProcTest, BodyThatIsNotJsonIs400) {
  StartWithExtProc();
  EnvoyStream stream(ext_proc_.get());
  SendChat(stream, "model=gpt2&prompt=hello");
  ExpectImmediate(stream, 400, "INVALID_REQUEST");
  EXPECT_EQ(GetBudget().active_leases(), 0u);
}

// A POST without a body (end_of_stream on the request headers) is answered
// 400 as an empty body is, not forwarded ungated.
TEST_F(ExtProcTest, BodilessPostIs400NotForwarded) {
  StartWithExtProc();
  EnvoyStream stream(ext_proc_.get());
  stream.Send(RequestHeaders("POST", "/v1/chat/completions", kChatHeaders,
                             /*end_of_stream=*/true));
  ExpectImmediate(stream, 400, "INVALID_REQUEST");
  EXPECT_EQ(GetBudget().active_leases(), 0u);
}

TEST_F(ExtProcTest, MissingModelIs400) {
  StartWithExtProc();
  EnvoyStream stream(ext_proc_.get());
  SendChat(stream, R"({"messages":[{"role":"user","content":"hi"}]})");
  const nlohmann::json body = ExpectImmediate(stream, 400, "INVALID_REQUEST");
  EXPECT_THAT(body["error"]["message"].get<std::string>(),
              ::testing::HasSubstr("model"));
}

TEST_F(ExtProcTest, UnknownModelIs404) {
  StartWithExtProc();
  EnvoyStream stream(ext_proc_.get());
  SendChat(stream, ChatBody("no-such-model"));
  ExpectImmediate(stream, 404, "MODEL_NOT_FOUND");
}

TEST_F(ExtProcTest, BodyOverTheLimitIs413) {
  StartWithExtProc();
  EnvoyStream stream(ext_proc_.get());
  stream.Send(RequestHeaders("POST", "/v1/completions", kChatHeaders));
  ASSERT_TRUE(stream.Next().has_value());
  stream.Send(RequestBody(std::string(3000, ' '), false));
  ASSERT_TRUE(stream.Next().has_value());  // the wait extension
  stream.Send(RequestBody(std::string(3000, ' '), true));
  ExpectImmediate(stream, 413, "BODY_TOO_LARGE");
}

TEST_F(ExtProcTest, PromptSizeFromTextAndDefaultMaxTokens) {
  // 400 bytes of prompt at 4 bytes per token = 100 tokens; no max_tokens:
  // the configured default of 28, written into the forwarded body. Same
  // shape as the token-header requests.
  StartWithExtProc("bytes_per_token: 4.0");
  EnvoyStream stream(ext_proc_.get());
  stream.Send(RequestHeaders("POST", "/v1/completions"));
  ASSERT_TRUE(stream.Next().has_value());
  const nlohmann::json body{{"model", kModel},
                            {"prompt", std::string(400, 'a')}};
  stream.Send(RequestBody(body.dump(), true));
  std::optional<ProcessingResponse> r = stream.Next();
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->has_request_body()) << r->DebugString();
  const auto& common = r->request_body().response();
  EXPECT_EQ(Header(common.header_mutation(), "x-kvgate-reserved-bytes"),
            absl::StrCat(shape().total));
  nlohmann::json forwarded = body;
  forwarded["max_tokens"] = kMaxNewTokens;
  EXPECT_EQ(nlohmann::json::parse(common.body_mutation().body()), forwarded);
  EXPECT_EQ(Header(common.header_mutation(), "content-length"),
            absl::StrCat(common.body_mutation().body().size()));
  stream.Close();
  EXPECT_TRUE(stream.Status().ok());
  EXPECT_EQ(AwaitReserved(0), 0u);
}

TEST_F(ExtProcTest, ClientAbortMidStreamReleasesTheLease) {
  StartWithExtProc();
  EnvoyStream stream(ext_proc_.get());
  SendChat(stream);
  ExpectAdmitted(stream);
  stream.Send(ResponseHeaders(false));
  ASSERT_TRUE(stream.Next().has_value());
  stream.Send(ResponseBody("data: {}\n\n", false));
  ASSERT_TRUE(stream.Next().has_value());
  EXPECT_EQ(GetBudget().active_leases(), 1u);
  stream.Abort();
  EXPECT_EQ(AwaitReserved(0), 0u);
  EXPECT_EQ(GetBudget().active_leases(), 0u);
}

TEST_F(ExtProcTest, AbortWhileHeldLeavesTheQueue) {
  StartWithExtProc();
  const std::string a = AdmitDirect("fill-a");
  const std::string b = AdmitDirect("fill-b");
  {
    EnvoyStream stream(ext_proc_.get());
    SendChat(stream);
    ASSERT_TRUE(stream.Next().has_value());  // the wait extension
    EXPECT_EQ(AwaitQueued(1), 1u);
    stream.Abort();
    EXPECT_EQ(AwaitQueued(0), 0u);
  }
  ReleaseDirect(a);
  ReleaseDirect(b);
  EXPECT_EQ(AwaitReserved(0), 0u);
  EXPECT_EQ(GetBudget().active_leases(), 0u);
}

TEST_F(ExtProcTest, ConcurrentStreamsShareTheBudget) {
  // The queue may hold two requests' bytes (its default bound is the
  // capacity, which the second would exceed).
  StartWithExtProc(
      "", absl::StrCat("queue { max_bytes: ", 4 * shape().total, " }\n"));
  std::vector<std::unique_ptr<EnvoyStream>> streams;
  // Two fit; the next two are held. Each body is sent once the previous
  // stream has its answer, so the order is known.
  for (int i = 0; i < 4; ++i) {
    streams.push_back(std::make_unique<EnvoyStream>(ext_proc_.get()));
    SendChat(*streams.back());
    if (i < 2) {
      ExpectAdmitted(*streams[i]);
    } else {
      std::optional<ProcessingResponse> r = streams[i]->Next();
      ASSERT_TRUE(r.has_value());
      EXPECT_TRUE(r->has_override_message_timeout());
    }
  }
  EXPECT_EQ(AwaitQueued(2), 2u);
  for (int i = 0; i < 2; ++i) {
    StreamResponse(*streams[i], 2);
    ExpectAdmitted(*streams[i + 2]);
  }
  for (int i = 2; i < 4; ++i) StreamResponse(*streams[i], 2);
  EXPECT_EQ(AwaitReserved(0), 0u);
  for (auto& s : streams) {
    s->Close();
    EXPECT_TRUE(s->Status().ok());
  }
}

TEST_F(ExtProcTest, UngatedRequestsPassThroughWithoutALease) {
  StartWithExtProc();
  EnvoyStream stream(ext_proc_.get());
  stream.Send(RequestHeaders("GET", "/v1/models", {}, /*end_of_stream=*/true));
  std::optional<ProcessingResponse> r = stream.Next();
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->has_request_headers());
  stream.Send(ResponseHeaders(false));
  r = stream.Next();
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->response_headers().response().has_header_mutation());
  stream.Send(ResponseBody("{}", true));
  ASSERT_TRUE(stream.Next().has_value());
  EXPECT_EQ(GetBudget().active_leases(), 0u);
  stream.Close();
  EXPECT_TRUE(stream.Status().ok());
}

}  // namespace
}  // namespace kvgate
