// kvgate-loadgen: a load generator for kvgated on gRPC's callback API.
//
// Modes (--mode):
//   admit-release  Admit one sequence, then Release its lease: one operation.
//   noop           Two calls of grpc.health.v1.Health/Check on the same
//                  server: the baseline an admit + release pair is held to.
//   mixed          Requests drawn from realistic prompt and output lengths,
//                  several tenants and priorities; an admitted lease is held
//                  for a simulated decode time, then released. Run against a
//                  budget small enough that requests queue and are rejected.
//   hold           Fills the budget, then holds --hold_requests Admits in the
//                  queue at once and reads the server's thread count and RSS
//                  (--server_pid) before and during, then releases everything
//                  and waits until every queued Admit is answered.
// Closed loop (--concurrency operations in flight) or open loop (--rate
// operations per second), bounded by --requests and --duration. With
// --compare, admit-release and noop run in alternating phases of one run and
// the ratios are printed. Output: one JSON object on stdout.
//
// This file holds the flags and the wiring; stats.h (measurements),
// workloads.h (request mixes) and driver.h (the client loop and the modes)
// the rest.
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "bench/loadgen/driver.h"
#include "bench/loadgen/workloads.h"

ABSL_FLAG(std::string, address, "unix:/tmp/kvgate.sock",
          "kvgated address, unix:/path or host:port");
ABSL_FLAG(std::string, mode, "admit-release",
          "admit-release | noop | mixed | hold");
ABSL_FLAG(bool, compare, false,
          "run admit-release and noop in alternating phases and print ratios");
ABSL_FLAG(int, concurrency, 8,
          "closed loop: operations in flight; open loop: the most in flight");
ABSL_FLAG(double, rate, 0,
          "open loop: operations started per second (0: closed loop)");
ABSL_FLAG(int64_t, requests, 10000000, "most operations in all");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10),
          "longest run (all phases together with --compare)");
ABSL_FLAG(absl::Duration, warmup, absl::Milliseconds(500),
          "unmeasured run of each mode before measuring");
ABSL_FLAG(int, rounds, 5, "--compare: phases of each mode, interleaved");
ABSL_FLAG(int, channels, 4,
          "gRPC channels (one connection each); a connection carries at most "
          "the server's max_concurrent_streams calls");
ABSL_FLAG(std::string, model, "gpt2", "model name served by kvgated");
ABSL_FLAG(uint32_t, prompt_tokens, 128, "admit-release and hold: prompt");
ABSL_FLAG(uint32_t, max_new_tokens, 128, "admit-release and hold: output");
ABSL_FLAG(absl::Duration, max_queue_wait, absl::Seconds(1),
          "mixed: the max_queue_wait of each Admit");
ABSL_FLAG(double, decode_tokens_per_second, 4000,
          "mixed: a lease is held max_new_tokens / this many seconds");
ABSL_FLAG(absl::Duration, rpc_deadline, absl::Seconds(30),
          "gRPC deadline of each call (hold: --hold_wait + this)");
ABSL_FLAG(int, hold_requests, 10000, "hold: Admits held in the queue at once");
ABSL_FLAG(absl::Duration, hold_wait, absl::Seconds(120),
          "hold: the max_queue_wait of each held Admit");
ABSL_FLAG(int, server_pid, 0,
          "kvgated's pid: report its CPU time per operation and, in hold "
          "mode, its threads and RSS (read from /proc)");

namespace kvgate::loadgen {
namespace {

LoadOptions OptionsFromFlags() {
  LoadOptions o;
  o.address = absl::GetFlag(FLAGS_address);
  o.concurrency = absl::GetFlag(FLAGS_concurrency);
  o.rate = absl::GetFlag(FLAGS_rate);
  o.requests = absl::GetFlag(FLAGS_requests);
  o.duration = absl::GetFlag(FLAGS_duration);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.rounds = absl::GetFlag(FLAGS_rounds);
  o.channels = absl::GetFlag(FLAGS_channels);
  o.server_pid = absl::GetFlag(FLAGS_server_pid);
  o.hold_requests = absl::GetFlag(FLAGS_hold_requests);
  o.hold_wait = absl::GetFlag(FLAGS_hold_wait);
  o.workload.model = absl::GetFlag(FLAGS_model);
  o.workload.prompt_tokens = absl::GetFlag(FLAGS_prompt_tokens);
  o.workload.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  o.workload.rpc_deadline = absl::GetFlag(FLAGS_rpc_deadline);
  o.workload.max_queue_wait = absl::GetFlag(FLAGS_max_queue_wait);
  o.workload.decode_tokens_per_second =
      absl::GetFlag(FLAGS_decode_tokens_per_second);
  return o;
}

int Main() {
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode != "admit-release" && mode != "noop" && mode != "mixed" &&
      mode != "hold") {
    std::cerr << "kvgate-loadgen: --mode must be admit-release, noop, mixed "
                 "or hold"
              << std::endl;
    return 2;
  }
  const LoadOptions options = OptionsFromFlags();
  if (options.concurrency < 1 || options.channels < 1) {
    std::cerr << "kvgate-loadgen: --concurrency and --channels must be >= 1"
              << std::endl;
    return 2;
  }
  std::unique_ptr<Client> client =
      Client::Connect(options.address, options.channels);
  if (client == nullptr) return 1;
  if (absl::GetFlag(FLAGS_compare)) return RunCompare(*client, options);
  if (mode == "hold") return RunHold(*client, options);
  return RunOne(*client, mode, options);
}

}  // namespace
}  // namespace kvgate::loadgen

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kvgate-loadgen: load generator for kvgated.\n"
      "  kvgate-loadgen --address=unix:/tmp/kvgate.sock --mode=admit-release "
      "--concurrency=64 --duration=10s\n"
      "  kvgate-loadgen --compare --concurrency=8 --duration=6s");
  absl::ParseCommandLine(argc, argv);
  // As in kvgated: no lock-order graph on every Mutex::Lock (Debian's Abseil
  // keeps it on by default), so the client's CPU goes to the calls.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return kvgate::loadgen::Main();
}
