// LeaseJournal: replay after an abrupt end, expiry, torn and corrupt tails,
// compaction, the directory lock, and Controller::RestoreLease with the
// LeaseObserver hook that feeds the journal.
#include "plugin/journal/lease_journal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "plugin/admission/clock.h"
#include "plugin/admission/controller.h"
#include "plugin/journal/journal_record.h"
#include "tests/testing/fake_clock.h"

namespace kvgate {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

const absl::Time kNow = absl::FromUnixSeconds(1700000000);

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteAll(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

void AppendRaw(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::app);
  out << text;
}

LeaseRecord Lease(const std::string& id, uint64_t kv = 1000,
                  absl::Time expires = kNow + absl::Minutes(10)) {
  return LeaseRecord{id, "req-" + id, AdmitCost{kv, 10}, expires};
}

class LeaseJournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* test =
        ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = absl::StrCat(::testing::TempDir(), "lease_journal_", test->name(),
                        "_", getpid());
    std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
    options_.state_dir = dir_;
  }
  void TearDown() override {
    std::system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }

  // The journal (nullptr on failure) and its replay.
  LeaseJournal::Opened Open(absl::Time now = kNow) {
    absl::StatusOr<LeaseJournal::Opened> opened =
        LeaseJournal::Open(options_, now);
    EXPECT_TRUE(opened.ok()) << opened.status();
    return opened.ok() ? *std::move(opened) : LeaseJournal::Opened();
  }

  static std::vector<std::string> Ids(const LeaseJournal::Replay& replay) {
    std::vector<std::string> ids;
    for (const auto& l : replay.live) ids.push_back(l.lease.lease_id);
    std::sort(ids.begin(), ids.end());
    return ids;
  }

  std::string path() const { return dir_ + "/leases.journal"; }

  std::string dir_;
  LeaseJournal::Options options_;
};

