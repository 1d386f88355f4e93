#include "bench/loadgen/driver.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "bench/loadgen/stats.h"
#include "nlohmann/json.hpp"

namespace kvgate::loadgen {
namespace {

using kvgate::v1::AdmitRequest;
using kvgate::v1::AdmitResponse;

// --------------------------------------------------------------- Driver ---

// Runs `workload` for up to `duration` and `max_ops` operations, closed loop
// (`concurrency` in flight) or open loop (`rate` per second, at most
// `concurrency` in flight; starts beyond that are counted as skipped).
// Returns the seconds until the last operation finished.
class Driver {
 public:
  Driver(Workload* workload, size_t channels, int concurrency, double rate)
      : workload_(workload),
        channels_(channels),
        concurrency_(concurrency),
        rate_(rate) {}

  double Run(int64_t max_ops, absl::Duration duration, Stats* stats,
             int server_pid) {
    workload_->set_stats(stats);
    max_ops_ = max_ops;
    stop_ = false;
    issued_ = 0;
    const ProcessSample before = ReadProcess(server_pid);
    const double client_before = SelfCpuSeconds();
    const int64_t start = NowNanos();
    if (rate_ > 0) {
      RunOpenLoop(duration);
    } else {
      active_ = concurrency_;
      for (int slot = 0; slot < concurrency_; ++slot) Next(slot);
      all_done_.WaitForNotificationWithTimeout(duration);
      stop_ = true;
      all_done_.WaitForNotification();
    }
    const double seconds = static_cast<double>(NowNanos() - start) / 1e9;
    const ProcessSample after = ReadProcess(server_pid);
    stats->client_cpu_seconds += SelfCpuSeconds() - client_before;
    stats->seconds += seconds;
    if (before.cpu_seconds >= 0 && after.cpu_seconds >= 0) {
      stats->server_cpu_seconds = std::max(0.0, stats->server_cpu_seconds) +
                                  after.cpu_seconds - before.cpu_seconds;
    }
    return seconds;
  }
  uint64_t skipped() const { return skipped_; }

 private:
  void Next(int slot) {
    if (stop_.load(std::memory_order_relaxed) ||
        issued_.fetch_add(1, std::memory_order_relaxed) >= max_ops_) {
      if (active_.fetch_sub(1) == 1) all_done_.Notify();
      return;
    }
    workload_->Start(static_cast<size_t>(slot) % channels_,
                     [this, slot] { Next(slot); });
  }

  void RunOpenLoop(absl::Duration duration) {
    std::atomic<int> in_flight{0};
    absl::Mutex mu;
    const absl::Time start = absl::Now();
    const absl::Time end = start + duration;
    for (int64_t i = 0; i < max_ops_; ++i) {
      const absl::Time at = start + absl::Seconds(i / rate_);
      if (at >= end) break;
      absl::SleepFor(at - absl::Now());
      if (in_flight.load() >= concurrency_) {
        ++skipped_;
        continue;
      }
      in_flight.fetch_add(1);
      workload_->Start(static_cast<size_t>(i) % channels_,
                       [&in_flight] { in_flight.fetch_sub(1); });
    }
    while (in_flight.load() > 0) absl::SleepFor(absl::Milliseconds(1));
  }

