#include "plugin/admission/fair_queue.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

using ::testing::ElementsAre;

const absl::Time kT0 = absl::FromUnixSeconds(1000);

FairQueue::Options Opts(size_t max_requests = 100, uint64_t max_bytes = 10000,
                        size_t scan_limit = 64) {
  FairQueue::Options options;
  options.max_requests = max_requests;
  options.max_bytes = max_bytes;
  options.backfill_scan_limit = scan_limit;
  return options;
}

class FairQueueTest : public ::testing::Test {
 protected:
  // Queues request `id` of `tenant`; its cost is {bytes, 0}.
  uint64_t Push(const std::string& id, uint64_t bytes,
                Priority priority = Priority::kStandard,
                const std::string& tenant = "t",
                absl::Time deadline = absl::InfiniteFuture()) {
    auto entry = std::make_unique<FairQueue::Entry>();
    entry->ticket.request_id = id;
    entry->ticket.tenant = tenant;
    entry->ticket.priority = priority;
    entry->ticket.cost = {bytes, 0};
    entry->bytes = bytes;
    entry->enqueued_at = kT0;
    entry->deadline = deadline;
    entry->done = [](AdmitOutcome) {};
    return queue_->Push(std::move(entry));
  }

  // Dispatches the head `n` times (or until empty); returns the request ids.
  std::vector<std::string> Dispatch(int n) {
    std::vector<std::string> ids;
    for (int i = 0; i < n; ++i) {
      FairQueue::Entry* head = queue_->Head();
      if (head == nullptr) break;
      ids.push_back(queue_->TakeForDispatch(head)->ticket.request_id);
      EXPECT_TRUE(queue_->CheckInvariants().ok());
    }
    return ids;
  }

  std::unique_ptr<FairQueue> queue_ = std::make_unique<FairQueue>(Opts());
};

TEST_F(FairQueueTest, PriorityFirstThenFifoWithinATenant) {
  Push("s1", 10, Priority::kSheddable);
  Push("std1", 10, Priority::kStandard);
  Push("std2", 10, Priority::kStandard);
  Push("c1", 10, Priority::kCritical);
  EXPECT_EQ(queue_->Head()->ticket.request_id, "c1");
  EXPECT_THAT(Dispatch(10), ElementsAre("c1", "std1", "std2", "s1"));
  EXPECT_EQ(queue_->Head(), nullptr);
}

TEST_F(FairQueueTest, TenantsShareByWeightedBytesServed) {
  FairQueue::Options options = Opts();
  options.tenant_weights = {{"a", 2.0}};  // "b" weighs 1
  queue_ = std::make_unique<FairQueue>(options);
  for (int i = 0; i < 6; ++i) {
    Push(absl::StrCat("a", i), 10, Priority::kStandard, "a");
    Push(absl::StrCat("b", i), 10, Priority::kStandard, "b");
  }
  std::string tenants;
  for (const std::string& id : Dispatch(12)) tenants += id[0];
  // "a" is charged 5 per request, "b" 10; ties go to the earlier tenant.
  EXPECT_EQ(tenants,
            "abaabaabab"
            "bb");
}

TEST_F(FairQueueTest, ANewcomerStartsAtTheVirtualClockNotAtZero) {
  for (int i = 0; i < 10; ++i) {
    Push(absl::StrCat("a", i), 10, Priority::kStandard, "a");
  }
  Dispatch(5);  // "a" has been served 50; the clock is at 40
  for (int i = 0; i < 5; ++i) {
    Push(absl::StrCat("b", i), 10, Priority::kStandard, "b");
  }
  // "b" gets one turn to catch up, then they alternate: it cannot take the
  // whole queue although it was never served.
  EXPECT_THAT(Dispatch(4), ElementsAre("b0", "a5", "b1", "a6"));
}

