#include "plugin/ext_proc/ext_proc_responses.h"

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvgate {
namespace {

std::string Header(const envoy::service::ext_proc::v3::HeaderMutation& m,
                   const std::string& key) {
  for (const auto& o : m.set_headers()) {
    if (o.header().key() == key) {
      EXPECT_TRUE(o.header().value().empty());
      return o.header().raw_value();
    }
  }
  return "(absent)";
}

AdmitOutcome Rejected(RejectReason reason, absl::Duration retry_after) {
  AdmitOutcome o;
  o.reason = reason;
  o.retry_after = retry_after;
  return o;
}

TEST(RejectionErrorTest, StatusPerReason) {
  struct Case {
    RejectReason reason;
    int status;
    bool retry_after;
  };
  const Case cases[] = {
      {RejectReason::kQueueTimeout, 429, true},
      {RejectReason::kQueueFull, 429, true},
      {RejectReason::kShed, 429, true},
      {RejectReason::kMemoryPressure, 503, true},
      {RejectReason::kDraining, 503, true},
      {RejectReason::kNeverFits, 400, false},
  };
  for (const Case& c : cases) {
    const HttpError e =
        RejectionError(Rejected(c.reason, absl::Milliseconds(1200)));
    EXPECT_EQ(e.status, c.status) << RejectReasonName(c.reason);
    EXPECT_EQ(e.code, RejectReasonName(c.reason));
    EXPECT_EQ(e.retry_after > absl::ZeroDuration(), c.retry_after);
  }
}

TEST(RetryAfterSecondsTest, RoundsUpToAtLeastOne) {
  EXPECT_EQ(RetryAfterSeconds(absl::Milliseconds(50)), 1);
  EXPECT_EQ(RetryAfterSeconds(absl::Milliseconds(1001)), 2);
  EXPECT_EQ(RetryAfterSeconds(absl::Seconds(3)), 3);
}

TEST(ImmediateErrorTest, CarriesHeadersInRawValueAndJsonBody) {
  const auto response = ImmediateError(RejectionError(
      Rejected(RejectReason::kMemoryPressure, absl::Milliseconds(2500))));
  ASSERT_TRUE(response.has_immediate_response());
  const auto& immediate = response.immediate_response();
  EXPECT_EQ(immediate.status().code(), 503);
  EXPECT_EQ(Header(immediate.headers(), "retry-after"), "3");
  EXPECT_EQ(Header(immediate.headers(), "x-kvgate-reason"), "MEMORY_PRESSURE");
  EXPECT_EQ(Header(immediate.headers(), "content-type"), "application/json");
  EXPECT_EQ(immediate.details(), "kvgate_memory_pressure");
  const auto body = nlohmann::json::parse(immediate.body());
  EXPECT_EQ(body["error"]["code"], "MEMORY_PRESSURE");
  EXPECT_EQ(body["error"]["type"], "service_unavailable");
}

TEST(ReplaceRequestBodyTest, BodyAndItsContentLengthInOneAnswer) {
  envoy::service::ext_proc::v3::CommonResponse response;
  ReplaceRequestBody(R"({"model":"m","max_tokens":64})", response);
  EXPECT_EQ(response.body_mutation().body(),
            R"({"model":"m","max_tokens":64})");
  EXPECT_EQ(Header(response.header_mutation(), "content-length"), "29");
  EXPECT_EQ(response.status(),
            envoy::service::ext_proc::v3::CommonResponse::CONTINUE);
}

TEST(ExtendTimeoutTest, OnlyTheOverride) {
  const auto r = ExtendTimeout(absl::Milliseconds(31500));
  EXPECT_EQ(r.response_case(),
            envoy::service::ext_proc::v3::ProcessingResponse::RESPONSE_NOT_SET);
  EXPECT_EQ(r.override_message_timeout().seconds(), 31);
  EXPECT_EQ(r.override_message_timeout().nanos(), 500000000);
}

}  // namespace
}  // namespace kvgate
