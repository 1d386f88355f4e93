// kvgate-loadgen's client loop: runs a workload closed loop (a fixed number
// of operations in flight) or open loop (paced at a rate), in measured
// phases, and the four ways a run is put together: one mode, the
// admit-release / noop comparison, and hold mode. Each prints one JSON
// object on stdout.
#ifndef KVGATE_BENCH_LOADGEN_DRIVER_H_
#define KVGATE_BENCH_LOADGEN_DRIVER_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "bench/loadgen/workloads.h"

namespace kvgate::loadgen {

// A run's settings (kvgate-loadgen's flags).
struct LoadOptions {
  std::string address;
  int concurrency = 8;      // closed loop: in flight; open loop: at most
  double rate = 0;          // open loop: operations per second (0: closed loop)
  int64_t requests = 0;     // most operations in all
  absl::Duration duration;  // longest run (all phases with compare)
  absl::Duration warmup;    // unmeasured run of each mode first
  int rounds = 1;           // compare: phases of each mode
  int channels = 1;
  int server_pid = 0;     // kvgated's, for its CPU, threads and RSS (0: none)
  int hold_requests = 0;  // hold: Admits held in the queue at once
  absl::Duration hold_wait;  // hold: their max_queue_wait
  WorkloadOptions workload;
};

// Runs `mode` (admit-release, noop or mixed) after a warm-up (none for
// mixed) and prints its summary. Returns the exit status.
int RunOne(const Client& client, const std::string& mode,
           const LoadOptions& options);

// Runs admit-release and noop in alternating phases (ABBA order) and prints
// both summaries and their ratios. Returns the exit status.
int RunCompare(const Client& client, const LoadOptions& options);

// Fills the budget, holds options.hold_requests Admits in the queue at once,
// samples kvgated's threads and RSS, then releases the budget and waits until
// every held Admit is answered. Returns the exit status; exits the process
// (status 1) when some held Admit is never answered.
int RunHold(const Client& client, const LoadOptions& options);

}  // namespace kvgate::loadgen

#endif  // KVGATE_BENCH_LOADGEN_DRIVER_H_
