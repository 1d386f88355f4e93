#include "metrics/metrics.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "plugin/admission/clock.h"
#include "plugin/admission/controller.h"
#include "prometheus/text_serializer.h"
#include "tests/testing/fake_clock.h"

namespace kvgate {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsSupersetOf;
using ::testing::Not;

// The registry in the text exposition format, one element per line.
std::vector<std::string> Scrape(const KvgateMetrics& metrics) {
  std::string text =
      prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

std::string Decision(const std::string& model, const std::string& decision,
                     const std::string& reason, const std::string& priority,
                     int value) {
  return "kvgate_admission_decisions_total{decision=\"" + decision +
         "\",model=\"" + model + "\",priority=\"" + priority + "\",reason=\"" +
         reason + "\"} " + std::to_string(value);
}

int CountStartingWith(const std::vector<std::string>& lines,
                      const std::string& prefix) {
  int n = 0;
  for (const auto& line : lines) n += line.rfind(prefix, 0) == 0;
  return n;
}

KvgateMetrics::Options TestOptions() {
  KvgateMetrics::Options options;
  options.version = "1.2.3";
  options.revision = "abcdef";
  return options;
}

TEST(KvgateMetricsTest, BuildInfoCarriesVersionAndRevision) {
  KvgateMetrics metrics(TestOptions());
  EXPECT_THAT(Scrape(metrics),
              IsSupersetOf(std::vector<std::string>{
                  "# TYPE kvgate_build_info gauge",
                  "kvgate_build_info{revision=\"abcdef\",version=\"1.2.3\"} 1",
              }));
}

TEST(KvgateMetricsTest, KnownMemorySourcesStartAtZero) {
  KvgateMetrics metrics(TestOptions());
  EXPECT_THAT(Scrape(metrics),
              IsSupersetOf(std::vector<std::string>{
                  "# TYPE kvgate_memory_source_errors_total counter",
                  "kvgate_memory_source_errors_total{source=\"static\"} 0",
                  "kvgate_memory_source_errors_total{source=\"nvml\"} 0",
              }));
}

TEST(KvgateMetricsTest, NoModelSeriesBeforeAModelIsNamed) {
  KvgateMetrics metrics(TestOptions());
  const std::vector<std::string> lines = Scrape(metrics);
  EXPECT_EQ(CountStartingWith(lines, "kvgate_admission_decisions_total{"), 0);
  EXPECT_EQ(CountStartingWith(lines, "kvgate_budget_"), 0);
}

TEST(KvgateMetricsTest, ListenerPreResolvesEveryDecisionSeries) {
  KvgateMetrics metrics(TestOptions());
  ControllerListener* listener = metrics.ListenerFor("llama");
  EXPECT_EQ(listener, metrics.ListenerFor("llama"));
  const std::vector<std::string> lines = Scrape(metrics);
  // (ADMITTED/NONE + 7 rejection reasons) x 3 priorities.
  EXPECT_EQ(CountStartingWith(lines, "kvgate_admission_decisions_total{"), 24);
  EXPECT_THAT(
      lines, IsSupersetOf(std::vector<std::string>{
                 Decision("llama", "ADMITTED", "NONE", "CRITICAL", 0),
                 Decision("llama", "REJECTED", "QUEUE_TIMEOUT", "SHEDDABLE", 0),
                 Decision("llama", "REJECTED", "CANCELLED", "STANDARD", 0),
                 "kvgate_lease_expirations_total{model=\"llama\"} 0",
                 "kvgate_queue_wait_seconds_count{model=\"llama\"} 0",
                 "kvgate_budget_capacity_bytes{model=\"llama\"} 0",
                 "kvgate_queue_requests{model=\"llama\",priority="
                 "\"SHEDDABLE\"} 0",
             }));
  // An admission is never labelled with a rejection reason and vice versa.
  EXPECT_THAT(
      lines,
      Not(Contains(HasSubstr("decision=\"ADMITTED\",model=\"llama\",priority="
                             "\"CRITICAL\",reason=\"QUEUE_FULL\""))));
  EXPECT_THAT(
      lines, Not(Contains(HasSubstr("decision=\"REJECTED\",model=\"llama\","
                                    "priority=\"CRITICAL\",reason=\"NONE\""))));
}

TEST(KvgateMetricsTest, DecisionsAreCountedByDecisionReasonAndPriority) {
  KvgateMetrics metrics(TestOptions());
  ControllerListener* listener = metrics.ListenerFor("llama");
  AdmitOutcome admitted;
  admitted.admitted = true;
  AdmitOutcome full;
  full.reason = RejectReason::kQueueFull;
  listener->OnDecision(Priority::kStandard, admitted);
  listener->OnDecision(Priority::kStandard, admitted);
  listener->OnDecision(Priority::kSheddable, full);
  EXPECT_THAT(Scrape(metrics),
              IsSupersetOf(std::vector<std::string>{
                  Decision("llama", "ADMITTED", "NONE", "STANDARD", 2),
                  Decision("llama", "ADMITTED", "NONE", "CRITICAL", 0),
                  Decision("llama", "REJECTED", "QUEUE_FULL", "SHEDDABLE", 1),
                  Decision("llama", "REJECTED", "QUEUE_FULL", "STANDARD", 0),
              }));
}

TEST(KvgateMetricsTest, QueueWaitObservesOnlyRequestsThatWaited) {
  KvgateMetrics metrics(TestOptions());
  ControllerListener* listener = metrics.ListenerFor("llama");
  AdmitOutcome at_once;
  at_once.admitted = true;
  AdmitOutcome waited;
  waited.admitted = true;
  waited.queued_for = absl::Milliseconds(3);
  AdmitOutcome timed_out;
  timed_out.reason = RejectReason::kQueueTimeout;
  timed_out.queued_for = absl::Seconds(30);
  listener->OnDecision(Priority::kStandard, at_once);
  listener->OnDecision(Priority::kStandard, waited);
  listener->OnDecision(Priority::kCritical, timed_out);
  EXPECT_THAT(
      Scrape(metrics),
      IsSupersetOf(std::vector<std::string>{
          "# TYPE kvgate_queue_wait_seconds histogram",
          "kvgate_queue_wait_seconds_count{model=\"llama\"} 2",
          "kvgate_queue_wait_seconds_sum{model=\"llama\"} 30.003",
          "kvgate_queue_wait_seconds_bucket{model=\"llama\",le=\"0.0025\"} 0",
          "kvgate_queue_wait_seconds_bucket{model=\"llama\",le=\"0.005\"} 1",
          "kvgate_queue_wait_seconds_bucket{model=\"llama\",le=\"10\"} 1",
          "kvgate_queue_wait_seconds_bucket{model=\"llama\",le=\"30\"} 2",
          "kvgate_queue_wait_seconds_bucket{model=\"llama\",le=\"+Inf\"} 2",
      }));
}

TEST(KvgateMetricsTest, AdmitDurationBucketsRunFrom50MicrosecondsTo30Seconds) {
  KvgateMetrics metrics(TestOptions());
  metrics.ObserveAdmitDuration(absl::Microseconds(50));
  metrics.ObserveAdmitDuration(absl::Minutes(1));
  const std::vector<std::string> lines = Scrape(metrics);
  EXPECT_THAT(lines,
              IsSupersetOf(std::vector<std::string>{
                  "# TYPE kvgate_admit_duration_seconds histogram",
                  "kvgate_admit_duration_seconds_bucket{le=\"5e-05\"} 1",
                  "kvgate_admit_duration_seconds_bucket{le=\"0.0001\"} 1",
                  "kvgate_admit_duration_seconds_bucket{le=\"30\"} 1",
                  "kvgate_admit_duration_seconds_bucket{le=\"+Inf\"} 2",
                  "kvgate_admit_duration_seconds_count 2",
                  "kvgate_admit_duration_seconds_sum 60.00005",
              }));
  // 18 finite bounds plus +Inf.
  EXPECT_EQ(CountStartingWith(lines, "kvgate_admit_duration_seconds_bucket"),
            19);
}

TEST(KvgateMetricsTest, SetBudgetSetsEveryModelGauge) {
  KvgateMetrics metrics(TestOptions());
  BudgetSnapshot s;
  s.capacity_bytes = 60'000'000'000;
  s.reserved_bytes = 3'000'000'000;
  s.kv_reserved_bytes = 2'500'000'000;
  s.activation_reserve_bytes = 500'000'000;
  s.free_bytes = 57'000'000'000;
  s.active_leases = 7;
  s.queued_requests = 4;
  s.queued_by_priority = {1, 3, 0};
  s.queued_bytes = 900'000'000;
  s.memory_pressure = true;
  metrics.SetBudget("qwen", s, 15'231'233'024);
  EXPECT_THAT(
      Scrape(metrics),
      IsSupersetOf(std::vector<std::string>{
          "kvgate_budget_capacity_bytes{model=\"qwen\"} 60000000000",
          "kvgate_budget_weights_bytes{model=\"qwen\"} 15231233024",
          "kvgate_budget_reserved_bytes{model=\"qwen\"} 3000000000",
          "kvgate_budget_free_bytes{model=\"qwen\"} 57000000000",
          "kvgate_budget_activation_reserve_bytes{model=\"qwen\"} 500000000",
          "kvgate_active_leases{model=\"qwen\"} 7",
          "kvgate_queue_requests{model=\"qwen\",priority=\"CRITICAL\"} 1",
          "kvgate_queue_requests{model=\"qwen\",priority=\"STANDARD\"} 3",
          "kvgate_queue_requests{model=\"qwen\",priority=\"SHEDDABLE\"} 0",
          "kvgate_queue_bytes{model=\"qwen\"} 900000000",
          "kvgate_memory_pressure{model=\"qwen\"} 1",
      }));
  metrics.SetMemoryPressure("qwen", false);
  EXPECT_THAT(Scrape(metrics),
              Contains("kvgate_memory_pressure{model=\"qwen\"} 0"));
}

TEST(KvgateMetricsTest, SetDevicesReportsEachDeviceByUuid) {
  KvgateMetrics metrics(TestOptions());
  // An H100 80GB HBM3 as NVML v1 reports it before any process runs
  // (docs/design.md, "Memory model"): 503,316,480 bytes reserved by the driver
  // show as used.
  DeviceMemory h100;
  h100.uuid = "GPU-5f3a";
  h100.total_bytes = 85'520'809'984;
  h100.used_bytes = 503'316'480;
  h100.free_bytes = h100.total_bytes - h100.used_bytes;
  DeviceMemory sim;
  sim.uuid = "sim-1";
  sim.index = 1;
  sim.total_bytes = 1000;
  sim.free_bytes = 1000;
  metrics.SetDevices({h100, sim});
  sim.free_bytes = 400;
  sim.used_bytes = 600;
  metrics.SetDevices({h100, sim});
  const std::vector<std::string> lines = Scrape(metrics);
  EXPECT_THAT(
      lines, IsSupersetOf(std::vector<std::string>{
                 "kvgate_device_total_bytes{gpu_uuid=\"GPU-5f3a\"} 85520809984",
                 "kvgate_device_free_bytes{gpu_uuid=\"GPU-5f3a\"} 85017493504",
                 "kvgate_device_used_bytes{gpu_uuid=\"GPU-5f3a\"} 503316480",
                 "kvgate_device_free_bytes{gpu_uuid=\"sim-1\"} 400",
                 "kvgate_device_used_bytes{gpu_uuid=\"sim-1\"} 600",
             }));
  EXPECT_EQ(CountStartingWith(lines, "kvgate_device_free_bytes{"), 2);
}

TEST(KvgateMetricsTest, MemorySourceErrorsCountPerSource) {
  KvgateMetrics metrics(TestOptions());
  metrics.IncMemorySourceError("nvml");
  metrics.IncMemorySourceError("nvml");
  metrics.IncMemorySourceError("engine");
  EXPECT_THAT(Scrape(metrics),
              IsSupersetOf(std::vector<std::string>{
                  "kvgate_memory_source_errors_total{source=\"nvml\"} 2",
                  "kvgate_memory_source_errors_total{source=\"static\"} 0",
                  "kvgate_memory_source_errors_total{source=\"engine\"} 1",
              }));
}

TEST(KvgateMetricsTest, RegistryOutlivesTheMetricsObject) {
  std::shared_ptr<prometheus::Registry> registry;
  {
    KvgateMetrics metrics(TestOptions());
    metrics.ObserveAdmitDuration(absl::Milliseconds(1));
    registry = metrics.registry();
  }
  const std::string text =
      prometheus::TextSerializer().Serialize(registry->Collect());
  EXPECT_THAT(text, HasSubstr("kvgate_admit_duration_seconds_count 1\n"));
}

TEST(KvgateMetricsTest, ConcurrentDecisionsAreAllCounted) {
  KvgateMetrics metrics(TestOptions());
  ControllerListener* listener = metrics.ListenerFor("llama");
  constexpr int kThreads = 4;
  constexpr int kPerThread = 10000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      AdmitOutcome outcome;
      outcome.admitted = true;
      outcome.queued_for = absl::Microseconds(200);
      for (int i = 0; i < kPerThread; ++i) {
        listener->OnDecision(Priority::kCritical, outcome);
        metrics.ObserveAdmitDuration(absl::Microseconds(80));
      }
    });
  }
  // Scrape while the threads count, as Prometheus would.
  for (int i = 0; i < 20; ++i) Scrape(metrics);
  for (auto& t : threads) t.join();
  const int total = kThreads * kPerThread;
  EXPECT_THAT(
      Scrape(metrics),
      IsSupersetOf(std::vector<std::string>{
          Decision("llama", "ADMITTED", "NONE", "CRITICAL", total),
          "kvgate_queue_wait_seconds_count{model=\"llama\"} " +
              std::to_string(total),
          "kvgate_admit_duration_seconds_count " + std::to_string(total),
      }));
}

