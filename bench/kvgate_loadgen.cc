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
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "kvgate/v1/admission.grpc.pb.h"
#include "nlohmann/json.hpp"

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

namespace kvgate {
namespace {

using kvgate::v1::AdmitRequest;
using kvgate::v1::AdmitResponse;
using Steady = std::chrono::steady_clock;

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             Steady::now().time_since_epoch())
      .count();
}

// ------------------------------------------------------------ Histogram ---

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
  void Merge(const Histogram& other) {
    for (size_t i = 0; i < kBuckets; ++i) {
      counts_[i].fetch_add(other.counts_[i].load(std::memory_order_relaxed),
                           std::memory_order_relaxed);
    }
    uint64_t max = max_.load();
    const uint64_t omax = other.max_.load();
    if (omax > max) max_.store(omax);
  }
  uint64_t Count() const {
    uint64_t n = 0;
    for (const auto& c : counts_) n += c.load(std::memory_order_relaxed);
    return n;
  }
  // The q-quantile (0 < q <= 1) in microseconds; 0 when empty.
  double PercentileMicros(double q) const {
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
  nlohmann::json Summary() const {
    auto round = [](double us) { return std::round(us * 10) / 10; };
    return {{"count", Count()},
            {"p50", round(PercentileMicros(0.50))},
            {"p90", round(PercentileMicros(0.90))},
            {"p99", round(PercentileMicros(0.99))},
            {"max", round(static_cast<double>(max_.load()) / 1e3)}};
  }

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
  static double Midpoint(size_t index) {
    if (index < (size_t{1} << kSubBits)) return static_cast<double>(index);
    const int shift = static_cast<int>(index >> kSubBits) - 1;
    const uint64_t sub = (index & ((1 << kSubBits) - 1)) + (1 << kSubBits);
    return (static_cast<double>(sub) + 0.5) * std::ldexp(1.0, shift);
  }
  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
  std::atomic<uint64_t> max_{0};
};

// ---------------------------------------------------------------- Stats ---

// The machine-readable reasons of the API; index 0 is ADMITTED.
constexpr std::array<const char*, 9> kOutcomes = {
    "ADMITTED", "QUEUE_TIMEOUT", "QUEUE_FULL", "NEVER_FITS", "MEMORY_PRESSURE",
    "SHED",     "DRAINING",      "CANCELLED",  "OTHER"};

size_t OutcomeIndex(const AdmitResponse& response) {
  if (response.decision() == kvgate::v1::ADMITTED) return 0;
  for (size_t i = 1; i + 1 < kOutcomes.size(); ++i) {
    if (response.reason() == kOutcomes[i]) return i;
  }
  return kOutcomes.size() - 1;
}

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
  uint64_t ErrorCount() const {
    uint64_t n = 0;
    for (const auto& e : errors) n += e.load();
    return n;
  }
  void Merge(const Stats& other) {
    first.Merge(other.first);
    second.Merge(other.second);
    op.Merge(other.op);
    for (size_t i = 0; i < outcomes.size(); ++i)
      outcomes[i] += other.outcomes[i];
    for (size_t i = 0; i < errors.size(); ++i) errors[i] += other.errors[i];
    ops += other.ops.load();
    seconds += other.seconds;
    client_cpu_seconds += other.client_cpu_seconds;
    if (other.server_cpu_seconds >= 0) {
      server_cpu_seconds =
          std::max(0.0, server_cpu_seconds) + other.server_cpu_seconds;
    }
  }
  nlohmann::json Summary(const char* first_name, const char* second_name,
                         bool decisions) const {
    nlohmann::json j;
    j["operations"] = ops.load();
    j["seconds"] = seconds;
    j["operations_per_second"] =
        seconds > 0 ? std::round(static_cast<double>(ops) / seconds) : 0;
    j["latency_us"] = {{first_name, first.Summary()},
                       {second_name, second.Summary()},
                       {"operation", op.Summary()}};
    if (decisions) {
      nlohmann::json d = nlohmann::json::object();
      for (size_t i = 0; i < outcomes.size(); ++i) {
        if (outcomes[i] > 0) d[kOutcomes[i]] = outcomes[i].load();
      }
      j["decisions"] = d;
    }
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
};

