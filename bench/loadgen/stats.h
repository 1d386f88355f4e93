// kvgate-loadgen's measurements: a lock-free latency histogram, the counts of
// one mode (operations, decisions, errors, CPU time) and their JSON summary,
// and the /proc and getrusage readings of kvgated's and our own CPU, threads
// and RSS.
#ifndef KVGATE_BENCH_LOADGEN_STATS_H_
#define KVGATE_BENCH_LOADGEN_STATS_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "grpcpp/grpcpp.h"
#include "kvgate/v1/admission.pb.h"
#include "nlohmann/json.hpp"

namespace kvgate::loadgen {

// Monotonic time in nanoseconds.
inline int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Latencies in nanoseconds, log-linear buckets (64 per power of two, so
// about 1.6% resolution), lock-free to record from any callback thread.
class Histogram {
 public:
  void Record(int64_t nanos) {
    const uint64_t v = nanos < 0 ? 0 : static_cast<uint64_t>(nanos);
    counts_[Index(v)].fetch_add(1, std::memory_order_relaxed);
    uint64_t max = max_.load(std::memory_order_relaxed);
    while (v > max && !max_.compare_exchange_weak(max, v)) {
    }
  }
  void Merge(const Histogram& other);
  uint64_t Count() const;
  // The q-quantile (0 < q <= 1) in microseconds; 0 when empty.
  double PercentileMicros(double q) const;
  // {count, p50, p90, p99, max}, in microseconds to 0.1.
  nlohmann::json Summary() const;

 private:
  static constexpr int kSubBits = 6;
  static constexpr size_t kBuckets = (64 - kSubBits) << kSubBits;
  static size_t Index(uint64_t v) {
    if (v < (uint64_t{1} << kSubBits)) return v;
    const int msb = 63 - __builtin_clzll(v);
    const int shift = msb - kSubBits;
    return (static_cast<size_t>(shift + 1) << kSubBits) +
           ((v >> shift) - (uint64_t{1} << kSubBits));
  }
  static double Midpoint(size_t index);
  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
  std::atomic<uint64_t> max_{0};
};

// The machine-readable reasons of the API; index 0 is ADMITTED.
constexpr std::array<const char*, 9> kOutcomes = {
    "ADMITTED", "QUEUE_TIMEOUT", "QUEUE_FULL", "NEVER_FITS", "MEMORY_PRESSURE",
    "SHED",     "DRAINING",      "CANCELLED",  "OTHER"};

// The index in kOutcomes of a response's decision and reason.
size_t OutcomeIndex(const kvgate::v1::AdmitResponse& response);

// What one mode measured. `first` and `second` are the two calls of an
// operation (Admit and Release; Check and Check), `op` the whole operation.
struct Stats {
  Histogram first, second, op;
  std::array<std::atomic<uint64_t>, kOutcomes.size()> outcomes{};
  std::array<std::atomic<uint64_t>, 17> errors{};  // by grpc::StatusCode
  std::atomic<uint64_t> ops{0};
  double seconds = 0;              // measured time (sum of phases)
  double server_cpu_seconds = -1;  // with --server_pid
  double client_cpu_seconds = 0;   // this process, all threads

  void Error(const grpc::Status& status) {
    errors[std::min<size_t>(status.error_code(), errors.size() - 1)].fetch_add(
        1, std::memory_order_relaxed);
  }
  uint64_t ErrorCount() const;
  void Merge(const Stats& other);
  // The decisions seen, by name (only those seen at least once).
  nlohmann::json Decisions() const;
  // Operations, rate, latencies (`first_name`, `second_name`, "operation"),
  // decisions when `decisions`, errors and CPU time per operation.
  nlohmann::json Summary(const char* first_name, const char* second_name,
                         bool decisions) const;
};

// A process's threads, RSS and CPU time; -1 where unknown.
struct ProcessSample {
  int threads = -1;
  int64_t rss_kib = -1;
  double cpu_seconds = -1;  // utime + stime
};

// Reads /proc/<pid>/status and /proc/<pid>/stat; all -1 when pid <= 0.
ProcessSample ReadProcess(int pid);

// CPU time of this process (every thread), in seconds.
double SelfCpuSeconds();

}  // namespace kvgate::loadgen

#endif  // KVGATE_BENCH_LOADGEN_STATS_H_
