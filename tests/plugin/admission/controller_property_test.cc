// Randomized property test of the admission controller: several threads
// interleave thousands of Admit / Release / Renew / Cancel / Tick calls while
// a FakeClock moves randomly, and the ledger is checked at quiescent
// checkpoints and at the end.

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "plugin/admission/clock.h"
#include "plugin/admission/controller.h"
#include "tests/testing/fake_clock.h"

namespace kvgate {
namespace {

constexpr int kThreads = 4;
constexpr int kOpsPerThread = 10000;
constexpr int kCheckpointEvery = 1000;
constexpr uint64_t kCapacity = 20000;

class ByteListener : public ControllerListener {
 public:
  void OnDecision(Priority, const AdmitOutcome& outcome) override {
    ++decisions;
    ++by_reason[static_cast<int>(outcome.reason)];
    if (outcome.admitted && outcome.queued_for > absl::ZeroDuration()) {
      ++admitted_after_queueing;
    }
  }
  void OnLeaseExpired(uint64_t bytes) override { expired_bytes += bytes; }
  std::atomic<int64_t> decisions{0};
  std::atomic<int64_t> admitted_after_queueing{0};
  std::array<std::atomic<int64_t>, 8> by_reason{};
  std::atomic<uint64_t> expired_bytes{0};
};

// Every thread arrives; the last one runs `leader` while the others wait.
class Barrier {
 public:
  explicit Barrier(int parties) : parties_(parties) {}
  template <typename Fn>
  void Arrive(Fn leader) {
    absl::MutexLock lock(&mu_);
    const int generation = generation_;
    if (++waiting_ == parties_) {
      leader();
      waiting_ = 0;
      ++generation_;
      cv_.SignalAll();
      return;
    }
    while (generation_ == generation) cv_.Wait(&mu_);
  }

 private:
  absl::Mutex mu_;
  absl::CondVar cv_;
  const int parties_;
  int waiting_ = 0;
  int generation_ = 0;
};

// What the test knows, independent of the controller's own counters.
struct Model {
  absl::Mutex mu;
  absl::flat_hash_map<std::string, uint64_t> live;  // lease id -> bytes
  absl::flat_hash_map<std::string, uint64_t> seen;  // every lease ever

  std::vector<std::string> lease_ids;  // to pick from
  std::vector<uint64_t> handles;       // queued handles, maybe stale
  uint64_t admitted_bytes = 0;
  uint64_t released_bytes = 0;
};

class ControllerPropertyTest : public ::testing::TestWithParam<bool> {
 protected:
  static constexpr int kCalls = kThreads * kOpsPerThread;

  class Worker;

  ControllerPropertyTest()
      : answers_(kCalls), accepted_(kCalls), cost_of_(kCalls) {}

  void SetUp() override {
    options_.capacity_bytes = kCapacity;
    options_.activation_sum = GetParam();
    options_.max_queue_requests = 64;
    options_.max_queue_wait = absl::Seconds(2);
    options_.lease_ttl = absl::Seconds(5);
    options_.backfill_limit = 4;
    options_.tenant_weights = {{"gold", 3.0}, {"bronze", 0.5}};
    options_.listener = &listener_;
    auto created = Controller::Create(options_, &clock_);
    ASSERT_TRUE(created.ok()) << created.status();
    controller_ = *std::move(created);
  }

  // Releases `lease_id`: only one release of a lease frees anything, and
  // exactly its bytes.
  void Release(const std::string& lease_id);
  // The controller's invariants, and its reservation against the model's
  // ledger; only where no call is in flight.
  void CheckLedger();
  // Releases everything; what is still queued is admitted (then released)
  // or times out as the clock moves on.
  void ReleaseEverything();
  // Nothing reserved, queued or leased, and every admitted byte given back.
  void CheckNothingLeft();
  // Every accepted Admit was answered exactly once, and only those.
  void CheckEveryCallAnsweredOnce();
  // The run reached the interesting states, not only the easy ones.
  void CheckReachedInterestingStates();