// ----------------------------------------------------------- /proc read ---

struct ProcessSample {
  int threads = -1;
  int64_t rss_kib = -1;
  double cpu_seconds = -1;  // utime + stime
};

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

// CPU time of this process (every thread), in seconds.
double SelfCpuSeconds() {
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// --------------------------------------------------------------- Client ---

// Channels to one server, each its own connection.
class Client {
 public:
  static std::unique_ptr<Client> Connect(const std::string& address,
                                         int channels) {
    auto client = std::unique_ptr<Client>(new Client);
    for (int i = 0; i < channels; ++i) {
      grpc::ChannelArguments args;
      // A channel of its own subchannel pool and distinct arguments never
      // shares a connection with the others.
      args.SetInt("grpc.use_local_subchannel_pool", 1);
      args.SetInt("kvgate.loadgen.channel", i);
      auto channel = grpc::CreateCustomChannel(
          address, grpc::InsecureChannelCredentials(), args);
      if (!channel->WaitForConnected(std::chrono::system_clock::now() +
                                     std::chrono::seconds(10))) {
        std::cerr << "kvgate-loadgen: cannot connect to " << address
                  << std::endl;
        return nullptr;
      }
      client->stubs_.push_back(kvgate::v1::Admission::NewStub(channel));
      client->generic_.push_back(std::make_unique<grpc::GenericStub>(channel));
      client->channels_.push_back(std::move(channel));
    }
    return client;
  }
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

void SetDeadline(grpc::ClientContext* context, absl::Duration d) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + d));
}

// ----------------------------------------------------------- Workloads ---

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

class AdmitReleaseWorkload final : public Workload {
 public:
  AdmitReleaseWorkload(const Client* client, std::string model, uint32_t prompt,
                       uint32_t output)
      : client_(client),
        model_(std::move(model)),
        prompt_(prompt),
        output_(output) {}

  void Start(size_t channel, std::function<void()> done) override {
    auto* call = new Call;
    call->stats = stats_;
    call->done = std::move(done);
    call->channel = channel;
    call->request.set_request_id(
        absl::StrCat("lg-", next_id_.fetch_add(1, std::memory_order_relaxed)));
    call->request.set_model(model_);
    call->request.set_tenant("loadgen");
    auto* seq = call->request.add_sequences();
    seq->set_prompt_tokens(prompt_);
    seq->set_max_new_tokens(output_);
    SetDeadline(&call->admit_context, absl::GetFlag(FLAGS_rpc_deadline));
    call->start = NowNanos();
    client_->stub(channel)->async()->Admit(
        &call->admit_context, &call->request, &call->response,
        [this, call](grpc::Status status) { OnAdmit(call, status); });
  }

 private:
  struct Call {
    Stats* stats;
    std::function<void()> done;
    size_t channel;
    int64_t start, released_at;
    grpc::ClientContext admit_context, release_context;
    AdmitRequest request;
    AdmitResponse response;
    kvgate::v1::ReleaseRequest release;
    kvgate::v1::ReleaseResponse released;
  };

  void OnAdmit(Call* call, const grpc::Status& status) {
    const int64_t now = NowNanos();
    if (!status.ok()) return Finish(call, &status);
    call->stats->first.Record(now - call->start);
    call->stats->outcomes[OutcomeIndex(call->response)].fetch_add(
        1, std::memory_order_relaxed);
    if (call->response.decision() != kvgate::v1::ADMITTED) {
      return Finish(call, nullptr);
    }
    call->release.set_lease_id(call->response.lease_id());
    SetDeadline(&call->release_context, absl::GetFlag(FLAGS_rpc_deadline));
    call->released_at = now;
    client_->stub(call->channel)
        ->async()
        ->Release(
            &call->release_context, &call->release, &call->released,
            [this, call](grpc::Status s) {
              if (s.ok())
                call->stats->second.Record(NowNanos() - call->released_at);
              Finish(call, s.ok() ? nullptr : &s);
            });
  }

