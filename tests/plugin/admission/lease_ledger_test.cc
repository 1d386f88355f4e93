#include "plugin/admission/lease_ledger.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kPrefix = 0xabc;
constexpr absl::string_view kPrefixText = "0000000000000abc";

const absl::Time kT0 = absl::FromUnixSeconds(1000);

// Records the observer calls as text, in order.
class RecordingObserver : public LeaseObserver {
 public:
  void OnGranted(const LeaseRecord& lease) override {
    events.push_back(absl::StrCat("granted ", lease.lease_id, " ",
                                  lease.request_id, " ", lease.cost.kv_bytes,
                                  "+", lease.cost.activation_bytes));
  }
  void OnRenewed(absl::string_view lease_id, absl::Time expires_at) override {
    events.push_back(absl::StrCat("renewed ", lease_id, " ",
                                  absl::ToUnixSeconds(expires_at)));
  }
  void OnEnded(absl::string_view lease_id, LeaseEnd end) override {
    events.push_back(absl::StrCat(
        end == LeaseEnd::kReleased ? "released " : "expired ", lease_id));
  }
  std::vector<std::string> events;
};

LeaseLedger::Options Opts(uint64_t capacity, bool activation_sum = false,
                          LeaseObserver* observer = nullptr) {
  LeaseLedger::Options options;
  options.capacity_bytes = capacity;
  options.activation_sum = activation_sum;
  options.lease_ttl = absl::Seconds(10);
  options.observer = observer;
  return options;
}

std::string Id(uint64_t seq) { return absl::StrCat(kPrefixText, "-", seq); }

TEST(LeaseLedgerTest, TotalsFollowGrantAndFree) {
  LeaseLedger ledger(Opts(1000), kPrefix);
  EXPECT_EQ(ledger.Grant("a", {100, 50}, kT0), Id(1));
  EXPECT_EQ(ledger.Grant("b", {200, 30}, kT0 + absl::Seconds(1)), Id(2));
  EXPECT_EQ(ledger.size(), 2u);
  EXPECT_EQ(ledger.kv_reserved(), 300u);
  EXPECT_EQ(ledger.ActivationReserve(), 50u);  // max, not sum
  EXPECT_EQ(ledger.Reserved(), 350u);
  EXPECT_EQ(ledger.FreeBytes(), 650u);
  EXPECT_TRUE(ledger.CheckInvariants().ok());

  const LeaseLedger::Freed freed =
      ledger.Free(1, kT0 + absl::Seconds(4), LeaseEnd::kReleased);
  EXPECT_EQ(freed.bytes, 150u);
  EXPECT_EQ(freed.reserved_freed, 120u);  // 100 kv + (50 - 30) activation
  EXPECT_EQ(freed.held, absl::Seconds(4));
  EXPECT_EQ(ledger.kv_reserved(), 200u);
  EXPECT_EQ(ledger.ActivationReserve(), 30u);
  EXPECT_EQ(ledger.Reserved(), 230u);
  EXPECT_EQ(ledger.Find(1), nullptr);
  EXPECT_EQ(ledger.FindByRequest("a"), nullptr);
  ASSERT_NE(ledger.FindByRequest("b"), nullptr);
  EXPECT_EQ(ledger.FindByRequest("b")->seq, 2u);
  EXPECT_TRUE(ledger.CheckInvariants().ok());

  ledger.Free(2, kT0 + absl::Seconds(5), LeaseEnd::kReleased);
  EXPECT_EQ(ledger.Reserved(), 0u);
  EXPECT_EQ(ledger.FreeBytes(), 1000u);
  EXPECT_TRUE(ledger.CheckInvariants().ok());
}