  FakeClock clock_;
  ByteListener listener_;
  Controller::Options options_;
  Model model_;
  std::vector<std::atomic<int>> answers_;
  std::vector<std::atomic<int>> accepted_;
  std::vector<AdmitCost> cost_of_;  // per call, written before Admit
  // Last, so destroyed first: its callbacks use the members above.
  std::unique_ptr<Controller> controller_;
};

// One thread's share of the randomized run, with its own random sequence:
// one method per kind of operation.
class ControllerPropertyTest::Worker {
 public:
  Worker(ControllerPropertyTest* test, int thread)
      : t_(*test),
        thread_(thread),
        rng_(0x5eed + thread + (test->GetParam() ? 100 : 0)) {}

  // kOpsPerThread random operations; every kCheckpointEvery, all threads
  // meet at `barrier` and the last one checks the ledger.
  void Run(Barrier* barrier, std::atomic<int>* checkpoints) {
    for (int op = 0; op < kOpsPerThread; ++op) {
      const int call = thread_ * kOpsPerThread + op;
      const uint64_t dice = Uniform(0, 99);
      if (dice < 40) {
        Admit(call);
      } else if (dice < 65) {
        ReleaseOne();
      } else if (dice < 72) {
        Renew();
      } else if (dice < 79) {
        Cancel();
      } else if (dice < 86) {
        Tick();
      } else if (dice < 96) {
        AdvanceClock();
      } else if (dice < 97 && thread_ == 0) {
        SetPressure();
      } else {
        CheckSnapshot();
      }
      if ((op + 1) % kCheckpointEvery == 0) {
        barrier->Arrive([&] {
          t_.CheckLedger();
          ++*checkpoints;
        });
      }
    }
  }

 private:
  uint64_t Uniform(uint64_t lo, uint64_t hi) {
    return std::uniform_int_distribution<uint64_t>(lo, hi)(rng_);
  }

  // Mostly a recent lease (likely live), sometimes any lease ever issued.
  std::string PickLease() ABSL_EXCLUSIVE_LOCKS_REQUIRED(t_.model_.mu) {
    const size_t n = t_.model_.lease_ids.size();
    if (n == 0) return std::string();
    const size_t lo = Uniform(0, 4) == 0 ? 0 : (n > 32 ? n - 32 : 0);
    return t_.model_.lease_ids[Uniform(lo, n - 1)];
  }

  // Admit call `call`, now and then retrying an earlier id of this thread
  // with its cost.
  void Admit(int call) {
    static const char* const kTenants[] = {"", "gold", "bronze"};
    AdmitTicket ticket;
    int origin = call;
    if (!admit_calls_.empty() && Uniform(0, 9) == 0) {
      origin = admit_calls_[Uniform(0, admit_calls_.size() - 1)];
    }
    admit_calls_.push_back(call);
    ticket.request_id = absl::StrCat("r", origin);
    ticket.tenant = kTenants[Uniform(0, 2)];
    ticket.priority = static_cast<Priority>(Uniform(0, 2));
    if (origin == call) {
      t_.cost_of_[call] = {Uniform(1, 3000), Uniform(0, 1500)};
    } else {
      t_.cost_of_[call] = t_.cost_of_[origin];
    }
    ticket.cost = t_.cost_of_[call];
    if (Uniform(0, 3) == 0) {
      ticket.deadline = t_.clock_.Now() + absl::Milliseconds(Uniform(0, 1500));
    }
    const uint64_t bytes = ticket.cost.kv_bytes + ticket.cost.activation_bytes;
    ControllerPropertyTest& t = t_;
    absl::StatusOr<uint64_t> handle = t_.controller_->Admit(
        std::move(ticket), [&t, call, bytes](AdmitOutcome outcome) {
          OnAnswer(t, call, bytes, outcome);
        });
    if (handle.ok()) {
      t_.accepted_[call].store(1);
      if (*handle != 0) {
        absl::MutexLock lock(&t_.model_.mu);
        t_.model_.handles.push_back(*handle);
      }
    } else {
      // The only error a well-formed ticket can get: its id is queued.
      EXPECT_EQ(handle.status().code(), absl::StatusCode::kAlreadyExists)
          << handle.status();
    }
  }