  void Finish(Call* call, const grpc::Status* error) {
    if (error != nullptr) {
      call->stats->Error(*error);
    } else {
      call->stats->op.Record(NowNanos() - call->start);
      call->stats->ops.fetch_add(1, std::memory_order_relaxed);
    }
    std::function<void()> done = std::move(call->done);
    delete call;
    done();
  }

  const Client* client_;
  const std::string model_;
  const uint32_t prompt_, output_;
  std::atomic<uint64_t> next_id_{0};
};

// Two grpc.health.v1.Health/Check calls back to back. The request is an
// empty HealthCheckRequest (service ""), whose encoding is zero bytes.
class NoopWorkload final : public Workload {
 public:
  explicit NoopWorkload(const Client* client) : client_(client) {}

  void Start(size_t channel, std::function<void()> done) override {
    auto* call = new Call;
    call->stats = stats_;
    call->done = std::move(done);
    call->channel = channel;
    call->start = NowNanos();
    Check(call, 0);
  }

 private:
  static constexpr char kMethod[] = "/grpc.health.v1.Health/Check";
  struct Call {
    Stats* stats;
    std::function<void()> done;
    size_t channel;
    int64_t start, step_start;
    grpc::ClientContext contexts[2];
    grpc::ByteBuffer request, response[2];
  };

  void Check(Call* call, int step) {
    grpc::Slice empty;
    call->request = grpc::ByteBuffer(&empty, 1);
    SetDeadline(&call->contexts[step], absl::GetFlag(FLAGS_rpc_deadline));
    call->step_start = NowNanos();
    client_->generic(call->channel)
        ->UnaryCall(&call->contexts[step], kMethod, grpc::StubOptions(),
                    &call->request, &call->response[step],
                    [this, call, step](grpc::Status status) {
                      const int64_t now = NowNanos();
                      if (!status.ok()) {
                        call->stats->Error(status);
                        return Finish(call, false);
                      }
                      (step == 0 ? call->stats->first : call->stats->second)
                          .Record(now - call->step_start);
                      if (step == 0) return Check(call, 1);
                      Finish(call, true);
                    });
  }

  void Finish(Call* call, bool ok) {
    if (ok) {
      call->stats->op.Record(NowNanos() - call->start);
      call->stats->ops.fetch_add(1, std::memory_order_relaxed);
    }
    std::function<void()> done = std::move(call->done);
    delete call;
    done();
  }

  const Client* client_;
};

// Runs callbacks at given times, on one thread (leases held in mixed mode).
class TimerThread {
 public:
  TimerThread() : thread_([this] { Run(); }) {}
  ~TimerThread() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }
  void At(absl::Time when, std::function<void()> fn) {
    absl::MutexLock lock(&mu_);
    timers_.emplace(when, std::move(fn));
  }

 private:
  void Run() {
    absl::MutexLock lock(&mu_);
    while (!stop_) {
      const absl::Time next = timers_.empty()
                                  ? absl::Now() + absl::Milliseconds(50)
                                  : timers_.begin()->first;
      mu_.AwaitWithDeadline(absl::Condition(&stop_), next);
      const absl::Time now = absl::Now();
      while (!timers_.empty() && timers_.begin()->first <= now) {
        std::function<void()> fn = std::move(timers_.begin()->second);
        timers_.erase(timers_.begin());
        mu_.Unlock();
        fn();
        mu_.Lock();
      }
    }
  }
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::multimap<absl::Time, std::function<void()>> timers_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

// Realistic traffic. Prompt and output lengths are log-normal with the means
// of the ShareGPT conversations used to evaluate vLLM (about 161 prompt and
// 338 output tokens; Kwon et al., "Efficient Memory Management for Large
// Language Model Serving with PagedAttention", SOSP 2023, section 6.1);
// the spreads (sigma 1.0 and 0.8) are our assumption. One request in five
// samples 2 or 4 sequences. Four tenants with shares 50/25/15/10 %;
// priorities 10 % CRITICAL, 70 % STANDARD, 20 % SHEDDABLE.
class MixedWorkload final : public Workload {
 public:
  MixedWorkload(const Client* client, std::string model, TimerThread* timers)
      : client_(client), model_(std::move(model)), timers_(timers) {}