TEST(FsyncPolicyTest, ParsesTheThreeNamesOnly) {
  EXPECT_EQ(*LeaseJournal::ParseFsyncPolicy("always"),
            LeaseJournal::FsyncPolicy::kAlways);
  EXPECT_EQ(*LeaseJournal::ParseFsyncPolicy("interval"),
            LeaseJournal::FsyncPolicy::kInterval);
  EXPECT_EQ(*LeaseJournal::ParseFsyncPolicy("never"),
            LeaseJournal::FsyncPolicy::kNever);
  EXPECT_EQ(LeaseJournal::ParseFsyncPolicy("sometimes").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(LeaseJournalTest, FreshDirectoryStartsEmpty) {
  auto [journal, replay] = Open();
  ASSERT_NE(journal, nullptr);
  EXPECT_THAT(replay.live, IsEmpty());
  EXPECT_EQ(replay.dropped_bytes, 0u);
  struct stat st;
  ASSERT_EQ(stat(dir_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST_F(LeaseJournalTest, ReplayReturnsLeasesGrantedAndNotEnded) {
  {
    auto [journal, replay] = Open();
    LeaseObserver* observer = journal->ObserverFor("m");
    observer->OnGranted(Lease("a"));
    observer->OnGranted(Lease("b"));
    observer->OnGranted(Lease("c"));
    observer->OnEnded("a", LeaseEnd::kReleased);
    observer->OnEnded("c", LeaseEnd::kExpired);
    observer->Commit();
    // No orderly close: the journal object is simply dropped, as after a
    // kill (records are written by write(2) as they happen).
  }
  auto [journal, replay] = Open();
  EXPECT_THAT(Ids(replay), ElementsAre("b"));
  ASSERT_THAT(replay.live, SizeIs(1));
  EXPECT_EQ(replay.live[0].model, "m");
  EXPECT_EQ(replay.live[0].lease.request_id, "req-b");
  EXPECT_EQ(replay.live[0].lease.cost.kv_bytes, 1000u);
  EXPECT_EQ(replay.live[0].lease.cost.activation_bytes, 10u);
  EXPECT_EQ(replay.live[0].lease.expires_at, kNow + absl::Minutes(10));
  EXPECT_EQ(replay.records, 6u);  // version + 5
}

TEST_F(LeaseJournalTest, RenewalMovesTheExpiryReplayed) {
  {
    auto [journal, replay] = Open();
    LeaseObserver* observer = journal->ObserverFor("m");
    observer->OnGranted(Lease("a", 1, kNow + absl::Seconds(5)));
    observer->OnRenewed("a", kNow + absl::Hours(1));
  }
  const LeaseJournal::Replay replay = Open(kNow + absl::Minutes(30)).replay;
  ASSERT_THAT(replay.live, SizeIs(1));
  EXPECT_EQ(replay.live[0].lease.expires_at, kNow + absl::Hours(1));
}

TEST_F(LeaseJournalTest, LeasesPastTheirExpiryAreDroppedAtReplay) {
  {
    auto [journal, replay] = Open();
    LeaseObserver* observer = journal->ObserverFor("m");
    observer->OnGranted(Lease("short", 1, kNow + absl::Seconds(1)));
    observer->OnGranted(Lease("long", 1, kNow + absl::Hours(1)));
  }
  const LeaseJournal::Replay replay = Open(kNow + absl::Seconds(2)).replay;
  EXPECT_THAT(Ids(replay), ElementsAre("long"));
  EXPECT_EQ(replay.expired, 1u);
}

TEST_F(LeaseJournalTest, LeasesOfModelsNoLongerServedAreDropped) {
  {
    auto [journal, replay] = Open();
    journal->ObserverFor("gone")->OnGranted(Lease("g"));
    journal->ObserverFor("kept")->OnGranted(Lease("k"));
  }
  options_.models = {"kept"};
  const LeaseJournal::Replay replay = Open().replay;
  EXPECT_THAT(Ids(replay), ElementsAre("k"));
  EXPECT_EQ(replay.unknown_model, 1u);
}

TEST_F(LeaseJournalTest, FieldsWithTabsAndNewlinesRoundTrip) {
  const std::string model = "a\tmodel\nwith \"quotes\" \\ and \x01";
  LeaseRecord lease = Lease("id\t1\n");
  lease.request_id = "request\n\t\\";
  {
    auto [journal, replay] = Open();
    journal->ObserverFor(model)->OnGranted(lease);
  }
  const LeaseJournal::Replay replay = Open().replay;
  ASSERT_THAT(replay.live, SizeIs(1));
  EXPECT_EQ(replay.live[0].model, model);
  EXPECT_EQ(replay.live[0].lease.lease_id, lease.lease_id);
  EXPECT_EQ(replay.live[0].lease.request_id, lease.request_id);
  EXPECT_EQ(replay.dropped_bytes, 0u);
}

TEST_F(LeaseJournalTest, TornLastRecordIsDroppedAndCutAway) {
  {
    auto [journal, replay] = Open();
    journal->ObserverFor("m")->OnGranted(Lease("a"));
    journal->ObserverFor("m")->OnGranted(Lease("b"));
  }
  // A write torn by the crash: the start of a RELEASE of "a", no newline.
  const std::string torn = "1234abcd\tR\tm\ta";
  const size_t whole = ReadAll(path()).size();
  AppendRaw(path(), torn);
  {
    const LeaseJournal::Replay replay = Open().replay;
    EXPECT_THAT(Ids(replay), ElementsAre("a", "b"));
    EXPECT_EQ(replay.dropped_bytes, torn.size());
    EXPECT_EQ(replay.dropped_offset, whole);
    EXPECT_THAT(replay.dropped_reason, HasSubstr("incomplete"));
  }
  // The compaction at open cut the tail away.
  EXPECT_THAT(ReadAll(path()), ::testing::Not(HasSubstr(torn)));
  const LeaseJournal::Replay again = Open().replay;
  EXPECT_EQ(again.dropped_bytes, 0u);
  EXPECT_THAT(Ids(again), ElementsAre("a", "b"));
}

TEST_F(LeaseJournalTest, CorruptRecordStopsReplayThere) {
  {
    auto [journal, replay] = Open();
    LeaseObserver* observer = journal->ObserverFor("m");
    observer->OnGranted(Lease("a"));
    observer->OnGranted(Lease("b", 2000));
    observer->OnGranted(Lease("c"));
  }
  // Flip a digit of b's kv_bytes: its CRC no longer matches.
  std::string text = ReadAll(path());
  const size_t b = text.find("\t2000\t");
  ASSERT_NE(b, std::string::npos);
  text[b + 1] = '9';
  WriteAll(path(), text);
  const size_t b_line = text.rfind('\n', b) + 1;

  const LeaseJournal::Replay replay = Open().replay;
  // "a" precedes the bad record; "b" and everything after it are dropped.
  EXPECT_THAT(Ids(replay), ElementsAre("a"));
  EXPECT_EQ(replay.dropped_offset, b_line);
  EXPECT_EQ(replay.dropped_bytes, text.size() - b_line);
  EXPECT_THAT(replay.dropped_reason, HasSubstr("CRC"));
}

TEST_F(LeaseJournalTest, GarbageAppendedIsDropped) {
  {
    auto [journal, replay] = Open();
    journal->ObserverFor("m")->OnGranted(Lease("a"));
  }
  AppendRaw(path(), std::string("\0\0\xff garbage\n", 12));
  const LeaseJournal::Replay replay = Open().replay;
  EXPECT_THAT(Ids(replay), ElementsAre("a"));
  EXPECT_EQ(replay.dropped_bytes, 12u);
}

TEST_F(LeaseJournalTest, UnknownVersionIsRefusedAndKept) {
  ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0);
  const std::string payload = "V\t7";
  const std::string text = absl::StrCat(
      absl::Hex(Crc32(payload), absl::kZeroPad8), "\t", payload, "\n");
  WriteAll(path(), text);
  absl::StatusOr<LeaseJournal::Opened> journal =
      LeaseJournal::Open(options_, kNow);
  EXPECT_EQ(journal.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(journal.status().message(), HasSubstr("version 7"));
  EXPECT_EQ(ReadAll(path()), text);
}

// A journal as an earlier build wrote it (grants, renewals, a release and an
// expiry, every kind of byte to escape) still replays: the format is fixed.
TEST_F(LeaseJournalTest, JournalOfAnEarlierBuildReplays) {
  ASSERT_EQ(mkdir(dir_.c_str(), 0700), 0);
  WriteAll(
      path(),
      "176c3063\tV\t1\n"
      "6d044b45\tG\tllama-3-8b\t00000000deadbeef-1\treq-"
      "1\t123456789\t42\t1700000600123456\n"
      "1825d9f8\tG\twe\\tird\\n\\\"m\\\\o\\001\\377\\000d\\000\tid\\t\\n\\000x"
      "\tr\\303\\251q\t1\t0\t1700000600123456\n"
      "a438935b\tG\tllama-3-8b\t00000000deadbeef-"
      "2\t\t18446744073709551615\t18446744073709551615\t1700004200123456\n"
      "a057e600\tN\tllama-3-8b\t00000000deadbeef-1\t1700000630123456\n"
      "dad8be1f\tN\twe\\tird\\n\\\"m\\\\o\\001\\377\\000d\\000\tunknown\t-5\n"
      "6a31f73c\tR\tllama-3-8b\t00000000deadbeef-2\n"
      "5f068d6d\tE\twe\\tird\\n\\\"m\\\\o\\001\\377\\000d\\000\tid\\t\\n\\000x"
      "\n");
  const LeaseJournal::Replay replay = Open().replay;
  EXPECT_EQ(replay.records, 8u);
  EXPECT_EQ(replay.dropped_bytes, 0u);
  ASSERT_THAT(replay.live, SizeIs(1));
  EXPECT_EQ(replay.live[0].model, "llama-3-8b");
  EXPECT_EQ(replay.live[0].lease.lease_id, "00000000deadbeef-1");
  EXPECT_EQ(replay.live[0].lease.request_id, "req-1");
  EXPECT_EQ(replay.live[0].lease.cost.kv_bytes, 123456789u);
  EXPECT_EQ(replay.live[0].lease.cost.activation_bytes, 42u);
  EXPECT_EQ(replay.live[0].lease.expires_at,
            absl::FromUnixMicros(1700000630123456));
  // The compaction at open wrote the live lease back byte for byte.
  EXPECT_EQ(
      ReadAll(path()),
      "176c3063\tV\t1\n"
      "e38b4ca6\tG\tllama-3-8b\t00000000deadbeef-1\treq-1\t123456789\t42\t"
      "1700000630123456\n");
}

TEST_F(LeaseJournalTest, SecondOpenOfALockedDirectoryFails) {
  std::unique_ptr<LeaseJournal> first = Open().journal;
  ASSERT_NE(first, nullptr);
  absl::StatusOr<LeaseJournal::Opened> second =
      LeaseJournal::Open(options_, kNow);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("locked"));
  first.reset();
  EXPECT_NE(Open().journal, nullptr);  // the lock went with the first
}

TEST_F(LeaseJournalTest, MissingParentDirectoryFailsClearly) {
  options_.state_dir = dir_ + "/no/such/parent";
  absl::StatusOr<LeaseJournal::Opened> journal =
      LeaseJournal::Open(options_, kNow);
  EXPECT_EQ(journal.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(journal.status().message(), HasSubstr("state directory"));
}

TEST_F(LeaseJournalTest, CompactionKeepsOnlyLiveLeases) {
  options_.compact_min_bytes = 4096;
  {
    auto [journal, replay] = Open();
    LeaseObserver* observer = journal->ObserverFor("m");
    for (int i = 0; i < 1000; ++i) {
      const std::string id = absl::StrCat("lease-", i);
      observer->OnGranted(Lease(id));
      if (i % 100 != 0) observer->OnEnded(id, LeaseEnd::kReleased);
    }
    EXPECT_GT(journal->compactions(), 5u);  // online, not only at open
    EXPECT_EQ(journal->live_leases(), 10u);
    // Bounded: at most a compaction's worth of appends past the live set.
    EXPECT_LT(ReadAll(path()).size(), 2 * 4096u + 10 * 100u);
  }
  const LeaseJournal::Replay replay = Open().replay;
  EXPECT_THAT(replay.live, SizeIs(10));
  EXPECT_EQ(replay.dropped_bytes, 0u);
}

TEST_F(LeaseJournalTest, IntervalPolicyRecordsLikeTheOthers) {
  options_.fsync = LeaseJournal::FsyncPolicy::kInterval;
  options_.fsync_interval = absl::Milliseconds(1);
  {
    auto [journal, replay] = Open();
    journal->ObserverFor("m")->OnGranted(Lease("a"));
  }
  const LeaseJournal::Replay replay = Open().replay;
  EXPECT_THAT(Ids(replay), ElementsAre("a"));
}

// ---------------------------------------------------------------------------
// The controller side: the observer hook and RestoreLease.

class RecordingObserver : public LeaseObserver {
 public:
  void OnGranted(const LeaseRecord& lease) override {
    events.push_back("G " + lease.lease_id);
  }
  void OnRenewed(absl::string_view id, absl::Time) override {
    events.push_back(absl::StrCat("N ", id));
  }
  void OnEnded(absl::string_view id, LeaseEnd end) override {
    events.push_back(
        absl::StrCat(end == LeaseEnd::kReleased ? "R " : "E ", id));
  }
  void Commit() override { ++commits; }
  std::vector<std::string> events;
  int commits = 0;
};

std::unique_ptr<Controller> MakeController(FakeClock* clock,
                                           LeaseObserver* observer,
                                           uint64_t capacity = 1000) {
  Controller::Options options;
  options.capacity_bytes = capacity;
  options.lease_ttl = absl::Seconds(10);
  options.lease_observer = observer;
  return *Controller::Create(options, clock);
}

AdmitTicket Ticket(const std::string& id, uint64_t kv) {
  AdmitTicket t;
  t.request_id = id;
  t.cost.kv_bytes = kv;
  return t;
}

AdmitOutcome AdmitNow(Controller& c, AdmitTicket ticket) {
  AdmitOutcome out;
  EXPECT_TRUE(c.Admit(std::move(ticket), [&](AdmitOutcome o) {
                 out = std::move(o);
               }).ok());
  return out;
}

TEST(ControllerObserverTest, SeesEveryLedgerChangeInOrderAndCommits) {
  FakeClock clock;
  RecordingObserver observer;
  auto c = MakeController(&clock, &observer);
  const std::string a = AdmitNow(*c, Ticket("a", 100)).lease_id;
  const std::string b = AdmitNow(*c, Ticket("b", 100)).lease_id;
  ASSERT_TRUE(c->Renew(a).ok());
  ASSERT_TRUE(c->Release(a).ok());
  EXPECT_EQ(*c->Release(a), 0u);  // a second release records nothing
  clock.Advance(absl::Seconds(11));
  c->Tick();
  EXPECT_THAT(observer.events,
              ElementsAre("G " + a, "G " + b, "N " + a, "R " + a, "E " + b));
  EXPECT_GE(observer.commits, 5);
}

TEST(ControllerRestoreTest, RestoredLeaseReservesAndKeepsItsOldId) {
  FakeClock clock;
  RecordingObserver observer;
  auto c = MakeController(&clock, &observer);
  LeaseRecord old{"00000000deadbeef-7", "req-7", AdmitCost{600, 50},
                  clock.Now() + absl::Seconds(5)};
  ASSERT_TRUE(c->RestoreLease(old).ok());
  EXPECT_THAT(observer.events, IsEmpty());  // the journal has it already
  BudgetSnapshot s = c->Snapshot();
  EXPECT_EQ(s.reserved_bytes, 650u);
  EXPECT_EQ(s.active_leases, 1u);

  // What no longer fits queues behind it; a retry gets the old lease.
  AdmitOutcome retry = AdmitNow(*c, Ticket("req-7", 600));
  EXPECT_TRUE(retry.admitted);
  EXPECT_EQ(retry.lease_id, old.lease_id);
  EXPECT_EQ(c->Snapshot().reserved_bytes, 650u);

  ASSERT_TRUE(c->Renew(old.lease_id).ok());
  EXPECT_EQ(*c->Release(old.lease_id), 650u);
  EXPECT_EQ(*c->Release(old.lease_id), 0u);  // idempotent
  EXPECT_THAT(observer.events,
              ElementsAre("N " + old.lease_id, "R " + old.lease_id));
  EXPECT_EQ(c->Snapshot().reserved_bytes, 0u);
  EXPECT_TRUE(c->CheckInvariants().ok());
  EXPECT_EQ(c->Release("00000000deadbeef-8").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ControllerRestoreTest, RestoredLeaseExpiresAtItsRecordedTime) {
  FakeClock clock;
  RecordingObserver observer;
  auto c = MakeController(&clock, &observer);
  ASSERT_TRUE(c->RestoreLease({"x-1", "r", AdmitCost{100, 0},
                               clock.Now() + absl::Seconds(3)})
                  .ok());
  clock.Advance(absl::Seconds(2));
  c->Tick();
  EXPECT_EQ(c->Snapshot().active_leases, 1u);
  clock.Advance(absl::Seconds(2));
  c->Tick();
  EXPECT_EQ(c->Snapshot().active_leases, 0u);
  EXPECT_THAT(observer.events, ElementsAre("E x-1"));
  EXPECT_EQ(c->Renew("x-1").status().code(), absl::StatusCode::kNotFound);
}

TEST(ControllerRestoreTest, RestoredBytesAboveCapacityBlockNewAdmits) {
  FakeClock clock;
  auto c = MakeController(&clock, nullptr, /*capacity=*/1000);
  ASSERT_TRUE(c->RestoreLease({"x-1", "r1", AdmitCost{700, 0},
                               clock.Now() + absl::Minutes(1)})
                  .ok());
  ASSERT_TRUE(c->RestoreLease({"x-2", "r2", AdmitCost{700, 0},
                               clock.Now() + absl::Minutes(1)})
                  .ok());
  const BudgetSnapshot s = c->Snapshot();
  EXPECT_EQ(s.reserved_bytes, 1400u);
  EXPECT_EQ(s.free_bytes, 0u);
  bool answered = false;
  ASSERT_TRUE(
      c->Admit(Ticket("new", 1), [&](AdmitOutcome) { answered = true; }).ok());
  EXPECT_FALSE(answered);  // queued: nothing fits
  EXPECT_GT(c->EstimateRetryAfter(Priority::kStandard, 1),
            absl::ZeroDuration());
  ASSERT_TRUE(c->Release("x-1").ok());
  EXPECT_TRUE(answered);
  EXPECT_TRUE(c->CheckInvariants().ok());
}

TEST(ControllerRestoreTest, RejectsBadOrDuplicateLeases) {
  FakeClock clock;
  auto c = MakeController(&clock, nullptr);
  const absl::Time later = clock.Now() + absl::Minutes(1);
  EXPECT_EQ(c->RestoreLease({"", "r", AdmitCost{1, 0}, later}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->RestoreLease({"x", "r", AdmitCost{0, 0}, later}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->RestoreLease({"x", "r", AdmitCost{UINT64_MAX, 1}, later}).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(c->RestoreLease({"x", "r", AdmitCost{1, 0}, later}).ok());
  EXPECT_EQ(c->RestoreLease({"x", "r2", AdmitCost{1, 0}, later}).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(c->RestoreLease({"y", "r", AdmitCost{1, 0}, later}).code(),
            absl::StatusCode::kAlreadyExists);
}

// The journal behind a real controller: what it restores is what was live.
TEST_F(LeaseJournalTest, ControllerLeasesSurviveThroughTheJournal) {
  FakeClock clock(kNow);
  std::string kept;
  {
    auto [journal, replay] = Open();
    auto c = MakeController(&clock, journal->ObserverFor("m"));
    kept = AdmitNow(*c, Ticket("kept", 300)).lease_id;
    const std::string gone = AdmitNow(*c, Ticket("gone", 300)).lease_id;
    ASSERT_TRUE(c->Release(gone).ok());
  }
  auto [journal, replay] = Open(clock.Now());
  ASSERT_THAT(replay.live, SizeIs(1));
  auto c = MakeController(&clock, journal->ObserverFor("m"));
  ASSERT_TRUE(c->RestoreLease(replay.live[0].lease).ok());
  EXPECT_EQ(c->Snapshot().reserved_bytes, 300u);
  EXPECT_EQ(*c->Release(kept), 300u);
  EXPECT_EQ(journal->live_leases(), 0u);
}

}  // namespace
}  // namespace kvgate