  // The controller's answer to call `call` (of `bytes`): counted, and an
  // admitted lease enters the model once.
  static void OnAnswer(ControllerPropertyTest& t, int call, uint64_t bytes,
                       const AdmitOutcome& outcome) {
    t.answers_[call].fetch_add(1);
    if (!outcome.admitted) return;
    EXPECT_EQ(outcome.reserved_bytes, bytes);
    absl::MutexLock lock(&t.model_.mu);
    if (t.model_.seen.emplace(outcome.lease_id, bytes).second) {
      t.model_.admitted_bytes += bytes;
      t.model_.live[outcome.lease_id] = bytes;
      t.model_.lease_ids.push_back(outcome.lease_id);
    }
  }

  void ReleaseOne() {
    std::string lease_id;
    {
      absl::MutexLock lock(&t_.model_.mu);
      lease_id = PickLease();
    }
    if (!lease_id.empty()) t_.Release(lease_id);
  }

  void Renew() {
    std::string lease_id;
    {
      absl::MutexLock lock(&t_.model_.mu);
      lease_id = PickLease();
    }
    if (!lease_id.empty()) {
      absl::StatusOr<absl::Duration> ttl = t_.controller_->Renew(lease_id);
      EXPECT_TRUE(ttl.ok() || absl::IsNotFound(ttl.status())) << ttl.status();
    }
  }

  // Cancels a queued handle (maybe stale: already answered).
  void Cancel() {
    uint64_t handle = 0;
    {
      absl::MutexLock lock(&t_.model_.mu);
      if (!t_.model_.handles.empty()) {
        handle = t_.model_.handles[Uniform(0, t_.model_.handles.size() - 1)];
      }
    }
    if (handle != 0) t_.controller_->Cancel(handle);
  }

  void Tick() { t_.controller_->Tick(); }

  void AdvanceClock() {
    t_.clock_.Advance(absl::Milliseconds(Uniform(0, 250)));
  }

  void SetPressure() {
    t_.controller_->SetMemoryPressure(Uniform(0, 9) == 0);  // mostly off
  }

  // A snapshot mid-run, with calls in flight: only the bounds hold.
  void CheckSnapshot() {
    BudgetSnapshot s = t_.controller_->Snapshot();
    EXPECT_LE(s.reserved_bytes, kCapacity);
    EXPECT_LE(s.queued_requests, 64u);
  }

