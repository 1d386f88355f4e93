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

class ControllerPropertyTest : public ::testing::TestWithParam<bool> {};

TEST_P(ControllerPropertyTest, LedgerHoldsAndEveryRequestIsAnsweredOnce) {
  FakeClock clock;
  ByteListener listener;
  Controller::Options options;
  options.capacity_bytes = kCapacity;
  options.activation_sum = GetParam();
  options.max_queue_requests = 64;
  options.max_queue_wait = absl::Seconds(2);
  options.lease_ttl = absl::Seconds(5);
  options.backfill_limit = 4;
  options.tenant_weights = {{"gold", 3.0}, {"bronze", 0.5}};
  options.listener = &listener;
  auto created = Controller::Create(options, &clock);
  ASSERT_TRUE(created.ok()) << created.status();
  Controller& controller = **created;

  Model model;
  constexpr int kCalls = kThreads * kOpsPerThread;
  std::vector<std::atomic<int>> answers(kCalls);
  std::vector<std::atomic<int>> accepted(kCalls);
  std::vector<AdmitCost> cost_of(kCalls);  // per call, written before Admit

  auto release = [&](const std::string& lease_id) {
    absl::StatusOr<uint64_t> freed = controller.Release(lease_id);
    EXPECT_TRUE(freed.ok()) << freed.status();
    absl::MutexLock lock(&model.mu);
    if (freed.value_or(0) > 0) {
      // Only one release frees anything, and exactly the lease's bytes.
      EXPECT_EQ(*freed, model.seen.at(lease_id));
      model.released_bytes += *freed;
    }
    model.live.erase(lease_id);
  };

  auto check_ledger = [&] {
    absl::Status invariants = controller.CheckInvariants();
    EXPECT_TRUE(invariants.ok()) << invariants;
    BudgetSnapshot s = controller.Snapshot();
    EXPECT_LE(s.reserved_bytes, kCapacity);
    EXPECT_EQ(s.reserved_bytes,
              s.kv_reserved_bytes + s.activation_reserve_bytes);
    absl::MutexLock lock(&model.mu);
    // Bytes of live leases = admitted - released - expired. Exact when
    // activations are summed; an upper bound when only the max is reserved.
    const uint64_t live = model.admitted_bytes - model.released_bytes -
                          listener.expired_bytes.load();
    if (options.activation_sum) {
      EXPECT_EQ(s.reserved_bytes, live);
    } else {
      EXPECT_LE(s.reserved_bytes, live);
    }
  };

  Barrier barrier(kThreads);
  std::atomic<int> checkpoints{0};
  auto worker = [&](int thread) {
    std::mt19937_64 rng(0x5eed + thread + (GetParam() ? 100 : 0));
    auto uniform = [&](uint64_t lo, uint64_t hi) {
      return std::uniform_int_distribution<uint64_t>(lo, hi)(rng);
    };
    const char* const kTenants[] = {"", "gold", "bronze"};
    std::vector<int> admit_calls;  // this thread's Admit calls, to retry
    // Mostly a recent lease (likely live), sometimes any lease ever issued.
    auto pick_lease = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(model.mu) {
      const size_t n = model.lease_ids.size();
      if (n == 0) return std::string();
      const size_t lo = uniform(0, 4) == 0 ? 0 : (n > 32 ? n - 32 : 0);
      return model.lease_ids[uniform(lo, n - 1)];
    };
    for (int op = 0; op < kOpsPerThread; ++op) {
      const int call = thread * kOpsPerThread + op;
      const uint64_t dice = uniform(0, 99);
      if (dice < 40) {
        AdmitTicket ticket;
        // Now and then retry an earlier id of this thread, with its cost.
        int origin = call;
        if (!admit_calls.empty() && uniform(0, 9) == 0) {
          origin = admit_calls[uniform(0, admit_calls.size() - 1)];
        }
        admit_calls.push_back(call);
        ticket.request_id = absl::StrCat("r", origin);
        ticket.tenant = kTenants[uniform(0, 2)];
        ticket.priority = static_cast<Priority>(uniform(0, 2));
        if (origin == call) {
          cost_of[call] = {uniform(1, 3000), uniform(0, 1500)};
        } else {
          cost_of[call] = cost_of[origin];
        }
        ticket.cost = cost_of[call];
        if (uniform(0, 3) == 0) {
          ticket.deadline = clock.Now() + absl::Milliseconds(uniform(0, 1500));
        }
        const uint64_t bytes =
            ticket.cost.kv_bytes + ticket.cost.activation_bytes;
        absl::StatusOr<uint64_t> handle = controller.Admit(
            std::move(ticket), [&, call, bytes](AdmitOutcome outcome) {
              answers[call].fetch_add(1);
              if (!outcome.admitted) return;
              EXPECT_EQ(outcome.reserved_bytes, bytes);
              absl::MutexLock lock(&model.mu);
              if (model.seen.emplace(outcome.lease_id, bytes).second) {
                model.admitted_bytes += bytes;
                model.live[outcome.lease_id] = bytes;
                model.lease_ids.push_back(outcome.lease_id);
              }
            });
        if (handle.ok()) {
          accepted[call].store(1);
          if (*handle != 0) {
            absl::MutexLock lock(&model.mu);
            model.handles.push_back(*handle);
          }
        } else {
          // The only error a well-formed ticket can get: its id is queued.
          EXPECT_EQ(handle.status().code(), absl::StatusCode::kAlreadyExists)
              << handle.status();
        }
      } else if (dice < 65) {
        std::string lease_id;
        {
          absl::MutexLock lock(&model.mu);
          lease_id = pick_lease();
        }
        if (!lease_id.empty()) release(lease_id);
      } else if (dice < 72) {
        std::string lease_id;
        {
          absl::MutexLock lock(&model.mu);
          lease_id = pick_lease();
        }
        if (!lease_id.empty()) {
          absl::StatusOr<absl::Duration> ttl = controller.Renew(lease_id);
          EXPECT_TRUE(ttl.ok() || absl::IsNotFound(ttl.status()))
              << ttl.status();
        }
      } else if (dice < 79) {
        uint64_t handle = 0;
        {
          absl::MutexLock lock(&model.mu);
          if (!model.handles.empty()) {
            handle = model.handles[uniform(0, model.handles.size() - 1)];
          }
        }
        if (handle != 0) controller.Cancel(handle);
      } else if (dice < 86) {
        controller.Tick();
      } else if (dice < 96) {
        clock.Advance(absl::Milliseconds(uniform(0, 250)));
      } else if (dice < 97 && thread == 0) {
        controller.SetMemoryPressure(uniform(0, 9) == 0);  // mostly off
      } else {
        BudgetSnapshot s = controller.Snapshot();
        EXPECT_LE(s.reserved_bytes, kCapacity);
        EXPECT_LE(s.queued_requests, 64u);
      }
      if ((op + 1) % kCheckpointEvery == 0) {
        barrier.Arrive([&] {
          check_ledger();
          ++checkpoints;
        });
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(checkpoints.load(), kOpsPerThread / kCheckpointEvery);

  // Release everything; what is still queued is admitted (then released) or
  // times out as the clock moves on.
  controller.SetMemoryPressure(false);
  for (int round = 0; round < 100; ++round) {
    std::vector<std::string> live;
    {
      absl::MutexLock lock(&model.mu);
      for (const auto& [id, bytes] : model.live) live.push_back(id);
    }
    for (const std::string& id : live) release(id);
    BudgetSnapshot s = controller.Snapshot();
    if (s.queued_requests == 0 && s.active_leases == 0) break;
    clock.Advance(absl::Seconds(1));
    controller.Tick();
  }
  check_ledger();
  BudgetSnapshot s = controller.Snapshot();
  EXPECT_EQ(s.reserved_bytes, 0u);
  EXPECT_EQ(s.queued_requests, 0u);
  EXPECT_EQ(s.queued_bytes, 0u);
  EXPECT_EQ(s.active_leases, 0u);
  {
    absl::MutexLock lock(&model.mu);
    EXPECT_EQ(model.admitted_bytes,
              model.released_bytes + listener.expired_bytes.load());
    EXPECT_GT(model.seen.size(), 100u);  // the run did admit things
  }

  int64_t total_accepted = 0;
  for (int call = 0; call < kCalls; ++call) {
    total_accepted += accepted[call].load();
    ASSERT_EQ(answers[call].load(), accepted[call].load())
        << "call " << call << " answered " << answers[call].load() << " times";
  }
  EXPECT_EQ(listener.decisions.load(), total_accepted);

  // The run reached the interesting states, not only the easy ones.
  std::string histogram;
  for (int r = 0; r < 8; ++r) {
    absl::StrAppend(&histogram, " ",
                    RejectReasonName(static_cast<RejectReason>(r)), "=",
                    listener.by_reason[r].load());
  }
  SCOPED_TRACE(histogram);
  std::printf("decisions:%s, admitted after queueing=%lld\n", histogram.c_str(),
              static_cast<long long>(listener.admitted_after_queueing.load()));
  EXPECT_GT(listener.admitted_after_queueing.load(), 0);
  EXPECT_GT(listener.expired_bytes.load(), 0u);
  for (RejectReason reason :
       {RejectReason::kQueueTimeout, RejectReason::kCancelled,
        RejectReason::kMemoryPressure}) {
    EXPECT_GT(listener.by_reason[static_cast<int>(reason)].load(), 0)
        << RejectReasonName(reason);
  }
}

INSTANTIATE_TEST_SUITE_P(ActivationMaxAndSum, ControllerPropertyTest,
                         ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Sum" : "Max";
                         });

}  // namespace
}  // namespace kvgate
