// Tests of AdmissionService over gRPC's in-process transport: the real
// service, ModelRegistry, ModelPool, Controller and KvgateMetrics, driven by
// a generated client stub, with a FakeClock in place of the wall clock.
//
// Nothing here sleeps to let time pass: a queue deadline or a lease TTL is
// reached by advancing the FakeClock and calling the controller's Tick, as
// kvgated's ticker does. Every wait for an answer is bounded (kWait of real
// time) and fails the test when it runs out.
//
// The pool serves the gpt2 preset. Its capacity is an exact multiple of one
// request shape (100 prompt tokens + 28 new tokens), whose bytes come from
// the same estimator the service uses, so no estimator figure is hard-coded.
//
// What only a real kvgated process shows (sockets, TLS, signals, the journal,
// NVML, the metrics endpoint, start-up errors) is in tests/integration.
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "estimator/model_spec.h"
#include "estimator/serving.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvgate/v1/admission.grpc.pb.h"
#include "metrics/metrics.h"
#include "plugin/admission/controller.h"
#include "plugin/admission/model_pool.h"
#include "plugin/security/auth.h"
#include "plugin/server/kvgate_service.h"
#include "prometheus/metric_family.h"
#include "tests/testing/admission_client.h"
#include "tests/testing/fake_clock.h"

namespace kvgate {
namespace {

using kvgate::v1::Admission;
using kvgate::v1::AdmitRequest;
using kvgate::v1::AdmitResponse;
using kvgate::v1::Budget;
using ::testing::HasSubstr;

constexpr char kModel[] = "gpt2";
// One request shape: 128 tokens, 8 blocks of 16.
constexpr uint32_t kPromptTokens = 100;
constexpr uint32_t kMaxNewTokens = 28;
// Longest real-time wait for anything (an answer, a queue to fill).
constexpr absl::Duration kWait = absl::Seconds(5);

ServingModel Gpt2() {
  absl::StatusOr<ModelSpec> spec = LoadPreset(kModel);
  EXPECT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<ServingModel> model = ServingModel::Create(*spec, {});
  EXPECT_TRUE(model.ok()) << model.status();
  return *std::move(model);
}

AdmitRequest Request(const std::string& request_id, int sequences = 1,
                     kvgate::v1::Priority priority = kvgate::v1::STANDARD) {
  return AdmitRequestOf(request_id, kModel, "tenant-a", priority, sequences,
                        kPromptTokens, kMaxNewTokens);
}

// How to set the service up for one test.
struct ServiceSetup {
  // The pool's capacity, in requests of the test's shape.
  uint64_t capacity_requests = 2;
  // capacity_bytes and listener are filled in.
  Controller::Options controller;
  AdmissionService::Options service;
  // SetReady(true) once started.
  bool ready = true;
};

class AdmissionServiceTest : public ::testing::Test {
 protected:
  AdmissionServiceTest() : metrics_(KvgateMetrics::Options{}) {
    const ServingModel model = Gpt2();
    BatchEstimate estimate;
    EXPECT_TRUE(
        model.EstimateBatch({{kPromptTokens, kMaxNewTokens}}, &estimate).ok());
    shape_ = estimate;
    weights_bytes_ = model.weights_bytes();
  }

  // Builds the pool and the service and starts an in-process server.
  void Start(ServiceSetup setup = {}) {
    ASSERT_GT(shape_.total_bytes, 0u);
    Controller::Options options = setup.controller;
    options.capacity_bytes = CapacityFor(setup.capacity_requests);
    options.listener = metrics_.ListenerFor(kModel);
    absl::StatusOr<std::unique_ptr<Controller>> controller =
        Controller::Create(options, &clock_);
    ASSERT_TRUE(controller.ok()) << controller.status();
    ModelPoolSettings settings{kModel,
                               Gpt2(),
                               /*gpus=*/{},
                               /*gpu_memory_utilization=*/1.0,
                               /*runtime_overhead_bytes=*/0,
                               /*activation_sum=*/false,
                               /*engine=*/{}};
    registry_.Add(std::make_unique<ModelPool>(
        std::move(settings), options.capacity_bytes, *std::move(controller)));
    service_ = std::make_unique<AdmissionService>(&registry_, &clock_,
                                                  &metrics_, setup.service);
    if (setup.ready) service_->SetReady(true);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = Admission::NewStub(server_->InProcessChannel({}));
  }