  void Start(size_t channel, std::function<void()> done) override {
    auto* call = new Call;
    call->stats = stats_;
    call->done = std::move(done);
    call->channel = channel;
    Draw(&call->request);
    SetDeadline(&call->admit_context, absl::GetFlag(FLAGS_rpc_deadline));
    call->start = NowNanos();
    client_->stub(channel)->async()->Admit(
        &call->admit_context, &call->request, &call->response,
        [this, call](grpc::Status status) { OnAdmit(call, status); });
  }

 private:
  struct Call {
    Stats* stats;
    std::function<void()> done;
    size_t channel;
    int64_t start, released_at;
    grpc::ClientContext admit_context, release_context;
    AdmitRequest request;
    AdmitResponse response;
    kvgate::v1::ReleaseRequest release;
    kvgate::v1::ReleaseResponse released;
  };

  void Draw(AdmitRequest* request) {
    static constexpr std::array<const char*, 4> kTenants = {
        "tenant-a", "tenant-b", "tenant-c", "tenant-d"};
    static constexpr std::array<double, 4> kTenantShares = {50, 25, 15, 10};
    static constexpr std::array<kvgate::v1::Priority, 3> kPriorities = {
        kvgate::v1::CRITICAL, kvgate::v1::STANDARD, kvgate::v1::SHEDDABLE};
    static constexpr std::array<double, 3> kPriorityShares = {10, 70, 20};
    absl::MutexLock lock(&mu_);
    request->set_request_id(absl::StrCat("mx-", next_id_++));
    request->set_model(model_);
    std::discrete_distribution<int> tenant(kTenantShares.begin(),
                                           kTenantShares.end());
    std::discrete_distribution<int> priority(kPriorityShares.begin(),
                                             kPriorityShares.end());
    request->set_tenant(kTenants[tenant(gen_)]);
    request->set_priority(kPriorities[priority(gen_)]);
    // Means 161 and 338: mu = ln(mean) - sigma^2 / 2.
    const double prompt =
        std::exp(std::log(161.0) - 0.5 + 1.0 * absl::Gaussian<double>(gen_));
    const double output =
        std::exp(std::log(338.0) - 0.32 + 0.8 * absl::Gaussian<double>(gen_));
    const double n_draw = absl::Uniform<double>(gen_, 0, 1);
    const int n = n_draw < 0.8 ? 1 : (n_draw < 0.95 ? 2 : 4);
    // llama-3-8b's context is 8192 tokens.
    const uint32_t p = static_cast<uint32_t>(std::clamp(prompt, 4.0, 6000.0));
    const uint32_t o = static_cast<uint32_t>(std::clamp(output, 4.0, 2000.0));
    for (int i = 0; i < n; ++i) {
      auto* seq = request->add_sequences();
      seq->set_prompt_tokens(p);
      seq->set_max_new_tokens(o);
    }
    google::protobuf::Duration* wait = request->mutable_max_queue_wait();
    const absl::Duration w = absl::GetFlag(FLAGS_max_queue_wait);
    wait->set_seconds(absl::ToInt64Seconds(w));
    wait->set_nanos(static_cast<int32_t>(
        absl::ToInt64Nanoseconds(w - absl::Seconds(absl::ToInt64Seconds(w)))));
  }

  void OnAdmit(Call* call, const grpc::Status& status) {
    const int64_t now = NowNanos();
    if (!status.ok()) return Finish(call, &status);
    call->stats->first.Record(now - call->start);
    call->stats->outcomes[OutcomeIndex(call->response)].fetch_add(1);
    if (call->response.decision() != kvgate::v1::ADMITTED) {
      return Finish(call, nullptr);
    }
    const double hold_seconds = call->request.sequences(0).max_new_tokens() /
                                absl::GetFlag(FLAGS_decode_tokens_per_second);
    timers_->At(absl::Now() + absl::Seconds(hold_seconds),
                [this, call] { Release(call); });
  }

