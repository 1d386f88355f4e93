// kvgate-loadgen's request mixes: the channels to kvgated, and the kinds of
// operation a driver starts over them (admit + release, two health checks,
// realistic mixed traffic), each on gRPC's callback API.
#ifndef KVGATE_BENCH_LOADGEN_WORKLOADS_H_
#define KVGATE_BENCH_LOADGEN_WORKLOADS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "bench/loadgen/stats.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "kvgate/v1/admission.grpc.pb.h"

namespace kvgate::loadgen {

// Channels to one server, each its own connection.
class Client {
 public:
  // Nullptr (after a line on stderr) when a channel does not connect
  // within 10 seconds.
  static std::unique_ptr<Client> Connect(const std::string& address,
                                         int channels);
  size_t size() const { return channels_.size(); }
  kvgate::v1::Admission::Stub* stub(size_t i) const {
    return stubs_[i % stubs_.size()].get();
  }
  grpc::GenericStub* generic(size_t i) const {
    return generic_[i % generic_.size()].get();
  }

 private:
  Client() = default;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<kvgate::v1::Admission::Stub>> stubs_;
  std::vector<std::unique_ptr<grpc::GenericStub>> generic_;
};

// Sets a call's deadline `d` from now.
void SetDeadline(grpc::ClientContext* context, absl::Duration d);

// What the workloads ask for (from kvgate-loadgen's flags).
struct WorkloadOptions {
  std::string model;
  uint32_t prompt_tokens = 0;           // admit-release
  uint32_t max_new_tokens = 0;          // admit-release
  absl::Duration rpc_deadline;          // of each call
  absl::Duration max_queue_wait;        // mixed: of each Admit
  double decode_tokens_per_second = 0;  // mixed: how long a lease is held
};

// One kind of operation. Start() begins one on `channel` and calls `done`
// exactly once when it is over, on a gRPC callback thread.
class Workload {
 public:
  virtual ~Workload() = default;
  virtual void Start(size_t channel, std::function<void()> done) = 0;
  // Where the next operations record (swapped between phases).
  void set_stats(Stats* stats) { stats_ = stats; }

 protected:
  Stats* stats_ = nullptr;
};

// Runs callbacks at given times, on one thread (leases held in mixed mode).
class TimerThread {
 public:
  TimerThread() : thread_([this] { Run(); }) {}
  ~TimerThread();
  void At(absl::Time when, std::function<void()> fn);

 private:
  void Run();
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::multimap<absl::Time, std::function<void()>> timers_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

// Admit one sequence of options.prompt_tokens + options.max_new_tokens, then
// Release its lease: one operation.
std::unique_ptr<Workload> MakeAdmitReleaseWorkload(
    const Client* client, const WorkloadOptions& options);

// Two grpc.health.v1.Health/Check calls back to back: the baseline an admit +
// release pair is held to.
std::unique_ptr<Workload> MakeNoopWorkload(const Client* client,
                                           const WorkloadOptions& options);

// Realistic traffic (lengths, tenants and priorities drawn at random); an
// admitted lease is released on `timers` after a simulated decode time.
std::unique_ptr<Workload> MakeMixedWorkload(const Client* client,
                                            const WorkloadOptions& options,
                                            TimerThread* timers);

}  // namespace kvgate::loadgen

#endif  // KVGATE_BENCH_LOADGEN_WORKLOADS_H_