  void TearDown() override {
    if (server_ == nullptr) return;
    EXPECT_TRUE(controller().CheckInvariants().ok())
        << controller().CheckInvariants();
    // Answer whatever still waits, as kvgated's drain does, so that the
    // server's Shutdown has nothing to wait for.
    controller().Drain();
    server_->Shutdown(absl::ToChronoTime(absl::Now() + kWait));
    EXPECT_TRUE(service_->WaitForCalls(kWait))
        << "queued Admits still alive " << kWait << " after Shutdown";
  }

  // Capacity into which exactly `n` requests of the shape fit: n KV
  // reservations plus one activation reserve (the largest live one).
  uint64_t CapacityFor(uint64_t n) const {
    return n * shape_.kv_cache_bytes + shape_.activation_bytes;
  }

  ModelPool& pool() { return *registry_.Find(kModel); }
  Controller& controller() { return pool().controller(); }

  // Moves the FakeClock on by `d` and runs the controller's Tick, as
  // kvgated's ticker would.
  void AdvanceAndTick(absl::Duration d) {
    clock_.Advance(d);
    controller().Tick();
  }

  // Waits (bounded) until `n` requests wait in the queue. The server
  // handles a call on its own thread, so a call just made may not have
  // reached the controller yet.
  bool WaitForQueued(uint32_t n) {
    const absl::Time give_up = absl::Now() + kWait;
    while (controller().Snapshot().queued_requests != n) {
      if (absl::Now() >= give_up) {
        ADD_FAILURE() << "queued_requests is "
                      << controller().Snapshot().queued_requests << ", not "
                      << n << ", after " << kWait;
        return false;
      }
      std::this_thread::yield();
    }
    return true;
  }

  // The Admission calls on stub_ (AdmissionClient), each with a kWait
  // deadline and, when `token` is set, a bearer token.
  AdmissionClient client() const { return AdmissionClient(stub_.get(), kWait); }
  grpc::Status Admit(const AdmitRequest& request, AdmitResponse* response,
                     const std::string& token = "") {
    return client().Admit(request, response, token);
  }
  // Admits `request_id` and expects ADMITTED; returns the lease.
  std::string AdmitOrFail(const std::string& request_id,
                          const std::string& token = "") {
    return client().AdmitOrFail(Request(request_id), token);
  }
  grpc::Status Release(const std::string& lease_id, uint64_t* released_bytes,
                       const std::string& token = "") {
    return client().Release(lease_id, released_bytes, token);
  }
  grpc::Status Renew(const std::string& lease_id, absl::Duration* ttl) {
    return client().Renew(lease_id, ttl);
  }
  grpc::Status GetBudget(const std::string& model, Budget* budget) {
    return client().GetBudget(model, budget);
  }
  // The budget of kModel; a test failure unless the call succeeds.
  Budget GetBudget() { return client().GetBudgetOrFail(kModel); }
  grpc::Status Estimate(const kvgate::v1::EstimateRequest& request,
                        kvgate::v1::EstimateResponse* response) {
    return client().Estimate(request, response);
  }

  // kvgate_lease_expirations_total{model="gpt2"}; -1 when absent.
  double LeaseExpirations() const {
    for (const prometheus::MetricFamily& family :
         metrics_.registry()->Collect()) {
      if (family.name != "kvgate_lease_expirations_total") continue;
      for (const prometheus::ClientMetric& metric : family.metric) {
        for (const prometheus::ClientMetric::Label& label : metric.label) {
          if (label.name == "model" && label.value == kModel) {
            return metric.counter.value;
          }
        }
      }
    }
    return -1;
  }

