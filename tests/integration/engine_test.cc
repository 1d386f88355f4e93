// kvgated next to a preallocating engine (docs/design.md, "Engines"): the
// real kvgated binary scraping a local HTTP endpoint that serves pages
// shaped like current vLLM and SGLang /metrics output, changed while it
// runs, driven by a gRPC client.
#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/kvgated_process.h"
#include "tests/testing/fake_engine.h"

namespace kvgate {
namespace {

// Scrapes every 50 ms; a preemption pauses admission for 1 s.
constexpr absl::Duration kPoll = absl::Milliseconds(50);
constexpr char kCooldownSeconds[] = "1";

class EngineTest : public KvgatedTest {
 protected:
  // A gpt2 pool whose engine is `kind` at engine_.url(), on a simulated
  // H100, with its metrics endpoint on metrics_port_.
  void StartWithEngine(const std::string& kind) {
    absl::StatusOr<int> port = FreeTcpPort();
    ASSERT_TRUE(port.ok()) << port.status();
    metrics_port_ = *port;
    const std::string config = absl::StrCat(
        "models { name: \"", kModel, "\" preset: \"gpt2\" engine { kind: \"",
        kind, "\" metrics_url: \"", engine_.url(),
        "\" poll_interval { nanos: ", absl::ToInt64Nanoseconds(kPoll),
        " } preemption_cooldown { seconds: ", kCooldownSeconds, " } } }\n",
        "memory_source { static_source { gpu: \"H100-80GB\" } }\n",
        "queue { max_queue_wait { seconds: 5 } }\n");
    StartServer(ServerOptions(
        config, "",
        {absl::StrCat("--metrics_address=127.0.0.1:", metrics_port_)}));
  }