// The listener wired into a real controller on a fake clock.
class ControllerWiringTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Controller::Options options;
    options.capacity_bytes = 1000;
    options.lease_ttl = absl::Minutes(1);
    options.listener = metrics_.ListenerFor("llama");
    auto controller = Controller::Create(options, &clock_);
    ASSERT_TRUE(controller.ok()) << controller.status();
    controller_ = *std::move(controller);
  }

  // Admits `kv_bytes` at STANDARD; the outcome lands in *out when answered.
  void Admit(const std::string& id, uint64_t kv_bytes, AdmitOutcome* out) {
    AdmitTicket ticket;
    ticket.request_id = id;
    ticket.cost.kv_bytes = kv_bytes;
    ASSERT_TRUE(controller_
                    ->Admit(std::move(ticket),
                            [out](AdmitOutcome o) { *out = std::move(o); })
                    .ok());
  }

  FakeClock clock_;
  KvgateMetrics metrics_{TestOptions()};
  std::unique_ptr<Controller> controller_;
};

TEST_F(ControllerWiringTest, CountsAdmitQueueRejectAndExpiry) {
  AdmitOutcome first, second, huge;
  Admit("first", 600, &first);
  Admit("second", 600, &second);  // waits for "first"
  Admit("huge", 5000, &huge);     // can never fit
  ASSERT_TRUE(first.admitted);
  ASSERT_EQ(huge.reason, RejectReason::kNeverFits);
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(controller_->Release(first.lease_id).ok());
  ASSERT_TRUE(second.admitted);
  metrics_.SetBudget("llama", controller_->Snapshot(), 0);
  clock_.Advance(absl::Minutes(2));
  controller_->Tick();  // "second" expires

  EXPECT_THAT(
      Scrape(metrics_),
      IsSupersetOf(std::vector<std::string>{
          Decision("llama", "ADMITTED", "NONE", "STANDARD", 2),
          Decision("llama", "REJECTED", "NEVER_FITS", "STANDARD", 1),
          "kvgate_queue_wait_seconds_count{model=\"llama\"} 1",
          "kvgate_queue_wait_seconds_bucket{model=\"llama\",le=\"1\"} 0",
          "kvgate_queue_wait_seconds_bucket{model=\"llama\",le=\"2.5\"} 1",
          "kvgate_lease_expirations_total{model=\"llama\"} 1",
          "kvgate_active_leases{model=\"llama\"} 1",
          "kvgate_budget_reserved_bytes{model=\"llama\"} 600",
          "kvgate_budget_free_bytes{model=\"llama\"} 400",
      }));
}

}  // namespace
}  // namespace kvgate