  BatchEstimate shape_;
  uint64_t weights_bytes_ = 0;
  // Declared in the order of their dependencies: each outlives what uses it.
  FakeClock clock_;
  KvgateMetrics metrics_;
  ModelRegistry registry_;
  std::unique_ptr<AdmissionService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Admission::Stub> stub_;
};

// ---------------------------------------------------------------------------
// Leases.

TEST_F(AdmissionServiceTest, AdmitReservesTheEstimatedBytesUnderALease) {
  Start();
  AdmitResponse response;
  const grpc::Status status = Admit(Request("r1"), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::ADMITTED);
  EXPECT_FALSE(response.lease_id().empty());
  EXPECT_EQ(response.reason(), "");
  EXPECT_EQ(response.reserved_bytes(), shape_.total_bytes);
  EXPECT_FALSE(response.has_queued_for());
  EXPECT_FALSE(response.has_retry_after());

  const Budget budget = GetBudget();
  EXPECT_EQ(budget.capacity_bytes(), CapacityFor(2));
  EXPECT_EQ(budget.weights_bytes(), weights_bytes_);
  EXPECT_EQ(budget.reserved_bytes(), shape_.total_bytes);
  EXPECT_EQ(budget.free_bytes(), CapacityFor(2) - shape_.total_bytes);
  EXPECT_EQ(budget.active_leases(), 1u);
  EXPECT_EQ(budget.queued_requests(), 0u);
}

TEST_F(AdmissionServiceTest, AdmitRetriedWithTheSameRequestIdKeepsItsLease) {
  Start();
  const std::string first = AdmitOrFail("retried");
  const std::string second = AdmitOrFail("retried");
  EXPECT_EQ(first, second);
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.reserved_bytes(), shape_.total_bytes);
  EXPECT_EQ(budget.active_leases(), 1u);
}

TEST_F(AdmissionServiceTest, ReleaseFreesTheBytesAndIsIdempotent) {
  Start();
  const std::string lease = AdmitOrFail("r1");
  uint64_t released = 0;
  ASSERT_TRUE(Release(lease, &released).ok());
  EXPECT_EQ(released, shape_.total_bytes);
  Budget budget = GetBudget();
  EXPECT_EQ(budget.reserved_bytes(), 0u);
  EXPECT_EQ(budget.active_leases(), 0u);
  EXPECT_EQ(budget.free_bytes(), budget.capacity_bytes());

  released = 1;
  const grpc::Status again = Release(lease, &released);
  ASSERT_TRUE(again.ok()) << again.error_message();
  EXPECT_EQ(released, 0u);
  budget = GetBudget();
  EXPECT_EQ(budget.reserved_bytes(), 0u);
  EXPECT_EQ(budget.active_leases(), 0u);
}

TEST_F(AdmissionServiceTest, UnknownOrMissingLeaseIsNotFoundOrInvalid) {
  Start();
  uint64_t released = 0;
  absl::Duration ttl;
  EXPECT_EQ(Release("no-such-lease", &released).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Renew("no-such-lease", &ttl).error_code(),
            grpc::StatusCode::NOT_FOUND);
  const grpc::Status release_empty = Release("", &released);
  EXPECT_EQ(release_empty.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(release_empty.error_message(), HasSubstr("lease_id"));
  const grpc::Status renew_empty = Renew("", &ttl);
  EXPECT_EQ(renew_empty.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(renew_empty.error_message(), HasSubstr("lease_id"));
}

TEST_F(AdmissionServiceTest, RenewRestartsTheLeaseTtl) {
  ServiceSetup setup;
  setup.controller.lease_ttl = absl::Seconds(60);
  Start(setup);
  const std::string lease = AdmitOrFail("r1");
  AdvanceAndTick(absl::Seconds(45));
  absl::Duration ttl;
  const grpc::Status renewed = Renew(lease, &ttl);
  ASSERT_TRUE(renewed.ok()) << renewed.error_message();
  EXPECT_EQ(ttl, absl::Seconds(60));
  // Without the renewal the lease would have expired at 60 s.
  AdvanceAndTick(absl::Seconds(45));
  EXPECT_EQ(GetBudget().active_leases(), 1u);

  uint64_t released = 0;
  ASSERT_TRUE(Release(lease, &released).ok());
  EXPECT_EQ(Renew(lease, &ttl).error_code(), grpc::StatusCode::NOT_FOUND);
}

// A client that never releases: Tick reclaims the lease at its TTL and
// counts it; renewing it then is too late, releasing it is harmless.
TEST_F(AdmissionServiceTest, NeverReleasedLeaseIsReclaimedAtItsTtl) {
  ServiceSetup setup;
  setup.controller.lease_ttl = absl::Seconds(10);
  Start(setup);
  EXPECT_EQ(LeaseExpirations(), 0);
  const std::string lease = AdmitOrFail("forgotten");
  AdvanceAndTick(absl::Seconds(10) - absl::Nanoseconds(1));
  EXPECT_EQ(GetBudget().active_leases(), 1u);
  AdvanceAndTick(absl::Nanoseconds(1));
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.active_leases(), 0u);
  EXPECT_EQ(budget.reserved_bytes(), 0u);
  EXPECT_EQ(LeaseExpirations(), 1);

  absl::Duration ttl;
  EXPECT_EQ(Renew(lease, &ttl).error_code(), grpc::StatusCode::NOT_FOUND);
  uint64_t released = 1;
  ASSERT_TRUE(Release(lease, &released).ok());
  EXPECT_EQ(released, 0u);
}

// ---------------------------------------------------------------------------
// GetBudget and Estimate.

TEST_F(AdmissionServiceTest, GetBudgetReportsTheLedgerAndTheQueue) {
  Start();
  pool().set_device_free_bytes(123456789);
  const std::string a = AdmitOrFail("a");
  const std::string b = AdmitOrFail("b");
  PendingAdmit queued(stub_.get(), Request("queued"));
  ASSERT_TRUE(WaitForQueued(1));

  const Budget budget = GetBudget();
  EXPECT_EQ(budget.capacity_bytes(), CapacityFor(2));
  EXPECT_EQ(budget.weights_bytes(), weights_bytes_);
  // Two KV reservations and one activation reserve (the largest live one).
  EXPECT_EQ(budget.reserved_bytes(), CapacityFor(2));
  EXPECT_EQ(budget.activation_reserve_bytes(), shape_.activation_bytes);
  EXPECT_EQ(budget.free_bytes(), 0u);
  EXPECT_EQ(budget.device_free_bytes(), 123456789u);
  EXPECT_EQ(budget.active_leases(), 2u);
  EXPECT_EQ(budget.queued_requests(), 1u);
}

TEST_F(AdmissionServiceTest, EstimateBreaksTheBatchDownAndReservesNothing) {
  Start();
  kvgate::v1::EstimateRequest request;
  request.set_model(kModel);
  kvgate::v1::Sequence* s = request.add_sequences();
  s->set_prompt_tokens(kPromptTokens);
  s->set_max_new_tokens(kMaxNewTokens);
  s = request.add_sequences();
  s->set_prompt_tokens(500);
  s->set_max_new_tokens(200);
  kvgate::v1::EstimateResponse response;
  const grpc::Status status = Estimate(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();

  const ServingModel model = Gpt2();
  BatchEstimate expected;
  ASSERT_TRUE(model
                  .EstimateBatch({{kPromptTokens, kMaxNewTokens}, {500, 200}},
                                 &expected)
                  .ok());
  EXPECT_EQ(response.kv_cache_bytes(), expected.kv_cache_bytes);
  EXPECT_EQ(response.activation_bytes(), expected.activation_bytes);
  EXPECT_EQ(response.total_bytes(), expected.total_bytes);
  EXPECT_EQ(response.total_bytes(),
            response.kv_cache_bytes() + response.activation_bytes());
  EXPECT_EQ(response.kv_cache_tokens(), expected.kv_cache_tokens);
  EXPECT_EQ(response.kv_cache_bytes_per_token(),
            model.kv_cache_bytes_per_token());
  EXPECT_EQ(response.weights_bytes(), weights_bytes_);
  EXPECT_GT(response.kv_cache_bytes(), shape_.kv_cache_bytes);

  const Budget budget = GetBudget();
  EXPECT_EQ(budget.reserved_bytes(), 0u);
  EXPECT_EQ(budget.active_leases(), 0u);
}

// ---------------------------------------------------------------------------
// The queue.

TEST_F(AdmissionServiceTest, BatchLargerThanTheCapacityIsRejectedNeverFits) {
  ServiceSetup setup;
  setup.capacity_requests = 1;
  Start(setup);
  AdmitResponse response;
  const grpc::Status status = Admit(Request("big", 2), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(response.reason(), "NEVER_FITS");
  EXPECT_EQ(response.lease_id(), "");
  // Retrying does not help: no retry_after.
  EXPECT_EQ(FromProto(response.retry_after()), absl::ZeroDuration());
  EXPECT_EQ(FromProto(response.queued_for()), absl::ZeroDuration());
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.queued_requests(), 0u);
  EXPECT_EQ(budget.reserved_bytes(), 0u);
}

TEST_F(AdmissionServiceTest, QueuedAdmitIsAdmittedWhenALeaseIsReleased) {
  ServiceSetup setup;
  setup.capacity_requests = 1;
  Start(setup);
  const std::string lease = AdmitOrFail("first");
  PendingAdmit second(stub_.get(), Request("second"));
  ASSERT_TRUE(WaitForQueued(1));
  EXPECT_FALSE(second.Answered());

  clock_.Advance(absl::Seconds(2));
  uint64_t released = 0;
  ASSERT_TRUE(Release(lease, &released).ok());
  const grpc::Status status = second.Wait();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(second.response().decision(), kvgate::v1::ADMITTED);
  EXPECT_FALSE(second.response().lease_id().empty());
  EXPECT_NE(second.response().lease_id(), lease);
  EXPECT_EQ(second.response().reserved_bytes(), shape_.total_bytes);
  EXPECT_EQ(FromProto(second.response().queued_for()), absl::Seconds(2));
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.queued_requests(), 0u);
  EXPECT_EQ(budget.reserved_bytes(), shape_.total_bytes);
  EXPECT_EQ(budget.active_leases(), 1u);
}

TEST_F(AdmissionServiceTest, MaxQueueWaitRejectsWithQueueTimeoutAndRetryAfter) {
  ServiceSetup setup;
  setup.capacity_requests = 1;
  Start(setup);
  AdmitOrFail("first");
  PendingAdmit second(stub_.get(),
                      WithQueueWait(Request("second"), absl::Seconds(3)));
  ASSERT_TRUE(WaitForQueued(1));
  AdvanceAndTick(absl::Seconds(3) - absl::Nanoseconds(1));
  EXPECT_EQ(controller().Snapshot().queued_requests, 1u);
  AdvanceAndTick(absl::Nanoseconds(1));

  const grpc::Status status = second.Wait();
  ASSERT_TRUE(status.ok()) << status.error_message();
  const AdmitResponse& response = second.response();
  EXPECT_EQ(response.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(response.reason(), "QUEUE_TIMEOUT");
  EXPECT_EQ(response.lease_id(), "");
  EXPECT_GE(FromProto(response.retry_after()), Controller::kMinRetryAfter);
  EXPECT_LE(FromProto(response.retry_after()), Controller::kMaxRetryAfter);
  EXPECT_EQ(FromProto(response.queued_for()), absl::Seconds(3));
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.queued_requests(), 0u);
  EXPECT_EQ(budget.reserved_bytes(), shape_.total_bytes);
}

TEST_F(AdmissionServiceTest, ServerMaxQueueWaitCapsTheWait) {
  ServiceSetup setup;
  setup.capacity_requests = 1;
  setup.controller.max_queue_wait = absl::Milliseconds(200);
  Start(setup);
  AdmitOrFail("first");
  // Asks for longer than the server allows.
  PendingAdmit second(stub_.get(),
                      WithQueueWait(Request("second"), absl::Seconds(10)));
  ASSERT_TRUE(WaitForQueued(1));
  AdvanceAndTick(absl::Milliseconds(200));
  const grpc::Status status = second.Wait();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(second.response().reason(), "QUEUE_TIMEOUT");
  EXPECT_GT(FromProto(second.response().retry_after()), absl::ZeroDuration());
  EXPECT_EQ(FromProto(second.response().queued_for()), absl::Milliseconds(200));
}

// A gRPC deadline also ends the wait: the client sees DEADLINE_EXCEEDED and
// the entry leaves the queue. (The one test here that waits for real time:
// gRPC deadlines run on the wall clock.)
TEST_F(AdmissionServiceTest, GrpcDeadlineEndsTheWaitAndLeavesTheQueue) {
  ServiceSetup setup;
  setup.capacity_requests = 1;
  Start(setup);
  AdmitOrFail("first");
  PendingAdmit second(stub_.get(), Request("second"), /*token=*/"",
                      absl::Milliseconds(100));
  EXPECT_EQ(second.Wait().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_TRUE(WaitForQueued(0));
  EXPECT_EQ(GetBudget().reserved_bytes(), shape_.total_bytes);
}

// A client that cancels while queued frees its queue slot (the next request
// queues rather than being rejected QUEUE_FULL) and never takes the bytes.
TEST_F(AdmissionServiceTest, ClientCancelWhileQueuedFreesItsQueueSlot) {
  ServiceSetup setup;
  setup.capacity_requests = 1;
  setup.controller.max_queue_requests = 1;
  Start(setup);
  const std::string lease = AdmitOrFail("first");
  PendingAdmit second(stub_.get(), Request("second"));
  ASSERT_TRUE(WaitForQueued(1));

  second.Cancel();
  EXPECT_EQ(second.Wait().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(WaitForQueued(0));

  PendingAdmit third(stub_.get(), Request("third"));
  ASSERT_TRUE(WaitForQueued(1));
  EXPECT_FALSE(third.Answered());
  uint64_t released = 0;
  ASSERT_TRUE(Release(lease, &released).ok());
  const grpc::Status status = third.Wait();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(third.response().decision(), kvgate::v1::ADMITTED);
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.reserved_bytes(), shape_.total_bytes);
  EXPECT_EQ(budget.active_leases(), 1u);
  EXPECT_EQ(budget.queued_requests(), 0u);
}

TEST_F(AdmissionServiceTest, FullQueueRejectsWithQueueFull) {
  ServiceSetup setup;
  setup.capacity_requests = 1;
  setup.controller.max_queue_requests = 1;
  Start(setup);
  AdmitOrFail("first");
  PendingAdmit second(stub_.get(), Request("second"));
  ASSERT_TRUE(WaitForQueued(1));
  AdmitResponse response;
  const grpc::Status status = Admit(Request("third"), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(response.reason(), "QUEUE_FULL");
  EXPECT_GT(FromProto(response.retry_after()), absl::ZeroDuration());
  EXPECT_FALSE(second.Answered());
  EXPECT_EQ(GetBudget().queued_requests(), 1u);
}

TEST_F(AdmissionServiceTest, CriticalArrivalShedsSheddableFromAFullQueue) {
  ServiceSetup setup;
  setup.capacity_requests = 1;
  setup.controller.max_queue_requests = 1;
  Start(setup);
  const std::string lease = AdmitOrFail("first");
  PendingAdmit sheddable(stub_.get(),
                         Request("sheddable", 1, kvgate::v1::SHEDDABLE));
  ASSERT_TRUE(WaitForQueued(1));
  PendingAdmit critical(stub_.get(),
                        Request("critical", 1, kvgate::v1::CRITICAL));

  const grpc::Status shed = sheddable.Wait();
  ASSERT_TRUE(shed.ok()) << shed.error_message();
  EXPECT_EQ(sheddable.response().decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(sheddable.response().reason(), "SHED");
  EXPECT_GT(FromProto(sheddable.response().retry_after()),
            absl::ZeroDuration());
  ASSERT_TRUE(WaitForQueued(1));
  EXPECT_FALSE(critical.Answered());

  uint64_t released = 0;
  ASSERT_TRUE(Release(lease, &released).ok());
  const grpc::Status admitted = critical.Wait();
  ASSERT_TRUE(admitted.ok()) << admitted.error_message();
  EXPECT_EQ(critical.response().decision(), kvgate::v1::ADMITTED);
}

// ---------------------------------------------------------------------------
// Malformed requests, unknown models, readiness and draining.

TEST_F(AdmissionServiceTest, MalformedAdmitIsInvalidArgumentNamingTheField) {
  Start();
  struct Case {
    const char* what;
    AdmitRequest request;
    const char* field;
  };
  std::vector<Case> cases;
  cases.push_back({"empty request_id", Request(""), "request_id"});
  {
    AdmitRequest r = Request("no-sequences");
    r.clear_sequences();
    cases.push_back({"no sequences", r, "sequences"});
  }
  {
    AdmitRequest r = Request("zero-prompt", 2);
    r.mutable_sequences(1)->set_prompt_tokens(0);
    cases.push_back({"prompt_tokens 0", r, "sequences[1].prompt_tokens"});
  }
  {
    // gpt2's context is 1024 tokens.
    AdmitRequest r = Request("too-long");
    r.mutable_sequences(0)->set_prompt_tokens(1000);
    r.mutable_sequences(0)->set_max_new_tokens(25);
    cases.push_back({"prompt + max_new over the context", r, "sequences[0]"});
  }
  {
    AdmitRequest r = Request("odd-priority");
    r.set_priority(static_cast<kvgate::v1::Priority>(7));
    cases.push_back({"unknown priority", r, "priority"});
  }
  cases.push_back(
      {"too many sequences", Request("too-many", 4097), "limit of 4096"});
  {
    AdmitRequest r = Request("negative-wait");
    r.mutable_max_queue_wait()->set_seconds(-1);
    cases.push_back({"negative max_queue_wait", r, "max_queue_wait"});
  }
  {
    AdmitRequest r = Request("no-model");
    r.clear_model();
    cases.push_back({"no model", r, "model"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    AdmitResponse response;
    const grpc::Status status = Admit(c.request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(c.field));
  }
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.reserved_bytes(), 0u);
  EXPECT_EQ(budget.active_leases(), 0u);
  EXPECT_EQ(budget.queued_requests(), 0u);
}

TEST_F(AdmissionServiceTest, MalformedEstimateIsInvalidArgumentNamingTheField) {
  ServiceSetup setup;
  setup.service.max_sequences = 8;
  Start(setup);
  struct Case {
    const char* what;
    int sequences;
    uint32_t prompt_tokens;
    const char* field;
  };
  const std::vector<Case> cases = {
      {"no sequences", 0, kPromptTokens, "at least one sequence"},
      {"zero tokens", 1, 0, "prompt_tokens"},
      {"too many sequences", 9, kPromptTokens, "limit of 8"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    kvgate::v1::EstimateRequest request;
    request.set_model(kModel);
    for (int i = 0; i < c.sequences; ++i) {
      kvgate::v1::Sequence* s = request.add_sequences();
      s->set_prompt_tokens(c.prompt_tokens);
      s->set_max_new_tokens(kMaxNewTokens);
    }
    kvgate::v1::EstimateResponse response;
    const grpc::Status status = Estimate(request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr(c.field));
  }
}

// Service::Options::max_sequences (limits.max_sequences in the config)
// bounds Admit as well as Estimate.
TEST_F(AdmissionServiceTest, OversizedBatchIsInvalidArgument) {
  ServiceSetup setup;
  setup.service.max_sequences = 8;
  Start(setup);
  AdmitResponse response;
  const grpc::Status status = Admit(Request("nine", 9), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("limit of 8"));
  const grpc::Status eight = Admit(Request("eight", 8), &response);
  EXPECT_TRUE(eight.ok()) << eight.error_message();
}

TEST_F(AdmissionServiceTest, UnknownModelIsNotFoundAndListsTheServedOnes) {
  Start();
  AdmitRequest request = Request("r1");
  request.set_model("no-such-model");
  AdmitResponse response;
  const grpc::Status admit = Admit(request, &response);
  EXPECT_EQ(admit.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(admit.error_message(), HasSubstr("no-such-model"));
  // The answer lists what is served, so the caller can fix the name.
  EXPECT_THAT(admit.error_message(), HasSubstr("served models: 'gpt2'"));

  Budget budget;
  const grpc::Status budget_status = GetBudget("no-such-model", &budget);
  EXPECT_EQ(budget_status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(budget_status.error_message(),
              HasSubstr("served models: 'gpt2'"));

  kvgate::v1::EstimateRequest estimate_request;
  estimate_request.set_model("no-such-model");
  *estimate_request.mutable_sequences() = Request("x").sequences();
  kvgate::v1::EstimateResponse estimate;
  EXPECT_EQ(Estimate(estimate_request, &estimate).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(GetBudget().reserved_bytes(), 0u);
}

TEST_F(AdmissionServiceTest, EveryCallIsUnavailableUntilReady) {
  ServiceSetup setup;
  setup.ready = false;
  Start(setup);
  AdmitResponse response;
  EXPECT_EQ(Admit(Request("early"), &response).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  uint64_t released = 0;
  EXPECT_EQ(Release("some-lease", &released).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  absl::Duration ttl;
  EXPECT_EQ(Renew("some-lease", &ttl).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  Budget budget;
  EXPECT_EQ(GetBudget(kModel, &budget).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  kvgate::v1::EstimateRequest estimate_request;
  estimate_request.set_model(kModel);
  *estimate_request.mutable_sequences() = Request("x").sequences();
  kvgate::v1::EstimateResponse estimate;
  EXPECT_EQ(Estimate(estimate_request, &estimate).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(controller().Snapshot().reserved_bytes, 0u);

  service_->SetReady(true);
  AdmitOrFail("ready");
}

TEST_F(AdmissionServiceTest, DrainingRejectsNewAdmitsButServesLeases) {
  Start();
  const std::string lease = AdmitOrFail("before");
  service_->StartDraining();

  AdmitResponse response;
  const grpc::Status status = Admit(Request("after"), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(response.reason(), "DRAINING");
  EXPECT_EQ(response.lease_id(), "");

  absl::Duration ttl;
  EXPECT_TRUE(Renew(lease, &ttl).ok());
  EXPECT_EQ(GetBudget().active_leases(), 1u);
  uint64_t released = 0;
  ASSERT_TRUE(Release(lease, &released).ok());
  EXPECT_EQ(released, shape_.total_bytes);
}

// kvgated's drain: the service stops admitting and the controller answers
// what waits DRAINING.
TEST_F(AdmissionServiceTest, DrainAnswersQueuedAdmitsDraining) {
  ServiceSetup setup;
  setup.capacity_requests = 1;
  Start(setup);
  AdmitOrFail("first");
  PendingAdmit queued(stub_.get(), Request("queued"));
  ASSERT_TRUE(WaitForQueued(1));
  service_->StartDraining();
  controller().Drain();
  const grpc::Status status = queued.Wait();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(queued.response().decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(queued.response().reason(), "DRAINING");
  EXPECT_EQ(controller().Snapshot().queued_requests, 0u);
}

// ---------------------------------------------------------------------------
// Authentication: the caller's identity, not the request, decides its
// tenant and whether CRITICAL is honoured.

constexpr char kCriticalToken[] = "tok-critical-5b1e0c";
constexpr char kPlainToken[] = "tok-plain-d93a27";

class AuthenticatedAdmissionServiceTest : public AdmissionServiceTest {
 protected:
  void StartWithTokens() {
    Authenticator::Options options;
    options.tokens.push_back({Sha256(kCriticalToken), "tenant-x", true});
    options.tokens.push_back({Sha256(kPlainToken), "tenant-x", false});
    absl::StatusOr<std::unique_ptr<Authenticator>> authenticator =
        Authenticator::Create(std::move(options));
    ASSERT_TRUE(authenticator.ok()) << authenticator.status();
    authenticator_ = *std::move(authenticator);
    ServiceSetup setup;
    setup.capacity_requests = 1;
    // Room for two requests to wait (the default is the capacity).
    setup.controller.max_queue_bytes = CapacityFor(4);
    setup.service.authenticator = authenticator_.get();
    Start(setup);
  }

  // A holder takes the pool; then a STANDARD request with `standard_token`
  // and a CRITICAL one with `critical_token` queue, in that order. On
  // release, expects the CRITICAL one admitted first, or the STANDARD one,
  // and the other still queued.
  void QueueStandardThenCritical(const std::string& standard_token,
                                 const std::string& critical_token,
                                 bool expect_critical_first) {
    const std::string holder = AdmitOrFail("holder", standard_token);
    PendingAdmit standard(stub_.get(), Request("standard"), standard_token);
    ASSERT_TRUE(WaitForQueued(1));
    PendingAdmit critical(stub_.get(),
                          Request("critical", 1, kvgate::v1::CRITICAL),
                          critical_token);
    ASSERT_TRUE(WaitForQueued(2));
    uint64_t released = 0;
    ASSERT_TRUE(Release(holder, &released, standard_token).ok());
    PendingAdmit& first = expect_critical_first ? critical : standard;
    PendingAdmit& second = expect_critical_first ? standard : critical;
    const grpc::Status status = first.Wait();
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(first.response().decision(), kvgate::v1::ADMITTED);
    EXPECT_FALSE(second.Answered());
    EXPECT_EQ(controller().Snapshot().queued_requests, 1u);
  }

  // The service keeps a pointer to it. Destroyed before the service, which
  // is harmless: TearDown has shut the server down by then.
  std::unique_ptr<Authenticator> authenticator_;
};

TEST_F(AuthenticatedAdmissionServiceTest, EveryCallNeedsAValidToken) {
  StartWithTokens();
  AdmitResponse response;
  EXPECT_EQ(Admit(Request("no-token"), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(
      Admit(Request("bad-token"), &response, "tok-not-configured").error_code(),
      grpc::StatusCode::UNAUTHENTICATED);
  const std::string lease = AdmitOrFail("good-token", kPlainToken);
  Budget budget;
  EXPECT_EQ(GetBudget(kModel, &budget).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  uint64_t released = 0;
  EXPECT_EQ(Release(lease, &released).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(Release(lease, &released, kPlainToken).ok());
  EXPECT_EQ(released, shape_.total_bytes);
}

TEST_F(AuthenticatedAdmissionServiceTest,
       CriticalFromAnIdentityWithoutTheRightWaitsItsTurn) {
  StartWithTokens();
  QueueStandardThenCritical(kCriticalToken, kPlainToken,
                            /*expect_critical_first=*/false);
}

TEST_F(AuthenticatedAdmissionServiceTest,
       CriticalFromAnAllowedIdentityGoesFirst) {
  StartWithTokens();
  QueueStandardThenCritical(kPlainToken, kCriticalToken,
                            /*expect_critical_first=*/true);
}

}  // namespace
}  // namespace kvgate
