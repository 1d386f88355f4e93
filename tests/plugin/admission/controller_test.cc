#include "plugin/admission/controller.h"

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "plugin/admission/clock.h"
#include "tests/testing/fake_clock.h"

namespace kvgate {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class CountingListener : public ControllerListener {
 public:
  void OnDecision(Priority, const AdmitOutcome& outcome) override {
    ++decisions;
    if (!outcome.admitted) reasons.push_back(outcome.reason);
  }
  void OnLeaseExpired(uint64_t bytes) override { expired.push_back(bytes); }
  int decisions = 0;
  std::vector<RejectReason> reasons;
  std::vector<uint64_t> expired;
};

// Runs on a FakeClock. Every ticket Admit accepts is checked, at TearDown
// (after the controller is destroyed), to have been answered exactly once.
class ControllerTest : public ::testing::Test {
 protected:
  static Controller::Options Defaults() {
    Controller::Options options;
    options.capacity_bytes = 100;
    options.max_queue_bytes = 100000;  // most tests queue many full-size asks
    return options;
  }

  void Make(Controller::Options options = Defaults()) {
    options.listener = &listener_;
    auto controller = Controller::Create(options, &clock_);
    ASSERT_TRUE(controller.ok()) << controller.status();
    controller_ = *std::move(controller);
  }

  absl::StatusOr<uint64_t> TryAdmit(AdmitTicket ticket) {
    const std::string id = ticket.request_id;
    absl::StatusOr<uint64_t> handle =
        controller_->Admit(std::move(ticket), [this, id](AdmitOutcome outcome) {
          if (outcome.admitted) admitted_order_.push_back(id);
          answers_[id].push_back(std::move(outcome));
        });
    if (handle.ok()) ++accepted_[id];
    return handle;
  }

  uint64_t Admit(const std::string& id, uint64_t kv, uint64_t activation = 0,
                 Priority priority = Priority::kStandard,
                 const std::string& tenant = "",
                 absl::Time deadline = absl::InfiniteFuture()) {
    AdmitTicket ticket;
    ticket.request_id = id;
    ticket.tenant = tenant;
    ticket.priority = priority;
    ticket.cost = {kv, activation};
    ticket.deadline = deadline;
    absl::StatusOr<uint64_t> handle = TryAdmit(std::move(ticket));
    EXPECT_TRUE(handle.ok()) << handle.status();
    return handle.value_or(0);
  }

  bool Answered(const std::string& id) { return answers_.count(id) > 0; }

  // The latest answer for `id` (a retried id has one per Admit).
  AdmitOutcome Answer(const std::string& id) {
    auto it = answers_.find(id);
    if (it == answers_.end()) {
      ADD_FAILURE() << id << " was not answered";
      return {};
    }
    return it->second.back();
  }

  uint64_t Reserved() { return controller_->Snapshot().reserved_bytes; }

  void TearDown() override {
    controller_.reset();  // answers whatever is still queued
    for (const auto& [id, accepted] : accepted_) {
      EXPECT_EQ(answers_[id].size(), static_cast<size_t>(accepted))
          << id << " answered " << answers_[id].size() << " times";
    }
    int total = 0;
    for (const auto& [id, accepted] : accepted_) total += accepted;
    EXPECT_EQ(listener_.decisions, total + untracked_decisions_);
    EXPECT_TRUE(controller_ == nullptr);
  }