TEST(LeaseLedgerTest, ActivationSumAddsPeaks) {
  LeaseLedger ledger(Opts(1000, /*activation_sum=*/true), kPrefix);
  ledger.Grant("a", {100, 50}, kT0);
  ledger.Grant("b", {200, 30}, kT0);
  EXPECT_EQ(ledger.ActivationReserve(), 80u);
  EXPECT_EQ(ledger.Reserved(), 380u);
  const LeaseLedger::Freed freed = ledger.Free(2, kT0, LeaseEnd::kReleased);
  EXPECT_EQ(freed.reserved_freed, 230u);
  EXPECT_TRUE(ledger.CheckInvariants().ok());
}

TEST(LeaseLedgerTest, FitsWithMaxVersusSumOfActivations) {
  LeaseLedger max_ledger(Opts(400), kPrefix);
  LeaseLedger sum_ledger(Opts(400, /*activation_sum=*/true), kPrefix);
  for (LeaseLedger* ledger : {&max_ledger, &sum_ledger}) {
    ledger->Grant("a", {300, 50}, kT0);
  }
  // Max: 300 + max(50, 100) = 400 fits; sum: 300 + 150 = 450 does not.
  EXPECT_TRUE(max_ledger.Fits({0, 100}));
  EXPECT_FALSE(sum_ledger.Fits({0, 100}));
  // A smaller activation costs nothing more under max.
  EXPECT_TRUE(max_ledger.Fits({50, 40}));
  EXPECT_FALSE(max_ledger.Fits({51, 0}));
  EXPECT_TRUE(sum_ledger.Fits({50, 0}));
  EXPECT_FALSE(sum_ledger.Fits({50, 1}));
  // Sums that overflow 64 bits never fit.
  EXPECT_FALSE(max_ledger.Fits({UINT64_MAX, 0}));
  EXPECT_FALSE(sum_ledger.Fits({0, UINT64_MAX}));
}

TEST(LeaseLedgerTest, ExpireFreesLeasesPastTheirTtlEarliestFirst) {
  LeaseLedger ledger(Opts(1000), kPrefix);
  ledger.Grant("a", {100, 0}, kT0);                      // expires kT0 + 10s
  ledger.Grant("b", {200, 0}, kT0 + absl::Seconds(5));   // kT0 + 15s
  ledger.Grant("c", {300, 0}, kT0 + absl::Seconds(20));  // kT0 + 30s
  EXPECT_EQ(ledger.NextExpiry(), kT0 + absl::Seconds(10));

  std::vector<uint64_t> expired;
  auto record = [&](const LeaseLedger::Freed& freed) {
    expired.push_back(freed.bytes);
  };
  ledger.Expire(kT0 + absl::Seconds(9), record);
  EXPECT_TRUE(expired.empty());
  ledger.Expire(kT0 + absl::Seconds(15), record);  // at the TTL: expired
  EXPECT_THAT(expired, ElementsAre(100, 200));
  EXPECT_EQ(ledger.size(), 1u);
  EXPECT_EQ(ledger.kv_reserved(), 300u);
  EXPECT_EQ(ledger.NextExpiry(), kT0 + absl::Seconds(30));
  EXPECT_TRUE(ledger.CheckInvariants().ok());

  ledger.Expire(absl::InfiniteFuture(), record);
  EXPECT_EQ(ledger.NextExpiry(), absl::InfiniteFuture());
  EXPECT_EQ(ledger.Reserved(), 0u);
}

TEST(LeaseLedgerTest, RenewExtendsALiveLeaseOnly) {
  LeaseLedger ledger(Opts(1000), kPrefix);
  const std::string id = ledger.Grant("a", {100, 0}, kT0);
  absl::StatusOr<absl::Time> renewed = ledger.Renew(id, kT0 + absl::Seconds(8));
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  EXPECT_EQ(*renewed, kT0 + absl::Seconds(18));
  EXPECT_EQ(ledger.NextExpiry(), kT0 + absl::Seconds(18));
  EXPECT_EQ(ledger.FindByRequest("a")->expires_at, kT0 + absl::Seconds(18));

  // Past its TTL (not reclaimed yet): NotFound, and the expiry stays.
  EXPECT_EQ(ledger.Renew(id, kT0 + absl::Seconds(18)).status().code(),
            absl::StatusCode::kNotFound);
  ledger.Free(1, kT0 + absl::Seconds(18), LeaseEnd::kExpired);
  EXPECT_THAT(ledger.Renew(id, kT0).status().message(),
              HasSubstr("released or expired"));
  EXPECT_EQ(ledger.Renew(Id(2), kT0).status().code(),
            absl::StatusCode::kNotFound);  // never issued
  EXPECT_TRUE(ledger.CheckInvariants().ok());
}

