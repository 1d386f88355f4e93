#include "plugin/server/engine_poller.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "plugin/base/json_log.h"

namespace kvgate {
namespace {

// The longest one scrape may take: a hung engine must not stall the poller
// for long, and a slow page (thousands of series) still needs time.
absl::Duration FetchTimeout(absl::Duration poll_interval) {
  return std::clamp(poll_interval * 5, absl::Milliseconds(200),
                    absl::Seconds(2));
}

}  // namespace

absl::StatusOr<std::unique_ptr<EnginePoller>> EnginePoller::Create(
    ModelPool* pool, KvgateMetrics* metrics) {
  const EngineSettings& engine = pool->settings().engine;
  if (!engine.preallocates()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", pool->name(), ": a dynamic engine has no metrics to poll"));
  }
  MetricsFetcher::Options fetch;
  fetch.url = engine.metrics_url;
  fetch.timeout = FetchTimeout(engine.poll_interval);
  absl::StatusOr<std::unique_ptr<MetricsFetcher>> fetcher =
      MetricsFetcher::Create(fetch);
  if (!fetcher.ok()) {
    return absl::Status(
        fetcher.status().code(),
        absl::StrCat("model ", pool->name(), ": ", fetcher.status().message()));
  }
  EngineTracker::Options tracker;
  tracker.kv_bytes_per_token = pool->model().kv_cache_bytes_per_token();
  tracker.start_capacity_bytes = pool->controller().Snapshot().capacity_bytes;
  tracker.preemption_cooldown = engine.preemption_cooldown;
  return std::unique_ptr<EnginePoller>(
      new EnginePoller(pool, metrics, *std::move(fetcher), tracker));
}

EnginePoller::EnginePoller(ModelPool* pool, KvgateMetrics* metrics,
                           std::unique_ptr<MetricsFetcher> fetcher,
                           const EngineTracker::Options& tracker)
    : pool_(pool),
      metrics_(metrics),
      fetcher_(std::move(fetcher)),
      tracker_(tracker) {
  read_.kind = pool->settings().engine.kind == EngineSettings::Kind::kSglang
                   ? EngineKind::kSglang
                   : EngineKind::kVllm;
  metrics_->AddEngine(pool_->name());
}

EnginePoller::~EnginePoller() { Stop(); }

void EnginePoller::PollOnce() {
  absl::StatusOr<EngineReading> reading = [this]() {
    absl::StatusOr<std::string> page = fetcher_->Fetch();
    if (!page.ok()) return absl::StatusOr<EngineReading>(page.status());
    return ReadEnginePage(*page, read_);
  }();
  const absl::Time now = absl::Now();
  const EngineTracker::Change change = tracker_.Observe(reading, now);
  pool_->controller().SetEngineBudget(tracker_.capacity_bytes(),
                                      tracker_.used_bytes());
  LogChange(change);
  ApplyPause(now);
  MetricsUpdate(change);
}

void EnginePoller::MetricsUpdate(const EngineTracker::Change& change) {
  KvgateMetrics::EngineScrape scrape;
  scrape.up = tracker_.up();
  if (tracker_.up()) scrape.usage = tracker_.usage();
  scrape.capacity_tokens = tracker_.pool_tokens();
  scrape.new_preemptions = change.new_preemptions;
  metrics_->RecordEngineScrape(pool_->name(), scrape);
  metrics_->SetBudget(pool_->name(), pool_->controller().Snapshot(),
                      pool_->model().weights_bytes());
}

void EnginePoller::LogChange(const EngineTracker::Change& change) {
  const EngineSettings& engine = pool_->settings().engine;
  if (change.went_down) {
    LogError("engine metrics unavailable",
             {{"model", pool_->name()},
              {"engine", EngineSettings::KindName(engine.kind)},
              {"url", engine.metrics_url},
              {"error", tracker_.last_error().ToString()},
              {"action", absl::StrCat("admitting on the ledger with capacity ",
                                      tracker_.capacity_bytes(), " bytes")}});
  }
  if (change.came_up || change.capacity_changed) {
    LogInfo(change.came_up ? "engine metrics read" : "engine pool changed",
            {{"model", pool_->name()},
             {"engine", EngineSettings::KindName(engine.kind)},
             {"pool_tokens", absl::StrCat(tracker_.pool_tokens())},
             {"capacity_bytes", absl::StrCat(tracker_.capacity_bytes())}});
  }
}

void EnginePoller::ApplyPause(absl::Time now) {
  const bool paused = tracker_.Paused(now);
  if (paused == paused_) return;
  paused_ = paused;
  const std::string cooldown =
      absl::FormatDuration(pool_->settings().engine.preemption_cooldown);
  if (paused) {
    LogWarning("engine preempted requests: admission paused",
               {{"model", pool_->name()},
                {"preemptions_seen", absl::StrCat(tracker_.preemptions_seen())},
                {"cooldown", cooldown}});
  } else {
    LogInfo("engine preemption cooldown over: admission resumed",
            {{"model", pool_->name()}});
  }
  pool_->controller().SetMemoryPressure(
      paused, absl::StrCat("the engine preempted requests; admission paused "
                           "for ",
                           cooldown));
  metrics_->SetMemoryPressure(pool_->name(), paused);
}

void EnginePoller::Start() {
  thread_ = std::thread([this] { Run(); });
}

void EnginePoller::Stop() {
  if (!thread_.joinable()) return;
  stop_.Notify();
  thread_.join();
}

void EnginePoller::Run() {
  const absl::Duration interval = pool_->settings().engine.poll_interval;
  absl::Time next_poll = absl::Now() + interval;
  for (;;) {
    // Wake for the next scrape, or earlier when a pause ends.
    absl::Time wake = next_poll;
    if (paused_) wake = std::min(wake, tracker_.paused_until());
    if (stop_.WaitForNotificationWithTimeout(wake - absl::Now())) return;
    const absl::Time now = absl::Now();
    if (now >= next_poll) {
      PollOnce();
      next_poll = absl::Now() + interval;
    } else {
      ApplyPause(now);
    }
  }
}

}  // namespace kvgate
