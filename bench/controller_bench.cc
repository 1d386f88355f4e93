// Cost of the controller's decision on its own, without gRPC: an admit and a
// release uncontended, the same with two threads on one controller, and both
// with 10 to 10,000 requests waiting in the queue (the cost must stay flat,
// not grow with the queue). The target is well under a microsecond per
// admit + release pair, uncontended.
//
// Queued entries are SHEDDABLE requests that cannot fit while a blocker lease
// holds the budget; the measured requests are CRITICAL, so they are decided
// at once (admitted) or, in BM_QueueCancel, queued behind the blocker and
// cancelled.
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "benchmark/benchmark.h"
#include "plugin/admission/clock.h"
#include "plugin/admission/controller.h"

namespace kvgate {
namespace {

constexpr uint64_t kCapacity = uint64_t{64} << 30;   // 64 GiB
constexpr uint64_t kRequestKv = uint64_t{32} << 20;  // a 256-token llama-3-8b
constexpr uint64_t kRequestActivation = uint64_t{8} << 20;

std::unique_ptr<Controller> MakeController() {
  Controller::Options options;
  options.capacity_bytes = kCapacity;
  options.max_queue_requests = 100000;
  options.max_queue_bytes = ~uint64_t{0} >> 1;
  options.max_queue_wait = absl::Hours(1);
  absl::StatusOr<std::unique_ptr<Controller>> made =
      Controller::Create(options, RealClock());
  if (!made.ok()) std::abort();
  return *std::move(made);
}

AdmitTicket Ticket(std::string request_id, Priority priority, uint64_t kv) {
  AdmitTicket ticket;
  ticket.request_id = std::move(request_id);
  ticket.tenant = "bench";
  ticket.priority = priority;
  ticket.cost = {kv, kRequestActivation};
  return ticket;
}

// Admits one ticket and returns its lease id ("" if it was not admitted).
std::string AdmitNow(Controller& controller, AdmitTicket ticket) {
  std::string lease;
  absl::StatusOr<uint64_t> handle =
      controller.Admit(std::move(ticket), [&lease](AdmitOutcome outcome) {
        if (outcome.admitted) lease = std::move(outcome.lease_id);
      });
  if (!handle.ok()) std::abort();
  return lease;
}

// Takes all of the budget but kRequestKv + activation with one lease, then
// queues `queued` SHEDDABLE requests that cannot fit until it is released.
std::string FillAndQueue(Controller& controller, int64_t queued) {
  const std::string blocker = AdmitNow(
      controller, Ticket("blocker", Priority::kCritical,
                         kCapacity - 2 * kRequestKv - kRequestActivation));
  if (blocker.empty()) std::abort();
  for (int64_t i = 0; i < queued; ++i) {
    absl::StatusOr<uint64_t> handle =
        controller.Admit(Ticket(absl::StrCat("queued-", i),
                                Priority::kSheddable, 4 * kRequestKv),
                         [](AdmitOutcome) {});
    if (!handle.ok() || *handle == 0) std::abort();
  }
  if (controller.Snapshot().queued_requests != queued) std::abort();
  return blocker;
}

// One admit (decided at once) and its release, with state.range(0) requests
// queued that cannot fit.
void BM_AdmitRelease(benchmark::State& state) {
  std::unique_ptr<Controller> controller = MakeController();
  FillAndQueue(*controller, state.range(0));
  const std::string request_id = "bench-request";
  for (auto _ : state) {
    std::string lease = AdmitNow(
        *controller, Ticket(request_id, Priority::kCritical, kRequestKv));
    absl::StatusOr<uint64_t> freed = controller->Release(lease);
    benchmark::DoNotOptimize(freed);
  }
  state.counters["queued"] = static_cast<double>(state.range(0));
  state.SetItemsProcessed(state.iterations());
  if (!controller->CheckInvariants().ok()) state.SkipWithError("invariants");
}
BENCHMARK(BM_AdmitRelease)->Arg(0)->Arg(10)->Arg(100)->Arg(1000)->Arg(10000);

// One admit that must queue (the budget is full) and its cancel, with
// state.range(0) other requests queued.
void BM_QueueCancel(benchmark::State& state) {
  std::unique_ptr<Controller> controller = MakeController();
  FillAndQueue(*controller, state.range(0));
  // Leave room for kRequestKv only: a 2 * kRequestKv request must wait.
  const std::string filler =
      AdmitNow(*controller, Ticket("filler", Priority::kCritical, kRequestKv));
  if (filler.empty()) std::abort();
  const std::string request_id = "bench-request";
  for (auto _ : state) {
    absl::StatusOr<uint64_t> handle = controller->Admit(
        Ticket(request_id, Priority::kCritical, 2 * kRequestKv),
        [](AdmitOutcome) {});
    if (!handle.ok() || *handle == 0) {
      state.SkipWithError("the request was not queued");
      break;
    }
    controller->Cancel(*handle);
  }
  state.counters["queued"] = static_cast<double>(state.range(0));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_QueueCancel)->Arg(0)->Arg(10)->Arg(100)->Arg(1000)->Arg(10000);

// Two threads admitting and releasing on one controller: the lock's cost
// under contention. Each thread uses its own request ids.
Controller* shared_controller = nullptr;

void SetUpShared(const benchmark::State&) {
  shared_controller = MakeController().release();
}
void TearDownShared(const benchmark::State&) {
  delete shared_controller;
  shared_controller = nullptr;
}

void BM_AdmitReleaseContended(benchmark::State& state) {
  const std::string request_id = absl::StrCat("thread-", state.thread_index());
  for (auto _ : state) {
    std::string lease =
        AdmitNow(*shared_controller,
                 Ticket(request_id, Priority::kStandard, kRequestKv));
    absl::StatusOr<uint64_t> freed = shared_controller->Release(lease);
    benchmark::DoNotOptimize(freed);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AdmitReleaseContended)
    ->Setup(SetUpShared)
    ->Teardown(TearDownShared)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();

}  // namespace
}  // namespace kvgate

// kvgated turns Abseil's lock-order graph off at start-up (Debian builds
// Abseil with it on); the controller is measured as it runs there.
int main(int argc, char** argv) {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