TEST(LeaseLedgerTest, ParseLeaseIdTakesOnlyCanonicalIdsItIssued) {
  LeaseLedger ledger(Opts(1000), kPrefix);
  for (int i = 1; i <= 7; ++i) ledger.Grant(absl::StrCat("r", i), {1, 0}, kT0);
  ledger.Free(3, kT0, LeaseEnd::kReleased);

  EXPECT_EQ(*ledger.ParseLeaseId(Id(7)), 7u);
  EXPECT_EQ(*ledger.ParseLeaseId(Id(3)), 3u);  // issued, though released
  for (const std::string& bad :
       {absl::StrCat(kPrefixText, "-007"), absl::StrCat(kPrefixText, "-07"),
        absl::StrCat(kPrefixText, "-+7"), absl::StrCat(kPrefixText, "-0"),
        absl::StrCat(kPrefixText, "-8"),  // not issued yet
        absl::StrCat(kPrefixText, "-7 "), absl::StrCat(kPrefixText, "-"),
        absl::StrCat(kPrefixText, "-99999999999999999999999"),
        absl::StrCat(kPrefixText, "7"), std::string("00000000deadbeef-7"),
        std::string("0000000000000ABC-7"), std::string("7"), std::string()}) {
    absl::StatusOr<uint64_t> seq = ledger.ParseLeaseId(bad);
    EXPECT_EQ(seq.status().code(), absl::StatusCode::kNotFound) << bad;
  }
  // Another ledger (another prefix) does not take our ids.
  LeaseLedger other(Opts(1000), 0xdef);
  other.Grant("r1", {1, 0}, kT0);
  EXPECT_FALSE(other.ParseLeaseId(Id(1)).ok());
  EXPECT_TRUE(other.ParseLeaseId("0000000000000def-1").ok());
}

TEST(LeaseLedgerTest, ObserverSeesGrantsRenewalsAndEndsInOrder) {
  RecordingObserver observer;
  LeaseLedger ledger(Opts(1000, false, &observer), kPrefix);
  const std::string a = ledger.Grant("ra", {100, 5}, kT0);
  ledger.Grant("rb", {200, 0}, kT0);
  ASSERT_TRUE(ledger.Renew(a, kT0 + absl::Seconds(1)).ok());
  ledger.Free(2, kT0 + absl::Seconds(2), LeaseEnd::kReleased);
  ledger.Expire(kT0 + absl::Seconds(11), [](const LeaseLedger::Freed&) {});
  ASSERT_TRUE(ledger
                  .Restore({"old-1", "rc", {10, 0}, kT0 + absl::Seconds(60)},
                           kT0 + absl::Seconds(12))
                  .ok());
  EXPECT_THAT(observer.events,
              ElementsAre(absl::StrCat("granted ", Id(1), " ra 100+5"),
                          absl::StrCat("granted ", Id(2), " rb 200+0"),
                          absl::StrCat("renewed ", Id(1), " 1011"),
                          absl::StrCat("released ", Id(2)),
                          absl::StrCat("expired ", Id(1))));
  // Restore is not told; the end of a restored lease is, under its old id.
  ledger.Free(3, kT0 + absl::Seconds(13), LeaseEnd::kReleased);
  EXPECT_EQ(observer.events.back(), "released old-1");
}