  // KV bytes of one token of gpt2, from kvgated's own Estimate.
  uint64_t KvBytesPerToken() {
    kvgate::v1::EstimateRequest request;
    request.set_model(kModel);
    auto* s = request.add_sequences();
    s->set_prompt_tokens(kPromptTokens);
    s->set_max_new_tokens(kMaxNewTokens);
    kvgate::v1::EstimateResponse response;
    const grpc::Status status = client().Estimate(request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.kv_cache_bytes_per_token();
  }

  double Metric(const std::string& series) {
    return MetricValue(ScrapeMetrics(metrics_port_), series);
  }
  std::string ModelSeries(const std::string& name) {
    return absl::StrCat(name, "{model=\"", kModel, "\"}");
  }

  // Polls until `done` holds; false after 5 s.
  template <typename F>
  bool WaitUntil(F done) {
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (absl::Now() < deadline) {
      if (done()) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return done();
  }

  // Admit with a short queue wait; the response (status OK expected).
  kvgate::v1::AdmitResponse TryAdmit(const std::string& id,
                                     absl::Duration wait) {
    return AdmitWaiting(id, wait);
  }

  // How many stderr lines contain `text`.
  int LogLines(const std::string& text) {
    int n = 0;
    for (absl::string_view line : absl::StrSplit(server_->Stderr(), '\n')) {
      if (absl::StrContains(line, text)) ++n;
    }
    return n;
  }

  FakeEngine engine_;
  int metrics_port_ = 0;
};

TEST_F(EngineTest, VllmPoolIsTheCapacityToTheByteAndLeasesReserveBlockKv) {
  // 2048 blocks of 16 tokens, 10% in use.
  engine_.SetPage(VllmPage("gpt2", 2048, 16, 0.1, 0));
  StartWithEngine("vllm");
  const uint64_t per_token = KvBytesPerToken();
  ASSERT_GT(per_token, 0u);
  kvgate::v1::Budget budget = GetBudget();
  EXPECT_EQ(budget.capacity_bytes(), uint64_t{2048} * 16 * per_token);
  // The shape is 128 tokens: 8 whole blocks, KV only (no activation).
  kvgate::v1::AdmitResponse admitted;
  ASSERT_TRUE(Admit(Request("r1"), &admitted).ok());
  ASSERT_EQ(admitted.decision(), kvgate::v1::ADMITTED);
  EXPECT_EQ(admitted.reserved_bytes(), uint64_t{128} * per_token);
  EXPECT_EQ(admitted.reserved_bytes(), shape().kv);
  budget = GetBudget();
  EXPECT_EQ(budget.reserved_bytes(), uint64_t{128} * per_token);
  // The engine's 10% (3277 tokens' worth) is above the ledger's 128 tokens:
  // free is capacity minus the engine's use.
  const uint64_t engine_used = (uint64_t{32768} * per_token + 9) / 10;
  EXPECT_NEAR(static_cast<double>(budget.free_bytes()),
              static_cast<double>(budget.capacity_bytes() - engine_used),
              static_cast<double>(per_token));
  EXPECT_EQ(Metric(ModelSeries("kvgate_engine_up")), 1);
  EXPECT_EQ(Metric(ModelSeries("kvgate_engine_kv_capacity_tokens")), 32768);
  EXPECT_DOUBLE_EQ(Metric(ModelSeries("kvgate_engine_kv_cache_usage_ratio")),
                   0.1);
  EXPECT_EQ(Metric(ModelSeries("kvgate_budget_capacity_bytes")),
            static_cast<double>(budget.capacity_bytes()));
  // The pool grows (a restarted engine with more blocks): followed.
  engine_.SetPage(VllmPage("gpt2", 4096, 16, 0.0, 0));
  EXPECT_TRUE(WaitUntil([&] {
    return GetBudget().capacity_bytes() == uint64_t{4096} * 16 * per_token;
  }));
}

TEST_F(EngineTest, EngineUsageAboveTheLedgerHoldsBackAnAdmit) {
  // A pool of 8 requests of the shape (64 blocks); the engine reports it
  // 95% full from traffic that bypassed the gate.
  engine_.SetPage(VllmPage("gpt2", 64, 16, 0.95, 0));
  StartWithEngine("vllm");
  // The ledger is empty and would take it; the engine's use does not.
  kvgate::v1::AdmitResponse held = TryAdmit("held", absl::Milliseconds(300));
  EXPECT_EQ(held.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(held.reason(), "QUEUE_TIMEOUT");
  // The engine drains: the same request fits.
  engine_.SetPage(VllmPage("gpt2", 64, 16, 0.5, 0));
  kvgate::v1::AdmitResponse admitted = TryAdmit("later", absl::Seconds(3));
  EXPECT_EQ(admitted.decision(), kvgate::v1::ADMITTED) << admitted.reason();
}

TEST_F(EngineTest, PreemptionPausesAdmissionForTheCooldownThenResumes) {
  engine_.SetPage(VllmPage("gpt2", 2048, 16, 0.2, 4));  // 4: the baseline
  StartWithEngine("vllm");
  AdmitOrFail("before");
  engine_.SetPage(VllmPage("gpt2", 2048, 16, 0.2, 7));
  ASSERT_TRUE(WaitUntil([&] {
    return Metric(ModelSeries("kvgate_engine_preemptions_total")) == 3;
  }));
  kvgate::v1::AdmitResponse paused;
  ASSERT_TRUE(Admit(Request("during"), &paused).ok());
  EXPECT_EQ(paused.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(paused.reason(), "MEMORY_PRESSURE");
  EXPECT_GT(paused.retry_after().seconds() * 1000 +
                paused.retry_after().nanos() / 1000000,
            0);
  EXPECT_EQ(Metric(ModelSeries("kvgate_memory_pressure")), 1);
  // After the 1 s cooldown admission resumes by itself.
  EXPECT_TRUE(WaitUntil([&] {
    kvgate::v1::AdmitResponse r;
    return Admit(Request("after"), &r).ok() &&
           r.decision() == kvgate::v1::ADMITTED;
  }));
  EXPECT_EQ(Metric(ModelSeries("kvgate_memory_pressure")), 0);
  EXPECT_EQ(LogLines("engine preempted requests: admission paused"), 1);
  EXPECT_EQ(LogLines("admission resumed"), 1);
}

TEST_F(EngineTest, FailingEndpointChangesOnlyTheMetricsAndOneLogLine) {
  engine_.SetPage(VllmPage("gpt2", 2048, 16, 0.5, 0));
  StartWithEngine("vllm");
  const uint64_t capacity = GetBudget().capacity_bytes();
  const std::string errors = ModelSeries("kvgate_engine_scrape_errors_total");
  const FakeEngine::Mode kFailures[] = {
      FakeEngine::Mode::kError500, FakeEngine::Mode::kGarbage,
      FakeEngine::Mode::kEmpty, FakeEngine::Mode::kClosed};
  int round = 0;
  for (FakeEngine::Mode mode : kFailures) {
    SCOPED_TRACE(absl::StrCat("failure mode ", static_cast<int>(mode)));
    const double errors_before = Metric(errors);
    engine_.SetMode(mode);
    ASSERT_TRUE(WaitUntil([&] {
      return Metric(ModelSeries("kvgate_engine_up")) == 0 &&
             Metric(errors) >= errors_before + 2;
    }));
    // The last good capacity stays; admission runs on the ledger alone.
    EXPECT_EQ(GetBudget().capacity_bytes(), capacity);
    const std::string lease = AdmitOrFail(absl::StrCat("down-", round));
    uint64_t released = 0;
    EXPECT_TRUE(Release(lease, &released).ok());
    EXPECT_EQ(released, shape().kv);
    // One line when it went down, however many scrapes failed.
    EXPECT_EQ(LogLines("engine metrics unavailable"), round + 1);
    engine_.SetMode(FakeEngine::Mode::kPage);
    ASSERT_TRUE(WaitUntil(
        [&] { return Metric(ModelSeries("kvgate_engine_up")) == 1; }));
    ++round;
  }
  EXPECT_EQ(LogLines("engine metrics read"), round + 1);  // start + recoveries
  EXPECT_EQ(server_->SignalAndWait(0, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kDeadlineExceeded)
      << "kvgated exited";
}

TEST_F(EngineTest, BeforeTheEngineAnswersTheCapacityIsThePlanFigure) {
  engine_.SetMode(FakeEngine::Mode::kClosed);
  StartWithEngine("vllm");
  const uint64_t per_token = KvBytesPerToken();
  // What `kvgate plan` says vLLM takes for gpt2 on an H100 at 0.9.
  std::string out;
  {
    const std::string command = absl::StrCat(
        KVGATE_CLI_PATH, " plan --config=gpt2 --gpu=H100-80GB --json");
    FILE* pipe = popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    char buffer[4096];
    size_t n;
    while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0)
      out.append(buffer, n);
    ASSERT_EQ(pclose(pipe), 0) << out;
  }
  const nlohmann::json plan = nlohmann::json::parse(out);
  const uint64_t plan_tokens = plan.at("kv_cache_tokens").get<uint64_t>();
  EXPECT_EQ(GetBudget().capacity_bytes(), plan_tokens * per_token);
  EXPECT_EQ(Metric(ModelSeries("kvgate_engine_up")), 0);
  AdmitOrFail("on-the-plan");
  // The engine comes up with a smaller pool than planned: its figure wins.
  engine_.SetPage(VllmPage("gpt2", 1000, 16, 0.0, 0));
  engine_.SetMode(FakeEngine::Mode::kPage);
  EXPECT_TRUE(WaitUntil([&] {
    return GetBudget().capacity_bytes() == uint64_t{16000} * per_token;
  }));
}

TEST_F(EngineTest, SglangPoolIsDeduplicatedAcrossTensorRanksAndPagedByToken) {
  // tp_rank 0 and 1 both say 50000 tokens: one pool of 50000.
  engine_.SetPage(SglangPage("gpt2", 50000, 0.0, 0));
  StartWithEngine("sglang");
  const uint64_t per_token = KvBytesPerToken();
  EXPECT_EQ(GetBudget().capacity_bytes(), uint64_t{50000} * per_token);
  // Pages of one token: the 128-token shape reserves exactly 128 tokens,
  // and a 100 + 30 request 130, not 144 (9 blocks of 16).
  kvgate::v1::AdmitRequest odd = Request("odd");
  odd.mutable_sequences(0)->set_max_new_tokens(30);
  kvgate::v1::AdmitResponse admitted;
  ASSERT_TRUE(Admit(odd, &admitted).ok());
  ASSERT_EQ(admitted.decision(), kvgate::v1::ADMITTED);
  EXPECT_EQ(admitted.reserved_bytes(), uint64_t{130} * per_token);
  // A retraction pauses admission as a preemption does.
  engine_.SetPage(SglangPage("gpt2", 50000, 0.3, 2));
  ASSERT_TRUE(WaitUntil([&] {
    return Metric(ModelSeries("kvgate_engine_preemptions_total")) == 2;
  }));
  EXPECT_DOUBLE_EQ(Metric(ModelSeries("kvgate_engine_kv_cache_usage_ratio")),
                   0.3);
  kvgate::v1::AdmitResponse paused;
  ASSERT_TRUE(Admit(Request("paused"), &paused).ok());
  EXPECT_EQ(paused.reason(), "MEMORY_PRESSURE");
}

}  // namespace
}  // namespace kvgate