  void Release(Call* call) {
    call->release.set_lease_id(call->response.lease_id());
    SetDeadline(&call->release_context, absl::GetFlag(FLAGS_rpc_deadline));
    call->released_at = NowNanos();
    client_->stub(call->channel)
        ->async()
        ->Release(
            &call->release_context, &call->release, &call->released,
            [this, call](grpc::Status s) {
              if (s.ok())
                call->stats->second.Record(NowNanos() - call->released_at);
              Finish(call, s.ok() ? nullptr : &s);
            });
  }

  void Finish(Call* call, const grpc::Status* error) {
    if (error != nullptr) {
      call->stats->Error(*error);
    } else {
      call->stats->op.Record(NowNanos() - call->start);
      call->stats->ops.fetch_add(1, std::memory_order_relaxed);
    }
    std::function<void()> done = std::move(call->done);
    delete call;
    done();
  }

  const Client* client_;
  const std::string model_;
  TimerThread* timers_;
  absl::Mutex mu_;
  absl::BitGen gen_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
};

// --------------------------------------------------------------- Drivers ---

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
                int64_t max_ops, Stats* stats) {
  Driver driver(workload, client.size(), absl::GetFlag(FLAGS_concurrency),
                absl::GetFlag(FLAGS_rate));
  return driver.Run(max_ops, d, stats, absl::GetFlag(FLAGS_server_pid));
}

nlohmann::json Header(const std::string& mode) {
  return {{"mode", mode},
          {"address", absl::GetFlag(FLAGS_address)},
          {"concurrency", absl::GetFlag(FLAGS_concurrency)},
          {"rate", absl::GetFlag(FLAGS_rate)},
          {"channels", absl::GetFlag(FLAGS_channels)},
          {"model", absl::GetFlag(FLAGS_model)}};
}

int RunCompare(const Client& client) {
  AdmitReleaseWorkload admit(&client, absl::GetFlag(FLAGS_model),
                             absl::GetFlag(FLAGS_prompt_tokens),
                             absl::GetFlag(FLAGS_max_new_tokens));
  NoopWorkload noop(&client);
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  const absl::Duration phase = absl::GetFlag(FLAGS_duration) / (2 * rounds);
  const int64_t max_ops = absl::GetFlag(FLAGS_requests) / (2 * rounds);
  {
    Stats discard;
    RunPhase(&noop, client, absl::GetFlag(FLAGS_warmup), max_ops, &discard);
    RunPhase(&admit, client, absl::GetFlag(FLAGS_warmup), max_ops, &discard);
  }
  Stats admit_stats, noop_stats;
  // Throughput ratio of each round's two adjacent phases: the machine's
  // speed (a shared VM's steal time) changes over seconds, and a round's
  // two phases see nearly the same machine.
  std::vector<double> round_ratios;
  auto rate_of = [](const Stats& s, uint64_t ops, double seconds) {
    const double dt = s.seconds - seconds;
    return dt > 0 ? static_cast<double>(s.ops.load() - ops) / dt : 0.0;
  };
  for (int r = 0; r < rounds; ++r) {
    // ABBA order, so a drift in the machine's load falls on both alike.
    const bool admit_first = r % 2 == 0;
    const uint64_t admit_ops = admit_stats.ops.load();
    const uint64_t noop_ops = noop_stats.ops.load();
    const double admit_seconds = admit_stats.seconds;
    const double noop_seconds = noop_stats.seconds;
    for (int k = 0; k < 2; ++k) {
      if ((k == 0) == admit_first) {
        RunPhase(&admit, client, phase, max_ops, &admit_stats);
      } else {
        RunPhase(&noop, client, phase, max_ops, &noop_stats);
      }
    }
    const double noop_rate = rate_of(noop_stats, noop_ops, noop_seconds);
    if (noop_rate > 0) {
      round_ratios.push_back(
          rate_of(admit_stats, admit_ops, admit_seconds) / noop_rate);
    }
  }
  std::sort(round_ratios.begin(), round_ratios.end());
  double median_ratio = 0;
  if (!round_ratios.empty()) {
    const size_t n = round_ratios.size();
    median_ratio = (round_ratios[(n - 1) / 2] + round_ratios[n / 2]) / 2;
  }
  nlohmann::json out = Header("compare");
  out["rounds"] = rounds;
  out["admit_release"] = admit_stats.Summary("admit", "release", true);
  out["noop"] = noop_stats.Summary("check1", "check2", false);
  Histogram checks;
  checks.Merge(noop_stats.first);
  checks.Merge(noop_stats.second);
  const double admit_rate = admit_stats.ops / admit_stats.seconds;
  const double noop_rate = noop_stats.ops / noop_stats.seconds;
  auto ratio = [](double a, double b) {
    return b > 0 ? std::round(a / b * 1000) / 1000 : 0;
  };
  out["ratios"] = {
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
  out["noop"]["latency_us"]["check"] = checks.Summary();
  std::cout << out.dump(2) << std::endl;
  return 0;
}

int RunOne(const Client& client, const std::string& mode) {
  std::unique_ptr<TimerThread> timers;
  std::unique_ptr<Workload> workload;
  if (mode == "admit-release") {
    workload = std::make_unique<AdmitReleaseWorkload>(
        &client, absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_prompt_tokens),
        absl::GetFlag(FLAGS_max_new_tokens));
  } else if (mode == "noop") {
    workload = std::make_unique<NoopWorkload>(&client);
  } else {
    timers = std::make_unique<TimerThread>();
    workload = std::make_unique<MixedWorkload>(
        &client, absl::GetFlag(FLAGS_model), timers.get());
  }
  if (absl::GetFlag(FLAGS_warmup) > absl::ZeroDuration() && mode != "mixed") {
    Stats discard;
    RunPhase(workload.get(), client, absl::GetFlag(FLAGS_warmup),
             absl::GetFlag(FLAGS_requests), &discard);
  }
  Stats stats;
  RunPhase(workload.get(), client, absl::GetFlag(FLAGS_duration),
           absl::GetFlag(FLAGS_requests), &stats);
  nlohmann::json out = Header(mode);
  out["result"] = mode == "noop" ? stats.Summary("check1", "check2", false)
                                 : stats.Summary("admit", "release", true);
  std::cout << out.dump(2) << std::endl;
  return 0;
}