TEST(LeaseLedgerTest, RestoreKeepsTheOldIdAndMayExceedCapacity) {
  LeaseLedger ledger(Opts(1000), kPrefix);
  const absl::Time expires = kT0 + absl::Seconds(100);
  ASSERT_TRUE(
      ledger.Restore({"00000000deadbeef-7", "r7", {900, 50}, expires}, kT0)
          .ok());
  ASSERT_TRUE(ledger.Restore({"x-1", "r1", {300, 10}, expires}, kT0).ok());
  EXPECT_EQ(ledger.Reserved(), 1250u);  // over a capacity that shrank
  EXPECT_EQ(ledger.FreeBytes(), 0u);
  EXPECT_FALSE(ledger.Fits({1, 0}));
  EXPECT_TRUE(ledger.CheckInvariants().ok());

  const LeaseLedger::Lease* lease = ledger.FindByRequest("r7");
  ASSERT_NE(lease, nullptr);
  EXPECT_EQ(ledger.LeaseId(*lease), "00000000deadbeef-7");
  EXPECT_EQ(lease->expires_at, expires);
  EXPECT_EQ(lease->bytes, 950u);
  EXPECT_EQ(*ledger.ParseLeaseId("00000000deadbeef-7"), lease->seq);

  // A restored id still parses after release (a second Release is OK(0)).
  const uint64_t seq = lease->seq;
  ledger.Free(seq, kT0, LeaseEnd::kReleased);
  EXPECT_EQ(*ledger.ParseLeaseId("00000000deadbeef-7"), seq);
  EXPECT_EQ(ledger.Find(seq), nullptr);
  EXPECT_EQ(ledger.Reserved(), 310u);
}

TEST(LeaseLedgerTest, RestoreRejectsBadAndDuplicateLeases) {
  LeaseLedger ledger(Opts(1000), kPrefix);
  const absl::Time later = kT0 + absl::Seconds(100);
  const std::string ours = ledger.Grant("mine", {1, 0}, kT0);
  ASSERT_TRUE(ledger.Restore({"x", "r", {1, 0}, later}, kT0).ok());

  auto code = [&](const LeaseRecord& record) {
    return ledger.Restore(record, kT0).code();
  };
  EXPECT_EQ(code({"", "r2", {1, 0}, later}),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({"y", "", {1, 0}, later}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({"y", "r2", {0, 0}, later}),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({"y", "r2", {UINT64_MAX, 1}, later}),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({"y", "r2", {UINT64_MAX - 1, 0}, later}),
            absl::StatusCode::kInvalidArgument);  // the ledger would overflow
  EXPECT_EQ(code({"x", "r2", {1, 0}, later}), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(code({"y", "r", {1, 0}, later}), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(code({ours, "r2", {1, 0}, later}),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(code({"y", "mine", {1, 0}, later}),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ledger.size(), 2u);
  EXPECT_EQ(ledger.Reserved(), 2u);
  EXPECT_TRUE(ledger.CheckInvariants().ok());
}

TEST(LeaseLedgerTest, ARegrantedRequestIdPointsAtItsNewestLease) {
  LeaseLedger ledger(Opts(1000), kPrefix);
  ledger.Grant("r", {10, 0}, kT0);
  // The controller reclaims an expired lease before granting the same
  // request_id again; freeing the old one must not drop the new index.
  ledger.Free(1, kT0 + absl::Seconds(11), LeaseEnd::kExpired);
  ledger.Grant("r", {20, 0}, kT0 + absl::Seconds(11));
  ASSERT_NE(ledger.FindByRequest("r"), nullptr);
  EXPECT_EQ(ledger.FindByRequest("r")->seq, 2u);
  EXPECT_EQ(ledger.FindByRequest("r")->cost.kv_bytes, 20u);
  EXPECT_TRUE(ledger.CheckInvariants().ok());
}

}  // namespace
}  // namespace kvgate
