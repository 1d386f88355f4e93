#include "bench/loadgen/workloads.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <iostream>
#include <random>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace kvgate::loadgen {

using kvgate::v1::AdmitRequest;
using kvgate::v1::AdmitResponse;

// --------------------------------------------------------------- Client ---

std::unique_ptr<Client> Client::Connect(const std::string& address,
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
      std::cerr << "kvgate-loadgen: cannot connect to " << address << std::endl;
      return nullptr;
    }
    client->stubs_.push_back(kvgate::v1::Admission::NewStub(channel));
    client->generic_.push_back(std::make_unique<grpc::GenericStub>(channel));
    client->channels_.push_back(std::move(channel));
  }
  return client;
}

void SetDeadline(grpc::ClientContext* context, absl::Duration d) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + d));
}

namespace {

// -------------------------------------------------------- admit-release ---

class AdmitReleaseWorkload final : public Workload {
 public:
  AdmitReleaseWorkload(const Client* client, const WorkloadOptions& options)
      : client_(client),
        model_(options.model),
        prompt_(options.prompt_tokens),
        output_(options.max_new_tokens),
        rpc_deadline_(options.rpc_deadline) {}

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
    SetDeadline(&call->admit_context, rpc_deadline_);
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
    SetDeadline(&call->release_context, rpc_deadline_);
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
  const absl::Duration rpc_deadline_;
  std::atomic<uint64_t> next_id_{0};
};

// ----------------------------------------------------------------- noop ---

// Two grpc.health.v1.Health/Check calls back to back. The request is an
// empty HealthCheckRequest (service ""), whose encoding is zero bytes.
class NoopWorkload final : public Workload {
 public:
  NoopWorkload(const Client* client, const WorkloadOptions& options)
      : client_(client), rpc_deadline_(options.rpc_deadline) {}

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
    SetDeadline(&call->contexts[step], rpc_deadline_);
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
  const absl::Duration rpc_deadline_;
};

// ---------------------------------------------------------------- mixed ---

// Realistic traffic. Prompt and output lengths are log-normal with the means
// of the ShareGPT conversations used to evaluate vLLM (about 161 prompt and
// 338 output tokens; Kwon et al., "Efficient Memory Management for Large
// Language Model Serving with PagedAttention", SOSP 2023, section 6.1);
// the spreads (sigma 1.0 and 0.8) are our assumption. One request in five
// samples 2 or 4 sequences. Four tenants with shares 50/25/15/10 %;
// priorities 10 % CRITICAL, 70 % STANDARD, 20 % SHEDDABLE.
class MixedWorkload final : public Workload {
 public:
  MixedWorkload(const Client* client, const WorkloadOptions& options,
                TimerThread* timers)
      : client_(client), options_(options), timers_(timers) {}

  void Start(size_t channel, std::function<void()> done) override {
    auto* call = new Call;
    call->stats = stats_;
    call->done = std::move(done);
    call->channel = channel;
    Draw(&call->request);
    SetDeadline(&call->admit_context, options_.rpc_deadline);
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
    request->set_model(options_.model);
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
    const absl::Duration w = options_.max_queue_wait;
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
                                options_.decode_tokens_per_second;
    timers_->At(absl::Now() + absl::Seconds(hold_seconds),
                [this, call] { Release(call); });
  }

  void Release(Call* call) {
    call->release.set_lease_id(call->response.lease_id());
    SetDeadline(&call->release_context, options_.rpc_deadline);
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
  const WorkloadOptions options_;
  TimerThread* timers_;
  absl::Mutex mu_;
  absl::BitGen gen_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

// ---------------------------------------------------------- TimerThread ---

TimerThread::~TimerThread() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void TimerThread::At(absl::Time when, std::function<void()> fn) {
  absl::MutexLock lock(&mu_);
  timers_.emplace(when, std::move(fn));
}

void TimerThread::Run() {
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

// ------------------------------------------------------------ Factories ---

std::unique_ptr<Workload> MakeAdmitReleaseWorkload(
    const Client* client, const WorkloadOptions& options) {
  return std::make_unique<AdmitReleaseWorkload>(client, options);
}

std::unique_ptr<Workload> MakeNoopWorkload(const Client* client,
                                           const WorkloadOptions& options) {
  return std::make_unique<NoopWorkload>(client, options);
}

std::unique_ptr<Workload> MakeMixedWorkload(const Client* client,
                                            const WorkloadOptions& options,
                                            TimerThread* timers) {
  return std::make_unique<MixedWorkload>(client, options, timers);
}

}  // namespace kvgate::loadgen