  Workload* const workload_;
  const size_t channels_;
  const int concurrency_;
  const double rate_;
  int64_t max_ops_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> issued_{0};
  std::atomic<int> active_{0};
  absl::Notification all_done_;
  uint64_t skipped_ = 0;
};

// Runs one phase on a fresh driver (a Notification fires once).
double RunPhase(Workload* workload, const Client& client, absl::Duration d,
                int64_t max_ops, Stats* stats, const LoadOptions& options) {
  Driver driver(workload, client.size(), options.concurrency, options.rate);
  return driver.Run(max_ops, d, stats, options.server_pid);
}

// The settings every report starts with.
nlohmann::json Header(const std::string& mode, const LoadOptions& options) {
  return {{"mode", mode},
          {"address", options.address},
          {"concurrency", options.concurrency},
          {"rate", options.rate},
          {"channels", options.channels},
          {"model", options.workload.model}};
}

// -------------------------------------------------------------- Compare ---

// Runs `rounds` rounds of one `admit` phase and one `noop` phase each, in
// ABBA order, recording into `admit_stats` and `noop_stats`. Returns the
// throughput ratio (admit / noop) of each round's two adjacent phases,
// sorted: the machine's speed (a shared VM's steal time) changes over
// seconds, and a round's two phases see nearly the same machine.
std::vector<double> RunRounds(Workload* admit, Workload* noop,
                              const Client& client, const LoadOptions& options,
                              int rounds, Stats* admit_stats,
                              Stats* noop_stats) {
  const absl::Duration phase = options.duration / (2 * rounds);
  const int64_t max_ops = options.requests / (2 * rounds);
  std::vector<double> round_ratios;
  auto rate_of = [](const Stats& s, uint64_t ops, double seconds) {
    const double dt = s.seconds - seconds;
    return dt > 0 ? static_cast<double>(s.ops.load() - ops) / dt : 0.0;
  };
  for (int r = 0; r < rounds; ++r) {
    // ABBA order, so a drift in the machine's load falls on both alike.
    const bool admit_first = r % 2 == 0;
    const uint64_t admit_ops = admit_stats->ops.load();
    const uint64_t noop_ops = noop_stats->ops.load();
    const double admit_seconds = admit_stats->seconds;
    const double noop_seconds = noop_stats->seconds;
    for (int k = 0; k < 2; ++k) {
      if ((k == 0) == admit_first) {
        RunPhase(admit, client, phase, max_ops, admit_stats, options);
      } else {
        RunPhase(noop, client, phase, max_ops, noop_stats, options);
      }
    }
    const double noop_rate = rate_of(*noop_stats, noop_ops, noop_seconds);
    if (noop_rate > 0) {
      round_ratios.push_back(rate_of(*admit_stats, admit_ops, admit_seconds) /
                             noop_rate);
    }
  }
  std::sort(round_ratios.begin(), round_ratios.end());
  return round_ratios;
}

// The "ratios" object of the comparison: throughput pooled over all phases
// and per round (median, min, max), latency and server CPU; `checks` holds
// both Check calls' latencies.
nlohmann::json CompareRatios(const Stats& admit_stats, const Stats& noop_stats,
                             const Histogram& checks,
                             const std::vector<double>& round_ratios) {
  double median_ratio = 0;
  if (!round_ratios.empty()) {
    const size_t n = round_ratios.size();
    median_ratio = (round_ratios[(n - 1) / 2] + round_ratios[n / 2]) / 2;
  }
  const double admit_rate = admit_stats.ops / admit_stats.seconds;
  const double noop_rate = noop_stats.ops / noop_stats.seconds;
  auto ratio = [](double a, double b) {
    return b > 0 ? std::round(a / b * 1000) / 1000 : 0;
  };
  return {
      {"throughput", ratio(admit_rate, noop_rate)},
      {"throughput_median_of_rounds", ratio(median_ratio, 1.0)},
      {"throughput_rounds_min_max",
       {round_ratios.empty() ? 0 : ratio(round_ratios.front(), 1.0),
        round_ratios.empty() ? 0 : ratio(round_ratios.back(), 1.0)}},
      {"p99_admit_over_check", ratio(admit_stats.first.PercentileMicros(0.99),
                                     checks.PercentileMicros(0.99))},
      {"p99_pair", ratio(admit_stats.op.PercentileMicros(0.99),
                         noop_stats.op.PercentileMicros(0.99))},
      {"server_cpu_per_operation",
       admit_stats.server_cpu_seconds >= 0 && noop_stats.server_cpu_seconds > 0
           ? ratio(admit_stats.server_cpu_seconds / admit_stats.ops,
                   noop_stats.server_cpu_seconds / noop_stats.ops)
           : 0},
      {"p50_admit_over_check", ratio(admit_stats.first.PercentileMicros(0.5),
                                     checks.PercentileMicros(0.5))}};
}

// ------------------------------------------------------------ Hold mode ---

// The Admit every held request copies: one sequence of the flags' lengths.
AdmitRequest HoldShape(const LoadOptions& options) {
  AdmitRequest shape;
  shape.set_model(options.workload.model);
  shape.set_tenant("hold");
  auto* seq = shape.add_sequences();
  seq->set_prompt_tokens(options.workload.prompt_tokens);
  seq->set_max_new_tokens(options.workload.max_new_tokens);
  return shape;
}

// Admits synchronously until the budget is full; returns the leases.
std::vector<std::string> FillBudget(const Client& client, AdmitRequest request,
                                    int* queued_then_timed_out) {
  std::vector<std::string> leases;
  google::protobuf::Duration* wait = request.mutable_max_queue_wait();
  wait->set_seconds(0);
  wait->set_nanos(1000000);  // 1 ms: a request that must queue times out
  for (int i = 0; i < 100000; ++i) {
    request.set_request_id(absl::StrCat("fill-", i));
    grpc::ClientContext context;
    SetDeadline(&context, absl::Seconds(10));
    AdmitResponse response;
    grpc::Status s = client.stub(0)->Admit(&context, request, &response);
    if (!s.ok() || response.decision() != kvgate::v1::ADMITTED) {
      if (s.ok()) *queued_then_timed_out = 1;
      break;
    }
    leases.push_back(response.lease_id());
  }
  return leases;
}

absl::StatusOr<kvgate::v1::Budget> GetBudget(const Client& client,
                                             const std::string& model) {
  kvgate::v1::GetBudgetRequest request;
  request.set_model(model);
  kvgate::v1::Budget budget;
  grpc::ClientContext context;
  SetDeadline(&context, absl::Seconds(10));
  grpc::Status s = client.stub(0)->GetBudget(&context, request, &budget);
  if (!s.ok()) return absl::UnavailableError(s.error_message());
  return budget;
}

bool ReleaseLease(const Client& client, const std::string& lease) {
  kvgate::v1::ReleaseRequest request;
  request.set_lease_id(lease);
  kvgate::v1::ReleaseResponse response;
  grpc::ClientContext context;
  SetDeadline(&context, absl::Seconds(10));
  return client.stub(0)->Release(&context, request, &response).ok();
}

// The held Admits' shared state; lives until every one is answered.
struct HoldState {
  explicit HoldState(int n) : n(n) {}
  const int n;
  Stats stats;
  std::atomic<int> answered{0};
  absl::Notification all_answered;
};

// One held Admit: once admitted, its lease is released at once, which lets
// the next one in.
struct Held {
  grpc::ClientContext admit_context, release_context;
  AdmitRequest request;
  AdmitResponse response;
  kvgate::v1::ReleaseRequest release;
  kvgate::v1::ReleaseResponse released;
};

// Counts `h` answered and frees it.
void FinishHeld(HoldState* state, Held* h) {
  delete h;
  if (state->answered.fetch_add(1) + 1 == state->n) {
    state->all_answered.Notify();
  }
}

// Starts state->n Admits of `shape` that may wait options.hold_wait in the
// queue, spread over the client's channels; `start` is when (NowNanos) the
// first was sent, for their latency.
void StartHeldAdmits(const Client& client, const AdmitRequest& shape,
                     const LoadOptions& options, int64_t start,
                     HoldState* state) {
  const absl::Duration wait = options.hold_wait;
  for (int i = 0; i < state->n; ++i) {
    auto* h = new Held;
    h->request = shape;
    h->request.set_request_id(absl::StrCat("held-", i));
    h->request.mutable_max_queue_wait()->set_seconds(
        absl::ToInt64Seconds(wait));
    SetDeadline(&h->admit_context, wait + options.workload.rpc_deadline);
    const size_t channel = static_cast<size_t>(i) % client.size();
    client.stub(channel)->async()->Admit(
        &h->admit_context, &h->request, &h->response,
        [&client, state, start, h, channel](grpc::Status s) {
          state->stats.first.Record(NowNanos() - start);
          if (!s.ok()) {
            state->stats.Error(s);
            return FinishHeld(state, h);
          }
          state->stats.outcomes[OutcomeIndex(h->response)].fetch_add(1);
          if (h->response.decision() != kvgate::v1::ADMITTED) {
            return FinishHeld(state, h);
          }
          h->release.set_lease_id(h->response.lease_id());
          SetDeadline(&h->release_context, absl::Seconds(30));
          client.stub(channel)->async()->Release(&h->release_context,
                                                 &h->release, &h->released,
                                                 [state, h](grpc::Status rs) {
                                                   if (!rs.ok())
                                                     state->stats.Error(rs);
                                                   FinishHeld(state, h);
                                                 });
        });
  }
}

// Polls the budget until the server reports `n` queued requests (at most a
// minute); returns the last count seen.
uint32_t WaitUntilQueued(const Client& client, const std::string& model,
                         int n) {
  uint32_t queued = 0;
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (absl::Now() < give_up) {
    absl::StatusOr<kvgate::v1::Budget> budget = GetBudget(client, model);
    if (budget.ok()) queued = budget->queued_requests();
    if (queued >= static_cast<uint32_t>(n)) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return queued;
}

// What hold mode saw of the server.
struct HoldSamples {
  size_t fill_leases = 0;
  uint32_t queued = 0;
  double queue_seconds = 0;
  ProcessSample idle, during, after;
  int max_threads = -1;
  bool drained = false;
  double drain_seconds = 0;
};

nlohmann::json HoldReport(const LoadOptions& options, const HoldSamples& s,
                          const HoldState& state) {
  const int n = state.n;
  nlohmann::json out = Header("hold", options);
  out["fill_leases"] = s.fill_leases;
  out["held_requests"] = n;
  out["queued_seen"] = s.queued;
  out["seconds_to_queue_all"] = s.queue_seconds;
  out["threads_idle"] = s.idle.threads;
  out["threads_queued"] = s.during.threads;
  out["threads_queued_max"] = s.max_threads;
  out["threads_after"] = s.after.threads;
  out["rss_idle_kib"] = s.idle.rss_kib;
  out["rss_queued_kib"] = s.during.rss_kib;
  out["rss_after_kib"] = s.after.rss_kib;
  if (s.idle.rss_kib >= 0 && n > 0) {
    out["rss_per_queued_bytes"] = std::round(
        static_cast<double>(s.during.rss_kib - s.idle.rss_kib) * 1024.0 / n);
  }
  out["all_answered"] = s.drained;
  out["answered"] = state.answered.load();
  out["drain_seconds"] = s.drain_seconds;
  out["decisions"] = state.stats.Decisions();
  out["errors"] = state.stats.ErrorCount();
  return out;
}

}  // namespace

// ---------------------------------------------------------------- Modes ---

int RunOne(const Client& client, const std::string& mode,
           const LoadOptions& options) {
  std::unique_ptr<TimerThread> timers;
  std::unique_ptr<Workload> workload;
  if (mode == "admit-release") {
    workload = MakeAdmitReleaseWorkload(&client, options.workload);
  } else if (mode == "noop") {
    workload = MakeNoopWorkload(&client, options.workload);
  } else {
    timers = std::make_unique<TimerThread>();
    workload = MakeMixedWorkload(&client, options.workload, timers.get());
  }
  if (options.warmup > absl::ZeroDuration() && mode != "mixed") {
    Stats discard;
    RunPhase(workload.get(), client, options.warmup, options.requests, &discard,
             options);
  }
  Stats stats;
  RunPhase(workload.get(), client, options.duration, options.requests, &stats,
           options);
  nlohmann::json out = Header(mode, options);
  out["result"] = mode == "noop" ? stats.Summary("check1", "check2", false)
                                 : stats.Summary("admit", "release", true);
  std::cout << out.dump(2) << std::endl;
  return 0;
}

int RunCompare(const Client& client, const LoadOptions& options) {
  std::unique_ptr<Workload> admit =
      MakeAdmitReleaseWorkload(&client, options.workload);
  std::unique_ptr<Workload> noop = MakeNoopWorkload(&client, options.workload);
  const int rounds = std::max(1, options.rounds);
  const int64_t max_ops = options.requests / (2 * rounds);
  {
    Stats discard;
    RunPhase(noop.get(), client, options.warmup, max_ops, &discard, options);
    RunPhase(admit.get(), client, options.warmup, max_ops, &discard, options);
  }
  Stats admit_stats, noop_stats;
  const std::vector<double> round_ratios =
      RunRounds(admit.get(), noop.get(), client, options, rounds, &admit_stats,
                &noop_stats);
  nlohmann::json out = Header("compare", options);
  out["rounds"] = rounds;
  out["admit_release"] = admit_stats.Summary("admit", "release", true);
  out["noop"] = noop_stats.Summary("check1", "check2", false);
  Histogram checks;
  checks.Merge(noop_stats.first);
  checks.Merge(noop_stats.second);
  out["ratios"] = CompareRatios(admit_stats, noop_stats, checks, round_ratios);
  out["noop"]["latency_us"]["check"] = checks.Summary();
  std::cout << out.dump(2) << std::endl;
  return 0;
}

int RunHold(const Client& client, const LoadOptions& options) {
  const int pid = options.server_pid;
  const AdmitRequest shape = HoldShape(options);
  HoldSamples samples;
  int full = 0;
  std::vector<std::string> fill = FillBudget(client, shape, &full);
  if (!full) {
    std::cerr << "kvgate-loadgen: could not fill the budget" << std::endl;
    return 1;
  }
  samples.fill_leases = fill.size();
  absl::SleepFor(absl::Milliseconds(200));
  samples.idle = ReadProcess(pid);

  HoldState state(options.hold_requests);
  const int64_t start = NowNanos();
  StartHeldAdmits(client, shape, options, start, &state);
  samples.queued =
      WaitUntilQueued(client, options.workload.model, options.hold_requests);
  samples.queue_seconds = static_cast<double>(NowNanos() - start) / 1e9;
  absl::SleepFor(absl::Milliseconds(500));
  samples.during = ReadProcess(pid);
  samples.max_threads = samples.during.threads;
  for (int i = 0; i < 10; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    samples.max_threads =
        std::max(samples.max_threads, ReadProcess(pid).threads);
  }
  // Release the budget: the queue drains through admit -> release cascades.
  const int64_t drain_start = NowNanos();
  for (const std::string& lease : fill) ReleaseLease(client, lease);
  samples.drained =
      state.all_answered.WaitForNotificationWithTimeout(absl::Seconds(120));
  samples.drain_seconds = static_cast<double>(NowNanos() - drain_start) / 1e9;
  absl::SleepFor(absl::Milliseconds(200));
  samples.after = ReadProcess(pid);

  std::cout << HoldReport(options, samples, state).dump(2) << std::endl;
  if (!samples.drained) {
    // Leave nothing behind holding stack references.
    std::cerr << "kvgate-loadgen: not every held Admit was answered"
              << std::endl;
    std::_Exit(1);
  }
  return 0;
}

}  // namespace kvgate::loadgen
