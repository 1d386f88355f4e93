#include "bench/loadgen/stats.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace kvgate::loadgen {

// ------------------------------------------------------------ Histogram ---

void Histogram::Merge(const Histogram& other) {
  for (size_t i = 0; i < kBuckets; ++i) {
    counts_[i].fetch_add(other.counts_[i].load(std::memory_order_relaxed),
                         std::memory_order_relaxed);
  }
  uint64_t max = max_.load();
  const uint64_t omax = other.max_.load();
  if (omax > max) max_.store(omax);
}

uint64_t Histogram::Count() const {
  uint64_t n = 0;
  for (const auto& c : counts_) n += c.load(std::memory_order_relaxed);
  return n;
}

double Histogram::PercentileMicros(double q) const {
  const uint64_t n = Count();
  if (n == 0) return 0;
  const uint64_t rank =
      std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * n)));
  uint64_t seen = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    seen += counts_[i].load(std::memory_order_relaxed);
    if (seen >= rank) {
      return std::min(Midpoint(i), static_cast<double>(max_.load())) / 1e3;
    }
  }
  return static_cast<double>(max_.load()) / 1e3;
}

nlohmann::json Histogram::Summary() const {
  auto round = [](double us) { return std::round(us * 10) / 10; };
  return {{"count", Count()},
          {"p50", round(PercentileMicros(0.50))},
          {"p90", round(PercentileMicros(0.90))},
          {"p99", round(PercentileMicros(0.99))},
          {"max", round(static_cast<double>(max_.load()) / 1e3)}};
}

double Histogram::Midpoint(size_t index) {
  if (index < (size_t{1} << kSubBits)) return static_cast<double>(index);
  const int shift = static_cast<int>(index >> kSubBits) - 1;
  const uint64_t sub = (index & ((1 << kSubBits) - 1)) + (1 << kSubBits);
  return (static_cast<double>(sub) + 0.5) * std::ldexp(1.0, shift);
}

// ---------------------------------------------------------------- Stats ---

size_t OutcomeIndex(const kvgate::v1::AdmitResponse& response) {
  if (response.decision() == kvgate::v1::ADMITTED) return 0;
  for (size_t i = 1; i + 1 < kOutcomes.size(); ++i) {
    if (response.reason() == kOutcomes[i]) return i;
  }
  return kOutcomes.size() - 1;
}

uint64_t Stats::ErrorCount() const {
  uint64_t n = 0;
  for (const auto& e : errors) n += e.load();
  return n;
}

void Stats::Merge(const Stats& other) {
  first.Merge(other.first);
  second.Merge(other.second);
  op.Merge(other.op);
  for (size_t i = 0; i < outcomes.size(); ++i) outcomes[i] += other.outcomes[i];
  for (size_t i = 0; i < errors.size(); ++i) errors[i] += other.errors[i];
  ops += other.ops.load();
  seconds += other.seconds;
  client_cpu_seconds += other.client_cpu_seconds;
  if (other.server_cpu_seconds >= 0) {
    server_cpu_seconds =
        std::max(0.0, server_cpu_seconds) + other.server_cpu_seconds;
  }
}

nlohmann::json Stats::Decisions() const {
  nlohmann::json d = nlohmann::json::object();
  for (size_t i = 0; i < outcomes.size(); ++i) {
    if (outcomes[i] > 0) d[kOutcomes[i]] = outcomes[i].load();
  }
  return d;
}

nlohmann::json Stats::Summary(const char* first_name, const char* second_name,
                              bool decisions) const {
  nlohmann::json j;
  j["operations"] = ops.load();
  j["seconds"] = seconds;
  j["operations_per_second"] =
      seconds > 0 ? std::round(static_cast<double>(ops) / seconds) : 0;
  j["latency_us"] = {{first_name, first.Summary()},
                     {second_name, second.Summary()},
                     {"operation", op.Summary()}};
  if (decisions) j["decisions"] = Decisions();
  nlohmann::json e = nlohmann::json::object();
  for (size_t i = 0; i < errors.size(); ++i) {
    if (errors[i] > 0) e[absl::StrCat(i)] = errors[i].load();
  }
  j["errors"] = ErrorCount();
  j["errors_by_code"] = e;
  if (ops > 0) {
    j["client_cpu_us_per_operation"] =
        std::round(client_cpu_seconds * 1e7 / static_cast<double>(ops)) / 10;
  }
  if (server_cpu_seconds >= 0 && ops > 0) {
    j["server_cpu_us_per_operation"] =
        std::round(server_cpu_seconds * 1e7 / static_cast<double>(ops)) / 10;
  }
  return j;
}

// ----------------------------------------------------------- /proc read ---

ProcessSample ReadProcess(int pid) {
  ProcessSample s;
  if (pid <= 0) return s;
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    std::vector<absl::string_view> f =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (f.size() < 2) continue;
    if (f[0] == "Threads:") (void)absl::SimpleAtoi(f[1], &s.threads);
    if (f[0] == "VmRSS:") (void)absl::SimpleAtoi(f[1], &s.rss_kib);
  }
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(stat)),
                   std::istreambuf_iterator<char>());
  // Fields after the command name (which may hold spaces) in parentheses.
  const size_t paren = text.rfind(')');
  if (paren != std::string::npos) {
    std::vector<absl::string_view> f = absl::StrSplit(
        absl::string_view(text).substr(paren + 2), ' ', absl::SkipEmpty());
    uint64_t utime = 0, stime = 0;
    // utime and stime are fields 14 and 15 of stat; 3 is f[0] here.
    if (f.size() > 12 && absl::SimpleAtoi(f[11], &utime) &&
        absl::SimpleAtoi(f[12], &stime)) {
      s.cpu_seconds = static_cast<double>(utime + stime) /
                      static_cast<double>(sysconf(_SC_CLK_TCK));
    }
  }
  return s;
}

double SelfCpuSeconds() {
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

}  // namespace kvgate::loadgen
