// Tests of TicketFromRequest: the checks and sizing an Admit request goes
// through before the controller sees it (the same function the service and
// tests/fuzz/fuzz_admit.cc call).
#include "plugin/server/admit_request.h"

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "estimator/model_spec.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;

const absl::Time kNow = absl::FromUnixSeconds(1700000000);

ServingModel Llama() {
  absl::StatusOr<ModelSpec> spec = LoadPreset("llama-3-8b");
  EXPECT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<ServingModel> model = ServingModel::Create(*spec, {});
  EXPECT_TRUE(model.ok()) << model.status();
  return *std::move(model);
}

kvgate::v1::AdmitRequest Request(const std::string& text) {
  kvgate::v1::AdmitRequest request;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &request))
      << text;
  return request;
}

absl::StatusOr<AdmitTicket> Ticket(const std::string& text,
                                   AdmitRequestLimits limits = {}) {
  static const ServingModel* const model = new ServingModel(Llama());
  return TicketFromRequest(Request(text), *model, limits, kNow);
}

TEST(TicketFromRequestTest, SizesTheBatchWithTheEstimator) {
  absl::StatusOr<AdmitTicket> ticket = Ticket(
      R"pb(request_id: "r"
           tenant: "t"
           priority: CRITICAL
           sequences { prompt_tokens: 2048 max_new_tokens: 512 })pb");
  ASSERT_TRUE(ticket.ok()) << ticket.status();
  BatchEstimate expected;
  ASSERT_TRUE(Llama().EstimateBatch({{2048, 512}}, &expected).ok());
  EXPECT_EQ(ticket->request_id, "r");
  EXPECT_EQ(ticket->tenant, "t");
  EXPECT_EQ(ticket->priority, Priority::kCritical);
  EXPECT_EQ(ticket->cost.kv_bytes, expected.kv_cache_bytes);
  EXPECT_EQ(ticket->cost.activation_bytes, expected.activation_bytes);
  EXPECT_EQ(ticket->deadline, absl::InfiniteFuture());
}

TEST(TicketFromRequestTest, UnspecifiedPriorityIsStandard) {
  absl::StatusOr<AdmitTicket> ticket =
      Ticket(R"pb(request_id: "r"
                  sequences { prompt_tokens: 1 })pb");
  ASSERT_TRUE(ticket.ok()) << ticket.status();
  EXPECT_EQ(ticket->priority, Priority::kStandard);
}

TEST(TicketFromRequestTest, MaxQueueWaitSetsTheDeadline) {
  absl::StatusOr<AdmitTicket> ticket = Ticket(
      R"pb(request_id: "r"
           sequences { prompt_tokens: 1 }
           max_queue_wait { seconds: 2 nanos: 5 })pb");
  ASSERT_TRUE(ticket.ok()) << ticket.status();
  EXPECT_EQ(ticket->deadline, kNow + absl::Seconds(2) + absl::Nanoseconds(5));
}

TEST(TicketFromRequestTest, RejectsWhatTheServiceRejects) {
  const struct {
    const char* request;
    const char* message;
  } kCases[] = {
      {R"pb(sequences { prompt_tokens: 1 })pb", "request_id: is required"},
      {R"pb(request_id: "r"
            priority: 9
            sequences { prompt_tokens: 1 })pb",
       "priority: unknown value 9"},
      {R"pb(request_id: "r"
            sequences { prompt_tokens: 1 }
            max_queue_wait { seconds: -1 })pb",
       "max_queue_wait: must not be negative"},
      {R"pb(request_id: "r")pb", "sequences: at least one"},
      {R"pb(request_id: "r"
            sequences {}
            sequences {}
            sequences {})pb",
       "3 sequences exceed the limit of 2"},
  };
  for (const auto& c : kCases) {
    absl::StatusOr<AdmitTicket> ticket =
        Ticket(c.request, AdmitRequestLimits{2, 128});
    ASSERT_FALSE(ticket.ok()) << c.request;
    EXPECT_EQ(ticket.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(ticket.status().message(), HasSubstr(c.message));
  }
}

TEST(TicketFromRequestTest, IdsOverTheLimitAreRejected) {
  const std::string id(129, 'x');
  absl::StatusOr<AdmitTicket> ticket =
      Ticket("request_id: \"" + id + "\" sequences { prompt_tokens: 1 }");
  EXPECT_EQ(ticket.status().code(), absl::StatusCode::kInvalidArgument);
  ticket = Ticket("request_id: \"r\" tenant: \"" + id +
                  "\" sequences { prompt_tokens: 1 }");
  EXPECT_EQ(ticket.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TicketFromRequestTest, PassesOnTheEstimatorsError) {
  absl::StatusOr<AdmitTicket> ticket = Ticket(
      R"pb(request_id: "r"
           sequences { prompt_tokens: 4000000000 max_new_tokens: 1 })pb");
  EXPECT_FALSE(ticket.ok());
}

}  // namespace
}  // namespace kvgate