TEST_F(FairQueueTest, AReturningTenantResumesAtItsOldPosition) {
  Push("a0", 100, Priority::kStandard, "a");
  for (int i = 0; i < 5; ++i) {
    Push(absl::StrCat("b", i), 10, Priority::kStandard, "b");
  }
  EXPECT_THAT(Dispatch(2), ElementsAre("a0", "b0"));  // "a" idles at 100
  EXPECT_EQ(queue_->idle_tenants(Priority::kStandard), 1u);
  Push("a1", 10, Priority::kStandard, "a");
  EXPECT_EQ(queue_->idle_tenants(Priority::kStandard), 0u);
  // Had it forgotten, "a" would start at the clock (0) and go first.
  EXPECT_THAT(Dispatch(5), ElementsAre("b1", "b2", "b3", "b4", "a1"));
}

TEST_F(FairQueueTest, IdleTenantMemoryIsBounded) {
  const size_t n = FairQueue::kMaxIdleTenants + 1;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t handle =
        Push(absl::StrCat("r", i), 10, Priority::kStandard, absl::StrCat(i));
    queue_->Remove(queue_->Find(handle));
    ASSERT_LE(queue_->idle_tenants(Priority::kStandard),
              FairQueue::kMaxIdleTenants);
  }
  // Positions at the clock carry no information: all were dropped at the
  // bound, then the last one remembered.
  EXPECT_EQ(queue_->idle_tenants(Priority::kStandard), 1u);
  EXPECT_EQ(queue_->size(), 0u);
  EXPECT_TRUE(queue_->CheckInvariants().ok());
}

TEST_F(FairQueueTest, BackfillFindsOnlyStrictlySmallerFitsWithinTheScanLimit) {
  auto fits = [](const AdmitCost& cost) { return cost.kv_bytes <= 20; };
  for (size_t limit : {3, 4}) {
    queue_ = std::make_unique<FairQueue>(Opts(100, 10000, limit));
    Push("head", 100);
    Push("big1", 50);  // smaller, does not fit
    Push("big2", 50);
    Push("same", 100);  // not strictly smaller
    Push("small", 10);  // the 4th entry after the head
    FairQueue::Entry* head = queue_->Head();
    ASSERT_EQ(head->ticket.request_id, "head");
    FairQueue::Entry* pick = queue_->FindBackfill(*head, fits);
    if (limit == 3) {
      EXPECT_EQ(pick, nullptr);
    } else {
      ASSERT_NE(pick, nullptr);
      EXPECT_EQ(pick->ticket.request_id, "small");
    }
  }
  // The scan walks the queue in dispatch order, across priorities.
  queue_ = std::make_unique<FairQueue>(Opts());
  Push("head", 100, Priority::kCritical);
  Push("s", 10, Priority::kSheddable);
  Push("c", 10, Priority::kStandard);
  EXPECT_EQ(queue_->FindBackfill(*queue_->Head(), fits)->ticket.request_id,
            "c");
}

TEST_F(FairQueueTest, ShedsNewestSheddableFirstAndOnlyWhenItMakesRoom) {
  queue_ = std::make_unique<FairQueue>(Opts(/*max_requests=*/3));
  Push("s1", 10, Priority::kSheddable);
  Push("c1", 10, Priority::kCritical);
  Push("s2", 10, Priority::kSheddable);
  EXPECT_FALSE(queue_->HasRoom(10));
  EXPECT_FALSE(queue_->CanShedFor(Priority::kSheddable, 10));
  EXPECT_TRUE(queue_->CanShedFor(Priority::kStandard, 10));
  EXPECT_TRUE(queue_->CanShedFor(Priority::kCritical, 10));
  ASSERT_NE(queue_->ShedCandidate(), nullptr);
  EXPECT_EQ(queue_->ShedCandidate()->ticket.request_id, "s2");
  queue_->Remove(queue_->ShedCandidate());
  EXPECT_TRUE(queue_->HasRoom(10));
  EXPECT_EQ(queue_->ShedCandidate()->ticket.request_id, "s1");

  // By bytes: shedding every SHEDDABLE entry would still not be enough.
  queue_ = std::make_unique<FairQueue>(Opts(100, /*max_bytes=*/100));
  Push("s", 10, Priority::kSheddable);
  Push("c", 80, Priority::kCritical);
  EXPECT_FALSE(queue_->HasRoom(30));
  EXPECT_FALSE(queue_->CanShedFor(Priority::kCritical, 30));
  EXPECT_TRUE(queue_->CanShedFor(Priority::kCritical, 20));
  EXPECT_TRUE(queue_->HasRoom(10));
  EXPECT_FALSE(queue_->HasRoom(UINT64_MAX));  // saturates, no wrap-around

  queue_ = std::make_unique<FairQueue>(Opts());
  EXPECT_EQ(queue_->ShedCandidate(), nullptr);
}