// ------------------------------------------------------------ Hold mode ---

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

absl::StatusOr<kvgate::v1::Budget> GetBudget(const Client& client) {
  kvgate::v1::GetBudgetRequest request;
  request.set_model(absl::GetFlag(FLAGS_model));
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

int RunHold(const Client& client) {
  const int pid = absl::GetFlag(FLAGS_server_pid);
  const int n = absl::GetFlag(FLAGS_hold_requests);
  AdmitRequest shape;
  shape.set_model(absl::GetFlag(FLAGS_model));
  shape.set_tenant("hold");
  auto* seq = shape.add_sequences();
  seq->set_prompt_tokens(absl::GetFlag(FLAGS_prompt_tokens));
  seq->set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));

  int full = 0;
  std::vector<std::string> fill = FillBudget(client, shape, &full);
  if (!full) {
    std::cerr << "kvgate-loadgen: could not fill the budget" << std::endl;
    return 1;
  }
  absl::SleepFor(absl::Milliseconds(200));
  const ProcessSample idle = ReadProcess(pid);

  // Every held Admit: once admitted, its lease is released at once, which
  // lets the next one in.
  struct Held {
    grpc::ClientContext admit_context, release_context;
    AdmitRequest request;
    AdmitResponse response;
    kvgate::v1::ReleaseRequest release;
    kvgate::v1::ReleaseResponse released;
  };
  Stats stats;
  std::atomic<int> answered{0};
  absl::Notification all_answered;
  auto finish = [&](Held* h) {
    delete h;
    if (answered.fetch_add(1) + 1 == n) all_answered.Notify();
  };
  const absl::Duration wait = absl::GetFlag(FLAGS_hold_wait);
  const int64_t start = NowNanos();
  for (int i = 0; i < n; ++i) {
    auto* h = new Held;
    h->request = shape;
    h->request.set_request_id(absl::StrCat("held-", i));
    h->request.mutable_max_queue_wait()->set_seconds(
        absl::ToInt64Seconds(wait));
    SetDeadline(&h->admit_context, wait + absl::GetFlag(FLAGS_rpc_deadline));
    const size_t channel = static_cast<size_t>(i) % client.size();
    client.stub(channel)->async()->Admit(
        &h->admit_context, &h->request, &h->response,
        [&, h, channel](grpc::Status s) {
          stats.first.Record(NowNanos() - start);
          if (!s.ok()) {
            stats.Error(s);
            return finish(h);
          }
          stats.outcomes[OutcomeIndex(h->response)].fetch_add(1);
          if (h->response.decision() != kvgate::v1::ADMITTED) return finish(h);
          h->release.set_lease_id(h->response.lease_id());
          SetDeadline(&h->release_context, absl::Seconds(30));
          client.stub(channel)->async()->Release(&h->release_context,
                                                 &h->release, &h->released,
                                                 [&, h](grpc::Status rs) {
                                                   if (!rs.ok())
                                                     stats.Error(rs);
                                                   finish(h);
                                                 });
        });
  }
  // Wait until the server holds them all.
  uint32_t queued = 0;
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (absl::Now() < give_up) {
    absl::StatusOr<kvgate::v1::Budget> budget = GetBudget(client);
    if (budget.ok()) queued = budget->queued_requests();
    if (queued >= static_cast<uint32_t>(n)) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  const double queue_seconds = static_cast<double>(NowNanos() - start) / 1e9;
  absl::SleepFor(absl::Milliseconds(500));
  ProcessSample during = ReadProcess(pid);
  int max_threads = during.threads;
  for (int i = 0; i < 10; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    max_threads = std::max(max_threads, ReadProcess(pid).threads);
  }
  // Release the budget: the queue drains through admit -> release cascades.
  const int64_t drain_start = NowNanos();
  for (const std::string& lease : fill) ReleaseLease(client, lease);
  const bool drained =
      all_answered.WaitForNotificationWithTimeout(absl::Seconds(120));
  const double drain_seconds =
      static_cast<double>(NowNanos() - drain_start) / 1e9;
  absl::SleepFor(absl::Milliseconds(200));
  const ProcessSample after = ReadProcess(pid);

  nlohmann::json out = Header("hold");
  out["fill_leases"] = fill.size();
  out["held_requests"] = n;
  out["queued_seen"] = queued;
  out["seconds_to_queue_all"] = queue_seconds;
  out["threads_idle"] = idle.threads;
  out["threads_queued"] = during.threads;
  out["threads_queued_max"] = max_threads;
  out["threads_after"] = after.threads;
  out["rss_idle_kib"] = idle.rss_kib;
  out["rss_queued_kib"] = during.rss_kib;
  out["rss_after_kib"] = after.rss_kib;
  if (idle.rss_kib >= 0 && n > 0) {
    out["rss_per_queued_bytes"] = std::round(
        static_cast<double>(during.rss_kib - idle.rss_kib) * 1024.0 / n);
  }
  out["all_answered"] = drained;
  out["answered"] = answered.load();
  out["drain_seconds"] = drain_seconds;
  nlohmann::json d = nlohmann::json::object();
  for (size_t i = 0; i < stats.outcomes.size(); ++i) {
    if (stats.outcomes[i] > 0) d[kOutcomes[i]] = stats.outcomes[i].load();
  }
  out["decisions"] = d;
  out["errors"] = stats.ErrorCount();
  std::cout << out.dump(2) << std::endl;
  if (!drained) {
    // Leave nothing behind holding stack references.
    std::cerr << "kvgate-loadgen: not every held Admit was answered"
              << std::endl;
    std::_Exit(1);
  }
  return 0;
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
  if (absl::GetFlag(FLAGS_concurrency) < 1 ||
      absl::GetFlag(FLAGS_channels) < 1) {
    std::cerr << "kvgate-loadgen: --concurrency and --channels must be >= 1"
              << std::endl;
    return 2;
  }
  std::unique_ptr<Client> client = Client::Connect(
      absl::GetFlag(FLAGS_address), absl::GetFlag(FLAGS_channels));
  if (client == nullptr) return 1;
  if (absl::GetFlag(FLAGS_compare)) return RunCompare(*client);
  if (mode == "hold") return RunHold(*client);
  return RunOne(*client, mode);
}

}  // namespace
}  // namespace kvgate

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
  return kvgate::Main();
}