  FakeClock clock_;
  CountingListener listener_;
  std::unique_ptr<Controller> controller_;
  std::map<std::string, std::vector<AdmitOutcome>> answers_;
  std::map<std::string, int> accepted_;
  std::vector<std::string> admitted_order_;
  int untracked_decisions_ = 0;  // tickets admitted around TryAdmit
};

// ------------------------------------------------------------- Options ---

TEST(ControllerCreateTest, RejectsZeroCapacity) {
  FakeClock clock;
  Controller::Options options;
  EXPECT_EQ(Controller::Create(options, &clock).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ControllerCreateTest, RejectsNonPositiveTenantWeight) {
  FakeClock clock;
  Controller::Options options;
  options.capacity_bytes = 10;
  options.tenant_weights["a"] = 0;
  absl::Status status = Controller::Create(options, &clock).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("\"a\""));
}

TEST(ControllerCreateTest, RejectsNullClock) {
  Controller::Options options;
  options.capacity_bytes = 10;
  EXPECT_EQ(Controller::Create(options, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ControllerNamesTest, PriorityAndReasonNamesMatchTheWireContract) {
  EXPECT_EQ(PriorityName(Priority::kCritical), "CRITICAL");
  EXPECT_EQ(PriorityName(Priority::kStandard), "STANDARD");
  EXPECT_EQ(PriorityName(Priority::kSheddable), "SHEDDABLE");
  EXPECT_EQ(RejectReasonName(RejectReason::kNone), "");
  EXPECT_EQ(RejectReasonName(RejectReason::kQueueTimeout), "QUEUE_TIMEOUT");
  EXPECT_EQ(RejectReasonName(RejectReason::kQueueFull), "QUEUE_FULL");
  EXPECT_EQ(RejectReasonName(RejectReason::kNeverFits), "NEVER_FITS");
  EXPECT_EQ(RejectReasonName(RejectReason::kMemoryPressure), "MEMORY_PRESSURE");
  EXPECT_EQ(RejectReasonName(RejectReason::kShed), "SHED");
  EXPECT_EQ(RejectReasonName(RejectReason::kDraining), "DRAINING");
  EXPECT_EQ(RejectReasonName(RejectReason::kCancelled), "CANCELLED");
}

TEST(FakeClockTest, AdvancesAndSets) {
  FakeClock clock(absl::FromUnixSeconds(10));
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(15));
  clock.Set(absl::FromUnixSeconds(3));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(3));
}

TEST(RealClockTest, IsOneInstanceNearNow) {
  EXPECT_EQ(RealClock(), RealClock());
  EXPECT_LT(absl::AbsDuration(RealClock()->Now() - absl::Now()),
            absl::Seconds(5));
}

// ------------------------------------------------------------- Ledger ---

TEST_F(ControllerTest, AdmitsAtOnceWhenItFits) {
  Make();
  EXPECT_EQ(Admit("r1", 30, 10), 0u);  // answered already: no handle
  AdmitOutcome outcome = Answer("r1");
  EXPECT_TRUE(outcome.admitted);
  EXPECT_FALSE(outcome.lease_id.empty());
  EXPECT_EQ(outcome.reserved_bytes, 40u);
  EXPECT_EQ(outcome.queued_for, absl::ZeroDuration());
  BudgetSnapshot snapshot = controller_->Snapshot();
  EXPECT_EQ(snapshot.reserved_bytes, 40u);
  EXPECT_EQ(snapshot.kv_reserved_bytes, 30u);
  EXPECT_EQ(snapshot.activation_reserve_bytes, 10u);
  EXPECT_EQ(snapshot.free_bytes, 60u);
  EXPECT_EQ(snapshot.active_leases, 1u);
}

TEST_F(ControllerTest, ReservesLargestActivationAmongLeases) {
  Make();
  Admit("a", 10, 30);
  Admit("b", 10, 20);
  EXPECT_EQ(Reserved(), 10u + 10u + 30u);
  ASSERT_TRUE(controller_->Release(Answer("a").lease_id).ok());
  EXPECT_EQ(Reserved(), 10u + 20u);
}

TEST_F(ControllerTest, ReservesSumOfActivationsWhenConfigured) {
  Controller::Options options = Defaults();
  options.activation_sum = true;
  Make(options);
  Admit("a", 10, 30);
  Admit("b", 10, 20);
  EXPECT_EQ(Reserved(), 70u);
  EXPECT_EQ(controller_->Snapshot().activation_reserve_bytes, 50u);
}

TEST_F(ControllerTest, FitsExactlyAtCapacity) {
  Make();
  Admit("a", 60);
  Admit("b", 40);
  EXPECT_TRUE(Answer("b").admitted);
  EXPECT_EQ(controller_->Snapshot().free_bytes, 0u);
}

TEST_F(ControllerTest, SharedActivationPeakLetsAnotherLeaseFit) {
  // 40 + 30 + max(30, 30) = 100: the second activation peak is not added.
  Make();
  Admit("a", 40, 30);
  Admit("b", 30, 30);
  EXPECT_TRUE(Answer("b").admitted);
}

TEST_F(ControllerTest, RejectsEmptyRequestId) {
  Make();
  AdmitTicket ticket;
  ticket.cost.kv_bytes = 1;
  EXPECT_EQ(TryAdmit(ticket).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ControllerTest, RejectsZeroCost) {
  Make();
  AdmitTicket ticket;
  ticket.request_id = "zero";
  EXPECT_EQ(TryAdmit(ticket).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(Answered("zero"));
}

TEST_F(ControllerTest, RejectsCostWhoseSumOverflows) {
  Make();
  AdmitTicket ticket;
  ticket.request_id = "huge";
  ticket.cost = {~uint64_t{0}, 2};
  absl::Status status = TryAdmit(ticket).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("overflow"));
  EXPECT_FALSE(Answered("huge"));
}

TEST_F(ControllerTest, RejectsUnknownPriority) {
  Make();
  AdmitTicket ticket;
  ticket.request_id = "p";
  ticket.cost.kv_bytes = 1;
  ticket.priority = static_cast<Priority>(7);
  EXPECT_EQ(TryAdmit(ticket).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ControllerTest, NeverFitsWhenLargerThanCapacity) {
  Make();
  Admit("big", 90, 11);
  AdmitOutcome outcome = Answer("big");
  EXPECT_FALSE(outcome.admitted);
  EXPECT_EQ(outcome.reason, RejectReason::kNeverFits);
  EXPECT_EQ(outcome.retry_after, absl::ZeroDuration());
  EXPECT_EQ(Reserved(), 0u);
}

TEST_F(ControllerTest, NeverFitsWhenLargerThanQueueBytes) {
  Controller::Options options = Defaults();
  options.max_queue_bytes = 50;
  Make(options);
  Admit("big", 60);
  EXPECT_EQ(Answer("big").reason, RejectReason::kNeverFits);
}

TEST_F(ControllerTest, NeverFitsChecksOverflowingTotalsWithoutWrapping) {
  Controller::Options options = Defaults();
  options.capacity_bytes = ~uint64_t{0};
  options.max_queue_bytes = 0;  // = capacity
  options.activation_sum = true;
  Make(options);
  Admit("a", ~uint64_t{0} - 10);
  Admit("b", 20, 0);  // kv sum would wrap to a small number
  EXPECT_FALSE(Answered("b"));
  EXPECT_EQ(controller_->Snapshot().queued_requests, 1u);
  EXPECT_EQ(Reserved(), ~uint64_t{0} - 10);
}

// ---------------------------------------------------------- Idempotence ---

TEST_F(ControllerTest, RetryOfLiveLeaseReturnsSameLeaseWithoutReserving) {
  Make();
  Admit("r", 30);
  const std::string lease = Answer("r").lease_id;
  Admit("r", 30);
  ASSERT_EQ(answers_["r"].size(), 2u);
  EXPECT_TRUE(Answer("r").admitted);
  EXPECT_EQ(Answer("r").lease_id, lease);
  EXPECT_EQ(Answer("r").reserved_bytes, 30u);
  EXPECT_EQ(Reserved(), 30u);
  EXPECT_EQ(controller_->Snapshot().active_leases, 1u);
}

TEST_F(ControllerTest, RetryAfterReleaseGetsNewLease) {
  Make();
  Admit("r", 30);
  const std::string lease = Answer("r").lease_id;
  ASSERT_TRUE(controller_->Release(lease).ok());
  Admit("r", 30);
  EXPECT_NE(Answer("r").lease_id, lease);
  EXPECT_EQ(Reserved(), 30u);
}

TEST_F(ControllerTest, RetryOfLeasePastTtlGetsNewLease) {
  Controller::Options options = Defaults();
  options.lease_ttl = absl::Seconds(10);
  Make(options);
  Admit("r", 30);
  const std::string lease = Answer("r").lease_id;
  clock_.Advance(absl::Seconds(10));  // past the TTL, no Tick yet
  Admit("r", 30);
  EXPECT_TRUE(Answer("r").admitted);
  EXPECT_NE(Answer("r").lease_id, lease);
  EXPECT_EQ(Reserved(), 30u);
  EXPECT_THAT(listener_.expired, ElementsAre(30u));
}

TEST_F(ControllerTest, SameRequestIdWhileQueuedIsAlreadyExists) {
  Make();
  Admit("hold", 100);
  Admit("q", 10);
  AdmitTicket again;
  again.request_id = "q";
  again.cost.kv_bytes = 10;
  EXPECT_EQ(TryAdmit(again).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(controller_->Snapshot().queued_requests, 1u);
}

// ---------------------------------------------------------------- Queue ---

TEST_F(ControllerTest, QueuesWhenFullAndAdmitsOnRelease) {
  Make();
  Admit("hold", 80);
  const uint64_t handle = Admit("q", 30);
  EXPECT_NE(handle, 0u);
  EXPECT_FALSE(Answered("q"));
  EXPECT_EQ(controller_->Snapshot().queued_bytes, 30u);
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(controller_->Release(Answer("hold").lease_id).ok());
  AdmitOutcome outcome = Answer("q");
  EXPECT_TRUE(outcome.admitted);
  EXPECT_EQ(outcome.queued_for, absl::Seconds(2));
  EXPECT_EQ(Reserved(), 30u);
  EXPECT_EQ(controller_->Snapshot().queued_requests, 0u);
}

TEST_F(ControllerTest, QueueFullByCount) {
  Controller::Options options = Defaults();
  options.max_queue_requests = 2;
  Make(options);
  Admit("hold", 100);
  Admit("q1", 10);
  Admit("q2", 10);
  Admit("q3", 10);
  EXPECT_EQ(Answer("q3").reason, RejectReason::kQueueFull);
  EXPECT_GE(Answer("q3").retry_after, Controller::kMinRetryAfter);
  EXPECT_FALSE(Answered("q1"));
}

TEST_F(ControllerTest, QueueFullByBytes) {
  Controller::Options options = Defaults();
  options.max_queue_bytes = 50;
  Make(options);
  Admit("hold1", 50);
  Admit("hold2", 50);
  Admit("q1", 30);
  Admit("q2", 30);
  EXPECT_EQ(Answer("q2").reason, RejectReason::kQueueFull);
  Admit("q3", 20);
  EXPECT_FALSE(Answered("q3"));
  EXPECT_EQ(controller_->Snapshot().queued_bytes, 50u);
}

TEST_F(ControllerTest, CriticalArrivalShedsNewestSheddable) {
  Controller::Options options = Defaults();
  options.max_queue_requests = 2;
  Make(options);
  Admit("hold", 100);
  Admit("s-old", 10, 0, Priority::kSheddable);
  Admit("s-new", 10, 0, Priority::kSheddable);
  Admit("crit", 10, 0, Priority::kCritical);
  EXPECT_EQ(Answer("s-new").reason, RejectReason::kShed);
  EXPECT_FALSE(Answered("s-old"));
  EXPECT_FALSE(Answered("crit"));
  BudgetSnapshot snapshot = controller_->Snapshot();
  EXPECT_EQ(snapshot.queued_by_priority[0], 1u);
  EXPECT_EQ(snapshot.queued_by_priority[2], 1u);
}

TEST_F(ControllerTest, StandardArrivalAlsoShedsSheddable) {
  Controller::Options options = Defaults();
  options.max_queue_requests = 1;
  Make(options);
  Admit("hold", 100);
  Admit("s", 10, 0, Priority::kSheddable);
  Admit("std", 10, 0, Priority::kStandard);
  EXPECT_EQ(Answer("s").reason, RejectReason::kShed);
  EXPECT_FALSE(Answered("std"));
}

TEST_F(ControllerTest, CriticalOnQueueFullOfStandardIsQueueFull) {
  Controller::Options options = Defaults();
  options.max_queue_requests = 1;
  Make(options);
  Admit("hold", 100);
  Admit("std", 10);
  Admit("crit", 10, 0, Priority::kCritical);
  EXPECT_EQ(Answer("crit").reason, RejectReason::kQueueFull);
  EXPECT_FALSE(Answered("std"));
}

TEST_F(ControllerTest, ShedsNothingWhenSheddingCannotMakeRoom) {
  Controller::Options options = Defaults();
  options.max_queue_bytes = 60;
  Make(options);
  Admit("hold1", 50);
  Admit("hold2", 50);
  Admit("std", 40);
  Admit("s", 10, 0, Priority::kSheddable);
  Admit("crit", 30, 0, Priority::kCritical);  // 40 + 30 > 60 even without s
  EXPECT_EQ(Answer("crit").reason, RejectReason::kQueueFull);
  EXPECT_FALSE(Answered("s"));
}

TEST_F(ControllerTest, DispatchesHigherPriorityFirst) {
  Make();
  Admit("hold", 100);
  Admit("shed", 100, 0, Priority::kSheddable);
  Admit("std", 100, 0, Priority::kStandard);
  Admit("crit", 100, 0, Priority::kCritical);
  ASSERT_TRUE(controller_->Release(Answer("hold").lease_id).ok());
  ASSERT_TRUE(controller_->Release(Answer("crit").lease_id).ok());
  ASSERT_TRUE(controller_->Release(Answer("std").lease_id).ok());
  EXPECT_THAT(admitted_order_, ElementsAre("hold", "crit", "std", "shed"));
}

TEST_F(ControllerTest, HigherPriorityArrivalThatFitsSkipsLowerQueue) {
  Make();
  Admit("hold", 70);
  Admit("std", 50);  // waits
  Admit("crit", 20, 0, Priority::kCritical);
  EXPECT_TRUE(Answer("crit").admitted);
}

TEST_F(ControllerTest, FifoWithinTenant) {
  Make();
  Admit("hold", 100);
  for (int i = 0; i < 4; ++i) Admit(absl::StrCat("t", i), 100);
  for (int i = 0; i < 4; ++i) {
    const std::string& last = admitted_order_.back();
    ASSERT_TRUE(controller_->Release(Answer(last).lease_id).ok());
  }
  EXPECT_THAT(admitted_order_, ElementsAre("hold", "t0", "t1", "t2", "t3"));
}

// Releases the newest lease `n` times, so that queued requests of 100 bytes
// (the whole capacity) are admitted one by one in dispatch order.
#define RELEASE_NEWEST(n)                                                    \
  for (int i = 0; i < (n); ++i) {                                            \
    ASSERT_TRUE(                                                             \
        controller_->Release(Answer(admitted_order_.back()).lease_id).ok()); \
  }

TEST_F(ControllerTest, TenantsAlternateWithEqualWeights) {
  Make();
  Admit("hold", 100);
  for (int i = 0; i < 3; ++i)
    Admit(absl::StrCat("a", i), 100, 0, Priority::kStandard, "a");
  for (int i = 0; i < 3; ++i)
    Admit(absl::StrCat("b", i), 100, 0, Priority::kStandard, "b");
  RELEASE_NEWEST(6);
  EXPECT_THAT(admitted_order_,
              ElementsAre("hold", "a0", "b0", "a1", "b1", "a2", "b2"));
}

TEST_F(ControllerTest, TenantsShareByWeightedBytesServed) {
  Controller::Options options = Defaults();
  options.tenant_weights["b"] = 2.0;
  Make(options);
  Admit("hold", 100);
  for (int i = 0; i < 3; ++i)
    Admit(absl::StrCat("a", i), 100, 0, Priority::kStandard, "a");
  for (int i = 0; i < 6; ++i)
    Admit(absl::StrCat("b", i), 100, 0, Priority::kStandard, "b");
  RELEASE_NEWEST(9);
  // a: 0 -> 100 -> 200; b (weight 2): 0 -> 50 -> 100 -> ...
  EXPECT_THAT(admitted_order_, ElementsAre("hold", "a0", "b0", "b1", "a1", "b2",
                                           "b3", "a2", "b4", "b5"));
}

TEST_F(ControllerTest, NewTenantStartsAtCurrentMinimumNotZero) {
  Make();
  Admit("hold", 100);
  for (int i = 0; i < 6; ++i)
    Admit(absl::StrCat("a", i), 100, 0, Priority::kStandard, "a");
  RELEASE_NEWEST(3);  // a0, a1, a2 served: tenant a is 300 bytes ahead of 0
  for (int i = 0; i < 3; ++i)
    Admit(absl::StrCat("c", i), 100, 0, Priority::kStandard, "c");
  RELEASE_NEWEST(6);
  // Starting from 0, c would take c0, c1, c2 in a row.
  EXPECT_THAT(admitted_order_, ElementsAre("hold", "a0", "a1", "a2", "c0", "a3",
                                           "c1", "a4", "c2", "a5"));
}

TEST_F(ControllerTest, BackfillLetsSmallerRequestsPassBlockedHead) {
  Make();
  Admit("hold", 60);
  Admit("head", 50);  // 110 > 100: waits
  Admit("small", 10);
  EXPECT_TRUE(Answer("small").admitted);
  EXPECT_FALSE(Answered("head"));
}

TEST_F(ControllerTest, BackfillNeverTakesRequestsAsLargeAsHead) {
  Make();
  Admit("hold", 0, 50);
  Admit("x", 55, 0);   // 55 + max(50, 0) > 100: waits
  Admit("y", 40, 20);  // fits (40 + 50) but is not smaller than the head
  EXPECT_FALSE(Answered("y"));
}

TEST_F(ControllerTest, HeadBlocksBackfillAfterLimitUntilItFits) {
  Controller::Options options = Defaults();
  options.backfill_limit = 2;
  Make(options);
  Admit("hold", 60);
  Admit("head", 50);
  Admit("s1", 10);
  Admit("s2", 10);
  Admit("s3", 10);  // fits in the ledger but the head has waited enough
  EXPECT_TRUE(Answer("s1").admitted);
  EXPECT_TRUE(Answer("s2").admitted);
  EXPECT_FALSE(Answered("s3"));
  ASSERT_TRUE(controller_->Release(Answer("hold").lease_id).ok());
  EXPECT_THAT(admitted_order_, ElementsAre("hold", "s1", "s2", "head", "s3"));
}

TEST_F(ControllerTest, BackfillFromQueueWhenBytesAreFreed) {
  Make();
  Admit("hold1", 50);
  Admit("hold2", 45);
  Admit("head", 60);   // waits
  Admit("small", 40);  // waits: 95 + 40 > 100
  ASSERT_TRUE(controller_->Release(Answer("hold2").lease_id).ok());
  EXPECT_TRUE(Answer("small").admitted);  // 50 + 40 fits; head 60 does not
  EXPECT_FALSE(Answered("head"));
}

TEST_F(ControllerTest, BackfillScanIsBounded) {
  Controller::Options options = Defaults();
  options.backfill_scan_limit = 16;
  Make(options);
  Admit("hold1", 85);
  Admit("hold2", 10);
  Admit("head", 50);
  for (int i = 0; i < 20; ++i) Admit(absl::StrCat("mid", i), 20);
  Admit("tail", 10);  // the 22nd entry: beyond the scan
  ASSERT_TRUE(controller_->Release(Answer("hold2").lease_id).ok());
  EXPECT_FALSE(Answered("tail"));  // would fit (85 + 10), but is not examined
  EXPECT_EQ(controller_->Snapshot().queued_requests, 22u);
}

TEST_F(ControllerTest, TenThousandQueuedDispatchInOrder) {
  Controller::Options options = Defaults();
  options.capacity_bytes = 1000;
  options.max_queue_requests = 20000;
  options.max_queue_bytes = 10000000;
  Make(options);
  Admit("hold", 1000);
  for (int i = 0; i < 10000; ++i) {
    Admit(absl::StrCat("q", i), 600, 0, Priority::kStandard,
          absl::StrCat("t", i % 7));
  }
  // Each release admits exactly one 600-byte entry and then the scan, which
  // would otherwise walk the whole queue, stops after backfill_scan_limit.
  for (int i = 0; i < 2000; ++i) {
    ASSERT_TRUE(
        controller_->Release(Answer(admitted_order_.back()).lease_id).ok());
  }
  EXPECT_EQ(admitted_order_.size(), 2001u);
  EXPECT_EQ(controller_->Snapshot().queued_requests, 8000u);
  EXPECT_TRUE(controller_->CheckInvariants().ok());
}

// ------------------------------------------------- Deadlines and cancel ---

TEST_F(ControllerTest, QueueTimeoutAtMaxQueueWaitViaTick) {
  Controller::Options options = Defaults();
  options.max_queue_wait = absl::Seconds(5);
  Make(options);
  Admit("hold", 100);
  Admit("q", 10);
  clock_.Advance(absl::Seconds(4));
  controller_->Tick();
  EXPECT_FALSE(Answered("q"));
  clock_.Advance(absl::Seconds(1));
  controller_->Tick();
  EXPECT_EQ(Answer("q").reason, RejectReason::kQueueTimeout);
  EXPECT_EQ(Answer("q").queued_for, absl::Seconds(5));
  EXPECT_EQ(controller_->Snapshot().queued_requests, 0u);
}

TEST_F(ControllerTest, QueueTimeoutUsesEarlierTicketDeadline) {
  Make();
  Admit("hold", 100);
  Admit("q", 10, 0, Priority::kStandard, "", clock_.Now() + absl::Seconds(1));
  clock_.Advance(absl::Seconds(1));
  controller_->Tick();
  EXPECT_EQ(Answer("q").reason, RejectReason::kQueueTimeout);
}

TEST_F(ControllerTest, DeadlineAlreadyPassedIsRejectedAtOnce) {
  Make();
  Admit("hold", 100);
  EXPECT_EQ(Admit("q", 10, 0, Priority::kStandard, "", clock_.Now()), 0u);
  EXPECT_EQ(Answer("q").reason, RejectReason::kQueueTimeout);
}

TEST_F(ControllerTest, ExpiredEntryIsNotAdmittedByALaterRelease) {
  Controller::Options options = Defaults();
  options.max_queue_wait = absl::Seconds(5);
  Make(options);
  Admit("hold", 100);
  Admit("q", 10);
  clock_.Advance(absl::Seconds(6));  // no Tick in between
  ASSERT_TRUE(controller_->Release(Answer("hold").lease_id).ok());
  EXPECT_EQ(Answer("q").reason, RejectReason::kQueueTimeout);
}

TEST_F(ControllerTest, TickReturnsNextTimeWithWork) {
  Controller::Options options = Defaults();
  options.max_queue_wait = absl::Seconds(5);
  options.lease_ttl = absl::Seconds(60);
  Make(options);
  const absl::Time start = clock_.Now();
  EXPECT_EQ(controller_->Tick(), absl::InfiniteFuture());
  Admit("hold", 100);
  EXPECT_EQ(controller_->Tick(), start + absl::Seconds(60));
  Admit("q", 10);
  EXPECT_EQ(controller_->Tick(), start + absl::Seconds(5));
}

TEST_F(ControllerTest, CancelAnswersCancelledAndLeavesQueue) {
  Make();
  Admit("hold", 100);
  const uint64_t handle = Admit("q", 10);
  controller_->Cancel(handle);
  EXPECT_EQ(Answer("q").reason, RejectReason::kCancelled);
  EXPECT_EQ(controller_->Snapshot().queued_requests, 0u);
  controller_->Cancel(handle);  // no-op: answered once
  EXPECT_EQ(answers_["q"].size(), 1u);
}

TEST_F(ControllerTest, CancellingBlockedHeadDispatchesNext) {
  Controller::Options options = Defaults();
  options.backfill_limit = 0;
  Make(options);
  Admit("hold", 60);
  const uint64_t head = Admit("head", 50);
  Admit("next", 30);
  EXPECT_FALSE(Answered("next"));
  controller_->Cancel(head);
  EXPECT_TRUE(Answer("next").admitted);
}

TEST_F(ControllerTest, CancelOfUnknownHandleIsNoop) {
  Make();
  controller_->Cancel(12345);
  EXPECT_EQ(listener_.decisions, 0);
}

// --------------------------------------------------------------- Leases ---

TEST_F(ControllerTest, LeaseExpiresAfterTtlOnTick) {
  Controller::Options options = Defaults();
  options.lease_ttl = absl::Seconds(10);
  Make(options);
  Admit("r", 40, 5);
  clock_.Advance(absl::Seconds(9));
  controller_->Tick();
  EXPECT_EQ(Reserved(), 45u);
  clock_.Advance(absl::Seconds(1));
  controller_->Tick();
  EXPECT_EQ(Reserved(), 0u);
  EXPECT_THAT(listener_.expired, ElementsAre(45u));
}

TEST_F(ControllerTest, ExpiryDispatchesQueue) {
  Controller::Options options = Defaults();
  options.lease_ttl = absl::Seconds(10);
  Make(options);
  Admit("r", 100);
  Admit("q", 100);
  clock_.Advance(absl::Seconds(10));
  controller_->Tick();
  EXPECT_TRUE(Answer("q").admitted);
}

TEST_F(ControllerTest, RenewExtendsLease) {
  Controller::Options options = Defaults();
  options.lease_ttl = absl::Seconds(10);
  Make(options);
  Admit("r", 40);
  clock_.Advance(absl::Seconds(8));
  absl::StatusOr<absl::Duration> ttl = controller_->Renew(Answer("r").lease_id);
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  EXPECT_EQ(*ttl, absl::Seconds(10));
  clock_.Advance(absl::Seconds(9));
  controller_->Tick();
  EXPECT_EQ(Reserved(), 40u);
  clock_.Advance(absl::Seconds(1));
  controller_->Tick();
  EXPECT_EQ(Reserved(), 0u);
}

TEST_F(ControllerTest, RenewOfExpiredLeaseIsNotFound) {
  Controller::Options options = Defaults();
  options.lease_ttl = absl::Seconds(10);
  Make(options);
  Admit("r", 40);
  clock_.Advance(absl::Seconds(10));
  EXPECT_EQ(controller_->Renew(Answer("r").lease_id).status().code(),
            absl::StatusCode::kNotFound);
  controller_->Tick();
  EXPECT_EQ(controller_->Renew(Answer("r").lease_id).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(ControllerTest, ReleaseIsIdempotent) {
  Make();
  Admit("r", 40, 2);
  const std::string lease = Answer("r").lease_id;
  absl::StatusOr<uint64_t> first = controller_->Release(lease);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, 42u);
  absl::StatusOr<uint64_t> second = controller_->Release(lease);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*second, 0u);
  EXPECT_EQ(Reserved(), 0u);
}

TEST_F(ControllerTest, ReleasePastTtlBeforeTickFreesTheBytes) {
  Controller::Options options = Defaults();
  options.lease_ttl = absl::Seconds(1);
  Make(options);
  Admit("r", 40);
  clock_.Advance(absl::Seconds(2));
  absl::StatusOr<uint64_t> released =
      controller_->Release(Answer("r").lease_id);
  ASSERT_TRUE(released.ok());
  EXPECT_EQ(*released, 40u);
  controller_->Tick();
  EXPECT_TRUE(listener_.expired.empty());
}

TEST_F(ControllerTest, ReleaseAfterExpiryReturnsZero) {
  Controller::Options options = Defaults();
  options.lease_ttl = absl::Seconds(1);
  Make(options);
  Admit("r", 40);
  clock_.Advance(absl::Seconds(1));
  controller_->Tick();
  absl::StatusOr<uint64_t> released =
      controller_->Release(Answer("r").lease_id);
  ASSERT_TRUE(released.ok());
  EXPECT_EQ(*released, 0u);
}

TEST_F(ControllerTest, ReleaseOfNeverIssuedIdIsNotFound) {
  Make();
  Admit("r", 40);
  const std::string lease = Answer("r").lease_id;
  const std::string prefix = lease.substr(0, lease.find('-'));
  for (const std::string& id :
       {std::string(""), std::string("nonsense"), prefix + "-2", prefix + "-0",
        prefix + "-01", prefix + "-+1", prefix + "-",
        std::string("0000000000000000-1")}) {
    EXPECT_EQ(controller_->Release(id).status().code(),
              absl::StatusCode::kNotFound)
        << id;
    EXPECT_EQ(controller_->Renew(id).status().code(),
              absl::StatusCode::kNotFound)
        << id;
  }
  EXPECT_EQ(Reserved(), 40u);
}

TEST_F(ControllerTest, LeaseFromAnotherControllerIsNotFound) {
  Make();
  FakeClock other_clock;
  auto other = Controller::Create(Defaults(), &other_clock);
  ASSERT_TRUE(other.ok());
  std::string other_lease;
  ASSERT_TRUE((*other)
                  ->Admit({"x", "", Priority::kStandard, {10, 0}},
                          [&](AdmitOutcome o) { other_lease = o.lease_id; })
                  .ok());
  ASSERT_FALSE(other_lease.empty());
  EXPECT_EQ(controller_->Release(other_lease).status().code(),
            absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------- retry_after ---

TEST_F(ControllerTest, RetryAfterGrowsWithQueue) {
  Controller::Options options = Defaults();
  options.capacity_bytes = 1000;
  Make(options);
  Admit("hold", 1000);
  absl::Duration previous =
      controller_->EstimateRetryAfter(Priority::kStandard, 100);
  for (int i = 0; i < 5; ++i) {
    Admit(absl::StrCat("q", i), 100);
    const absl::Duration now =
        controller_->EstimateRetryAfter(Priority::kStandard, 100);
    EXPECT_GT(now, previous) << i;
    previous = now;
  }
}

TEST_F(ControllerTest, RetryAfterFallsBackToAssumedHoldBeforeAnyRelease) {
  Controller::Options options = Defaults();
  options.capacity_bytes = 1000;
  options.assumed_lease_hold = absl::Seconds(10);
  Make(options);
  Admit("hold", 900);
  Admit("q", 300);  // queued: 300 + 300 - 100 free = 500 bytes to free
  // The budget (1000 bytes) turns over once per 10 s: 500 bytes take 5 s.
  EXPECT_EQ(controller_->EstimateRetryAfter(Priority::kStandard, 300),
            absl::Seconds(5));
}

TEST_F(ControllerTest, RetryAfterCountsOnlyQueuedAheadOfItsPriority) {
  Controller::Options options = Defaults();
  options.capacity_bytes = 1000;
  Make(options);
  Admit("hold", 1000);
  Admit("s", 500, 0, Priority::kSheddable);
  EXPECT_LT(controller_->EstimateRetryAfter(Priority::kCritical, 100),
            controller_->EstimateRetryAfter(Priority::kSheddable, 100));
}

TEST_F(ControllerTest, RetryAfterIsClamped) {
  Controller::Options options = Defaults();
  options.capacity_bytes = 1000;
  options.assumed_lease_hold = absl::Hours(1);
  Make(options);
  EXPECT_EQ(controller_->EstimateRetryAfter(Priority::kStandard, 10),
            Controller::kMinRetryAfter);  // fits now
  Admit("hold", 1000);
  EXPECT_EQ(controller_->EstimateRetryAfter(Priority::kStandard, 900),
            Controller::kMaxRetryAfter);  // 0.9 h at the assumed rate
}

// The budget is held by a lease that expires by TTL in 3 s: a request is
// told to come back then, not after the hour the assumed hold would give.
TEST_F(ControllerTest, RetryAfterIsBoundedByLeaseExpiry) {
  Controller::Options options = Defaults();
  options.capacity_bytes = 1000;
  options.assumed_lease_hold = absl::Hours(1);
  options.lease_ttl = absl::Seconds(3);
  Make(options);
  Admit("hold", 1000);
  EXPECT_EQ(controller_->EstimateRetryAfter(Priority::kStandard, 900),
            absl::Seconds(3));
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(controller_->EstimateRetryAfter(Priority::kStandard, 900),
            absl::Seconds(2));
}

// One small release followed by 45 s of idle: the request is not told 60 s
// on the strength of a stale rate.
TEST_F(ControllerTest, RetryAfterAfterAQuietSpellIsNotTheMaximum) {
  constexpr uint64_t kGiB = uint64_t{1} << 30;
  Controller::Options options = Defaults();
  options.capacity_bytes = 10 * kGiB;
  options.max_queue_bytes = 100 * kGiB;
  Make(options);
  Admit("small", 100 << 20);
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(controller_->Release(Answer("small").lease_id).ok());
  Admit("hold", 10 * kGiB);
  clock_.Advance(absl::Seconds(45));
  EXPECT_LT(controller_->EstimateRetryAfter(Priority::kStandard, 2 * kGiB),
            absl::Seconds(10));
}

// Leases of 100 bytes admitted and released every `period` for 20 s, then a
// full budget and a queue: returns the retry_after of a QUEUE_FULL answer.
absl::Duration RetryAfterWithReleasePeriod(absl::Duration period) {
  FakeClock clock;
  Controller::Options options;
  options.capacity_bytes = 1000;
  options.max_queue_requests = 1;
  auto controller = Controller::Create(options, &clock);
  EXPECT_TRUE(controller.ok());
  Controller& c = **controller;
  int id = 0;
  for (absl::Duration t; t < absl::Seconds(20); t += period) {
    std::string lease;
    EXPECT_TRUE(c.Admit({absl::StrCat(id++), "", Priority::kStandard, {100}},
                        [&](AdmitOutcome o) { lease = o.lease_id; })
                    .ok());
    clock.Advance(period);
    EXPECT_TRUE(c.Release(lease).ok());
  }
  EXPECT_TRUE(
      c.Admit({"hold", "", Priority::kStandard, {1000}}, [](AdmitOutcome) {
       }).ok());
  EXPECT_TRUE(
      c.Admit({"q", "", Priority::kStandard, {400}}, [](AdmitOutcome) {}).ok());
  AdmitOutcome rejected;
  EXPECT_TRUE(
      c.Admit({"full", "", Priority::kStandard, {400}}, [&](AdmitOutcome o) {
         rejected = std::move(o);
       }).ok());
  EXPECT_EQ(rejected.reason, RejectReason::kQueueFull);
  return rejected.retry_after;
}

TEST(ControllerRetryAfterTest, ShrinksWithFasterReleaseRate) {
  const absl::Duration slow = RetryAfterWithReleasePeriod(absl::Seconds(2));
  const absl::Duration fast =
      RetryAfterWithReleasePeriod(absl::Milliseconds(500));
  EXPECT_LT(fast, slow);
  // 800 bytes to free; about 50 B/s against 200 B/s observed.
  EXPECT_GT(slow, absl::Seconds(10));
  EXPECT_LT(fast, absl::Seconds(8));
}

// ------------------------------------------------- Pressure and draining ---

TEST_F(ControllerTest, MemoryPressureRejectsNewAdmits) {
  Make();
  controller_->SetMemoryPressure(true);
  Admit("r", 10);
  EXPECT_EQ(Answer("r").reason, RejectReason::kMemoryPressure);
  EXPECT_GE(Answer("r").retry_after, Controller::kMinRetryAfter);
  EXPECT_TRUE(controller_->Snapshot().memory_pressure);
}

TEST_F(ControllerTest, MemoryPressureHoldsQueueUntilCleared) {
  Make();
  Admit("hold", 100);
  Admit("q", 50);
  controller_->SetMemoryPressure(true);
  ASSERT_TRUE(controller_->Release(Answer("hold").lease_id).ok());
  EXPECT_FALSE(Answered("q"));
  controller_->SetMemoryPressure(false);
  EXPECT_TRUE(Answer("q").admitted);
}

TEST_F(ControllerTest, WaitThatEndsUnderPressureIsMemoryPressure) {
  Make();
  Admit("hold", 100);
  Admit("q", 50);
  controller_->SetMemoryPressure(true, "engine preempted requests");
  clock_.Advance(absl::Seconds(31));  // past max_queue_wait
  controller_->Tick();
  EXPECT_EQ(Answer("q").reason, RejectReason::kMemoryPressure);
  EXPECT_EQ(Answer("q").message, "engine preempted requests");
  controller_->SetMemoryPressure(false);
  Admit("later", 50);
  clock_.Advance(absl::Seconds(31));
  controller_->Tick();
  EXPECT_EQ(Answer("later").reason, RejectReason::kQueueTimeout);
}

// ------------------------------------------------------- Engine budget ---

TEST_F(ControllerTest, EngineCapacityReplacesTheBudgetAndDispatches) {
  Make();
  Admit("hold", 100);
  Admit("q", 50);
  EXPECT_FALSE(Answered("q"));
  controller_->SetEngineBudget(150, 0);
  EXPECT_TRUE(Answer("q").admitted);
  const BudgetSnapshot s = controller_->Snapshot();
  EXPECT_EQ(s.capacity_bytes, 150u);
  EXPECT_EQ(s.reserved_bytes, 150u);
  EXPECT_EQ(s.free_bytes, 0u);
  EXPECT_TRUE(controller_->CheckInvariants().ok());
}

TEST_F(ControllerTest, EngineUsageAboveTheLedgerHoldsBackAnAdmit) {
  Make();
  Admit("mine", 10);
  // Traffic that bypassed the gate: the engine has 80 of 100 in use.
  controller_->SetEngineBudget(0, 80);
  Admit("q", 30);  // the ledger alone (10 + 30 <= 100) would take it
  EXPECT_FALSE(Answered("q"));
  BudgetSnapshot s = controller_->Snapshot();
  EXPECT_EQ(s.capacity_bytes, 100u);  // 0 kept the capacity
  EXPECT_EQ(s.reserved_bytes, 10u);
  EXPECT_EQ(s.engine_used_bytes, 80u);
  EXPECT_EQ(s.free_bytes, 20u);
  Admit("small", 20);  // 80 + 20 fits: a backfill past "q"
  EXPECT_TRUE(Answer("small").admitted);
  controller_->SetEngineBudget(0, 70);  // 70 + 30 fits
  EXPECT_TRUE(Answer("q").admitted);
  // Below the ledger, the engine's figure no longer counts.
  controller_->SetEngineBudget(0, 5);
  s = controller_->Snapshot();
  EXPECT_EQ(s.reserved_bytes, 60u);
  EXPECT_EQ(s.free_bytes, 40u);
}

TEST_F(ControllerTest, ShrunkEngineCapacityKeepsLeasesAndAdmitsAfterRelease) {
  Make();
  Admit("a", 80);
  controller_->SetEngineBudget(50, 0);
  EXPECT_TRUE(controller_->CheckInvariants().ok());
  EXPECT_EQ(controller_->Snapshot().free_bytes, 0u);
  Admit("q", 10);
  EXPECT_FALSE(Answered("q"));
  ASSERT_TRUE(controller_->Release(Answer("a").lease_id).ok());
  EXPECT_TRUE(Answer("q").admitted);
  EXPECT_TRUE(controller_->CheckInvariants().ok());
}

TEST_F(ControllerTest, NeverFitsAndTheDefaultQueueBoundFollowTheCapacity) {
  Controller::Options options = Defaults();
  options.max_queue_bytes = 0;  // default: the capacity
  Make(options);
  Admit("big", 250);
  EXPECT_EQ(Answer("big").reason, RejectReason::kNeverFits);
  controller_->SetEngineBudget(300, 0);
  Admit("big2", 250);
  EXPECT_TRUE(Answer("big2").admitted);
  controller_->SetEngineBudget(100, 0);
  Admit("big3", 150);
  EXPECT_EQ(Answer("big3").reason, RejectReason::kNeverFits);
  EXPECT_THAT(Answer("big3").message, HasSubstr("capacity is 100"));
  EXPECT_TRUE(controller_->CheckInvariants().ok());
}

TEST_F(ControllerTest, DrainAnswersQueuedDraining) {
  Make();
  Admit("hold", 100);
  Admit("q1", 50);
  Admit("q2", 50, 0, Priority::kCritical);
  controller_->Drain();
  EXPECT_EQ(Answer("q1").reason, RejectReason::kDraining);
  EXPECT_EQ(Answer("q2").reason, RejectReason::kDraining);
  EXPECT_EQ(controller_->Snapshot().queued_requests, 0u);
  EXPECT_TRUE(controller_->Snapshot().draining);
}

TEST_F(ControllerTest, DrainRejectsNewAdmits) {
  Make();
  controller_->Drain();
  Admit("r", 10);
  EXPECT_EQ(Answer("r").reason, RejectReason::kDraining);
  EXPECT_EQ(Reserved(), 0u);
}

TEST_F(ControllerTest, DrainKeepsLeasesReleasable) {
  Make();
  Admit("r", 10);
  controller_->Drain();
  absl::StatusOr<uint64_t> released =
      controller_->Release(Answer("r").lease_id);
  ASSERT_TRUE(released.ok());
  EXPECT_EQ(*released, 10u);
}

// ------------------------------------------------------------ Callbacks ---

TEST_F(ControllerTest, CallbackRunsOutsideTheLock) {
  Make();
  Admit("hold", 100);
  bool reentered = false;
  AdmitTicket ticket;
  ticket.request_id = "q";
  ticket.cost.kv_bytes = 100;
  ++untracked_decisions_;
  ASSERT_TRUE(controller_
                  ->Admit(ticket,
                          [&](AdmitOutcome outcome) {
                            // Calls back in: would deadlock under the lock.
                            reentered =
                                controller_->Snapshot().active_leases == 1 &&
                                controller_->Release(outcome.lease_id).ok();
                          })
                  .ok());
  ASSERT_TRUE(controller_->Release(Answer("hold").lease_id).ok());
  EXPECT_TRUE(reentered);
  EXPECT_EQ(Reserved(), 0u);
}

TEST_F(ControllerTest, ListenerSeesEveryDecisionOnce) {
  Controller::Options options = Defaults();
  options.max_queue_requests = 1;
  Make(options);
  Admit("a", 100);
  Admit("b", 10);
  Admit("c", 10);   // QUEUE_FULL
  Admit("d", 200);  // NEVER_FITS
  EXPECT_EQ(listener_.decisions, 3);
  EXPECT_THAT(listener_.reasons,
              ElementsAre(RejectReason::kQueueFull, RejectReason::kNeverFits));
  controller_->Drain();
  EXPECT_EQ(listener_.decisions, 4);
}

}  // namespace
}  // namespace kvgate