TEST_F(FairQueueTest, CountersAndIndexes) {
  const uint64_t h1 = Push("c", 10, Priority::kCritical);
  const uint64_t h2 = Push("s", 20, Priority::kStandard);
  const uint64_t h3 = Push("x", 40, Priority::kSheddable);
  EXPECT_LT(h1, h2);
  EXPECT_LT(h2, h3);
  EXPECT_EQ(queue_->size(), 3u);
  EXPECT_EQ(queue_->bytes(), 70u);
  EXPECT_EQ(queue_->count(Priority::kStandard), 1u);
  EXPECT_EQ(queue_->bytes(Priority::kSheddable), 40u);
  EXPECT_EQ(queue_->BytesAtOrAbove(Priority::kCritical), 10u);
  EXPECT_EQ(queue_->BytesAtOrAbove(Priority::kStandard), 30u);
  EXPECT_EQ(queue_->BytesAtOrAbove(Priority::kSheddable), 70u);
  EXPECT_TRUE(queue_->ContainsRequest("s"));
  EXPECT_EQ(queue_->Find(h2)->ticket.request_id, "s");
  EXPECT_TRUE(queue_->CheckInvariants().ok());

  std::unique_ptr<FairQueue::Entry> removed = queue_->Remove(queue_->Find(h2));
  EXPECT_EQ(removed->handle, h2);
  EXPECT_EQ(removed->bytes, 20u);
  EXPECT_FALSE(queue_->ContainsRequest("s"));
  EXPECT_EQ(queue_->Find(h2), nullptr);
  EXPECT_EQ(queue_->size(), 2u);
  EXPECT_EQ(queue_->bytes(), 50u);
  EXPECT_EQ(queue_->BytesAtOrAbove(Priority::kStandard), 10u);
  EXPECT_TRUE(queue_->CheckInvariants().ok());
}

TEST_F(FairQueueTest, ExpiredReturnsTheEarliestDeadlineOnceReached) {
  EXPECT_EQ(queue_->NextDeadline(), absl::InfiniteFuture());
  Push("late", 10, Priority::kCritical, "t", kT0 + absl::Seconds(20));
  Push("early", 10, Priority::kSheddable, "t", kT0 + absl::Seconds(5));
  EXPECT_EQ(queue_->NextDeadline(), kT0 + absl::Seconds(5));
  EXPECT_EQ(queue_->Expired(kT0 + absl::Seconds(4)), nullptr);
  FairQueue::Entry* expired = queue_->Expired(kT0 + absl::Seconds(5));
  ASSERT_NE(expired, nullptr);
  EXPECT_EQ(expired->ticket.request_id, "early");
  queue_->Remove(expired);
  EXPECT_EQ(queue_->Expired(kT0 + absl::Seconds(19)), nullptr);
  EXPECT_EQ(queue_->NextDeadline(), kT0 + absl::Seconds(20));
}

TEST_F(FairQueueTest, CheckInvariantsReportsAQueueOverItsBounds) {
  // Push does not enforce the bounds: the caller makes room first.
  queue_ = std::make_unique<FairQueue>(Opts(/*max_requests=*/1));
  Push("a", 10);
  EXPECT_TRUE(queue_->CheckInvariants().ok());
  Push("b", 10);
  EXPECT_FALSE(queue_->CheckInvariants().ok());
}

}  // namespace
}  // namespace kvgate