  ControllerPropertyTest& t_;
  const int thread_;
  std::mt19937_64 rng_;
  std::vector<int> admit_calls_;  // this thread's Admit calls, to retry
};

void ControllerPropertyTest::Release(const std::string& lease_id) {
  absl::StatusOr<uint64_t> freed = controller_->Release(lease_id);
  EXPECT_TRUE(freed.ok()) << freed.status();
  absl::MutexLock lock(&model_.mu);
  if (freed.value_or(0) > 0) {
    EXPECT_EQ(*freed, model_.seen.at(lease_id));
    model_.released_bytes += *freed;
  }
  model_.live.erase(lease_id);
}

void ControllerPropertyTest::CheckLedger() {
  absl::Status invariants = controller_->CheckInvariants();
  EXPECT_TRUE(invariants.ok()) << invariants;
  BudgetSnapshot s = controller_->Snapshot();
  EXPECT_LE(s.reserved_bytes, kCapacity);
  EXPECT_EQ(s.reserved_bytes, s.kv_reserved_bytes + s.activation_reserve_bytes);
  absl::MutexLock lock(&model_.mu);
  // Bytes of live leases = admitted - released - expired. Exact when
  // activations are summed; an upper bound when only the max is reserved.
  const uint64_t live = model_.admitted_bytes - model_.released_bytes -
                        listener_.expired_bytes.load();
  if (options_.activation_sum) {
    EXPECT_EQ(s.reserved_bytes, live);
  } else {
    EXPECT_LE(s.reserved_bytes, live);
  }
}

void ControllerPropertyTest::ReleaseEverything() {
  controller_->SetMemoryPressure(false);
  for (int round = 0; round < 100; ++round) {
    std::vector<std::string> live;
    {
      absl::MutexLock lock(&model_.mu);
      for (const auto& [id, bytes] : model_.live) live.push_back(id);
    }
    for (const std::string& id : live) Release(id);
    BudgetSnapshot s = controller_->Snapshot();
    if (s.queued_requests == 0 && s.active_leases == 0) break;
    clock_.Advance(absl::Seconds(1));
    controller_->Tick();
  }
}

void ControllerPropertyTest::CheckNothingLeft() {
  BudgetSnapshot s = controller_->Snapshot();
  EXPECT_EQ(s.reserved_bytes, 0u);
  EXPECT_EQ(s.queued_requests, 0u);
  EXPECT_EQ(s.queued_bytes, 0u);
  EXPECT_EQ(s.active_leases, 0u);
  absl::MutexLock lock(&model_.mu);
  EXPECT_EQ(model_.admitted_bytes,
            model_.released_bytes + listener_.expired_bytes.load());
  EXPECT_GT(model_.seen.size(), 100u);  // the run did admit things
}

void ControllerPropertyTest::CheckEveryCallAnsweredOnce() {
  int64_t total_accepted = 0;
  for (int call = 0; call < kCalls; ++call) {
    total_accepted += accepted_[call].load();
    ASSERT_EQ(answers_[call].load(), accepted_[call].load())
        << "call " << call << " answered " << answers_[call].load() << " times";
  }
  EXPECT_EQ(listener_.decisions.load(), total_accepted);
}

void ControllerPropertyTest::CheckReachedInterestingStates() {
  std::string histogram;
  for (int r = 0; r < 8; ++r) {
    absl::StrAppend(&histogram, " ",
                    RejectReasonName(static_cast<RejectReason>(r)), "=",
                    listener_.by_reason[r].load());
  }
  SCOPED_TRACE(histogram);
  std::printf("decisions:%s, admitted after queueing=%lld\n", histogram.c_str(),
              static_cast<long long>(listener_.admitted_after_queueing.load()));
  EXPECT_GT(listener_.admitted_after_queueing.load(), 0);
  EXPECT_GT(listener_.expired_bytes.load(), 0u);
  for (RejectReason reason :
       {RejectReason::kQueueTimeout, RejectReason::kCancelled,
        RejectReason::kMemoryPressure}) {
    EXPECT_GT(listener_.by_reason[static_cast<int>(reason)].load(), 0)
        << RejectReasonName(reason);
  }
}

TEST_P(ControllerPropertyTest, LedgerHoldsAndEveryRequestIsAnsweredOnce) {
  Barrier barrier(kThreads);
  std::atomic<int> checkpoints{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back(
        [&, t] { Worker(this, t).Run(&barrier, &checkpoints); });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(checkpoints.load(), kOpsPerThread / kCheckpointEvery);

  ReleaseEverything();
  CheckLedger();
  CheckNothingLeft();
  CheckEveryCallAnsweredOnce();
  if (HasFatalFailure()) return;  // as the ASSERT_EQ there would
  CheckReachedInterestingStates();
}

INSTANTIATE_TEST_SUITE_P(ActivationMaxAndSum, ControllerPropertyTest,
                         ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Sum" : "Max";
                         });

}  // namespace
}  // namespace kvgate
