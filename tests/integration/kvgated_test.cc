// Integration tests: the real kvgated binary, started per test with a small
// configuration, and a real gRPC client over a unix socket or TCP loopback.
//
// Every pool serves the gpt2 preset with gpu_memory_utilization 1.0 on a
// static device sized so that the pool's capacity is an exact multiple of
// one request shape (kShape). The bytes of that shape come from the server's
// own Estimate RPC, asked once per test suite, so nothing here hard-codes
// estimator figures.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvgate/v1/admission.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "plugin/base/handoff.h"
#include "tests/integration/kvgated_process.h"

namespace kvgate {
namespace {

using kvgate::v1::Admission;
using kvgate::v1::AdmitRequest;
using kvgate::v1::AdmitResponse;
using kvgate::v1::Budget;
using ::testing::Contains;
using ::testing::HasSubstr;

constexpr char kModel[] = "gpt2";
// One request shape: 128 tokens, 8 blocks of 16.
constexpr uint32_t kPromptTokens = 100;
constexpr uint32_t kMaxNewTokens = 28;

constexpr absl::Duration kRpcTimeout = absl::Seconds(5);

absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

void SetDeadline(grpc::ClientContext& context, absl::Duration timeout) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

AdmitRequest Request(const std::string& request_id, int sequences = 1,
                     kvgate::v1::Priority priority = kvgate::v1::STANDARD) {
  AdmitRequest r;
  r.set_request_id(request_id);
  r.set_model(kModel);
  r.set_tenant("tenant-a");
  r.set_priority(priority);
  for (int i = 0; i < sequences; ++i) {
    kvgate::v1::Sequence* s = r.add_sequences();
    s->set_prompt_tokens(kPromptTokens);
    s->set_max_new_tokens(kMaxNewTokens);
  }
  return r;
}

// Non-empty lines of `text`.
std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

// Bytes of one kShape request, as the server estimates them.
struct ShapeBytes {
  uint64_t kv = 0;
  uint64_t activation = 0;
  uint64_t total = 0;
  uint64_t weights = 0;
  // Capacity into which exactly `n` such requests fit: n KV reservations
  // plus one activation reserve (the largest of the live leases).
  uint64_t CapacityFor(uint64_t n) const { return n * kv + activation; }
};

// Config text for a gpt2 pool whose capacity is exactly `capacity` bytes,
// followed by `extra` (more ServerConfig fields).
std::string PoolConfig(const ShapeBytes& shape, uint64_t capacity,
                       const std::string& extra = "") {
  return absl::StrCat("models { name: \"", kModel, "\" preset: \"gpt2\" ",
                      "gpu_memory_utilization: 1.0 }\n",
                      "memory_source { static_source { memory_bytes: ",
                      shape.weights + capacity, " } }\n",
                      "lease_ttl { seconds: 60 }\n", extra);
}

// An Admit in flight on the callback API. The destructor cancels it and
// waits for its completion, so a failing test never leaves a call behind.
class PendingAdmit {
 public:
  PendingAdmit(Admission::Stub* stub, AdmitRequest request,
               absl::Duration timeout = kRpcTimeout)
      : request_(std::move(request)), done_(promise_.get_future().share()) {
    SetDeadline(context_, timeout);
    HandOff(this);  // the callback runs on a gRPC thread
    stub->async()->Admit(&context_, &request_, &response_,
                         [this](grpc::Status status) {
                           HandOffReceived(this);
                           promise_.set_value(std::move(status));
                         });
  }
  ~PendingAdmit() {
    context_.TryCancel();
    done_.wait();
  }

  // True when the call has been answered within `wait`.
  bool Answered(absl::Duration wait = absl::ZeroDuration()) const {
    return done_.wait_for(absl::ToChronoMilliseconds(wait)) ==
           std::future_status::ready;
  }
  // The call's status; DEADLINE_EXCEEDED "(test)" when not answered in time.
  grpc::Status Wait(absl::Duration wait = kRpcTimeout) const {
    if (!Answered(wait)) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "(test) no answer");
    }
    return done_.get();
  }
  void Cancel() { context_.TryCancel(); }
  const AdmitResponse& response() const { return response_; }

 private:
  grpc::ClientContext context_;
  AdmitRequest request_;
  AdmitResponse response_;
  std::promise<grpc::Status> promise_;
  std::shared_future<grpc::Status> done_;
};

class KvgatedTest : public ::testing::Test {
 protected:
  // Asks a throwaway kvgated for the bytes of one kShape request.
  static void SetUpTestSuite() {
    KvgatedProcess::Options options;
    options.binary = KVGATED_PATH;
    options.address = UniqueUnixAddress("probe");
    const std::string config = WriteTempFile(
        "_probe.txtpb",
        absl::StrCat("models { name: \"", kModel, "\" preset: \"gpt2\" }\n"));
    options.args = {"--config=" + config, "--grpc_address=" + options.address};
    absl::StatusOr<std::unique_ptr<KvgatedProcess>> server =
        KvgatedProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    auto stub = Admission::NewStub((*server)->NewChannel());
    kvgate::v1::EstimateRequest request;
    request.set_model(kModel);
    *request.add_sequences() = Request("probe").sequences(0);
    kvgate::v1::EstimateResponse estimate;
    grpc::ClientContext context;
    SetDeadline(context, kRpcTimeout);
    const grpc::Status status = stub->Estimate(&context, request, &estimate);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_GT(estimate.kv_cache_bytes(), 0u);
    ASSERT_EQ(estimate.total_bytes(),
              estimate.kv_cache_bytes() + estimate.activation_bytes());
    shape_ = ShapeBytes{estimate.kv_cache_bytes(), estimate.activation_bytes(),
                        estimate.total_bytes(), estimate.weights_bytes()};
    std::remove(config.c_str());
  }

  void SetUp() override {
    ASSERT_GT(shape_.total, 0u) << "the Estimate probe failed";
  }

  // Options to run kvgated with `config_text` at `address`.
  KvgatedProcess::Options ServerOptions(const std::string& config_text,
                                        const std::string& address) {
    KvgatedProcess::Options options;
    options.binary = KVGATED_PATH;
    options.address = address;
    temp_files_.push_back(WriteTempFile(".txtpb", config_text));
    options.args = {"--config=" + temp_files_.back(),
                    "--grpc_address=" + address};
    return options;
  }

  // Starts kvgated and connects stub_ to it. Default: a fresh unix socket.
  void StartServer(const std::string& config_text, std::string address = "") {
    if (address.empty()) address = UniqueUnixAddress("kvgated");
    absl::StatusOr<std::unique_ptr<KvgatedProcess>> server =
        KvgatedProcess::Start(ServerOptions(config_text, address));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = Admission::NewStub(server_->NewChannel());
  }

  void TearDown() override {
    stub_.reset();
    server_.reset();
    for (const std::string& path : temp_files_) std::remove(path.c_str());
  }

  grpc::Status Admit(const AdmitRequest& request, AdmitResponse* response,
                     absl::Duration timeout = kRpcTimeout) {
    grpc::ClientContext context;
    SetDeadline(context, timeout);
    return stub_->Admit(&context, request, response);
  }

  // Admits `request_id` and expects ADMITTED; returns the lease.
  std::string AdmitOrFail(const std::string& request_id) {
    AdmitResponse response;
    const grpc::Status status = Admit(Request(request_id), &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.decision(), kvgate::v1::ADMITTED)
        << response.ShortDebugString();
    return response.lease_id();
  }

  grpc::Status Release(const std::string& lease_id,
                       kvgate::v1::ReleaseResponse* response) {
    kvgate::v1::ReleaseRequest request;
    request.set_lease_id(lease_id);
    grpc::ClientContext context;
    SetDeadline(context, kRpcTimeout);
    return stub_->Release(&context, request, response);
  }

  Budget GetBudget() {
    kvgate::v1::GetBudgetRequest request;
    request.set_model(kModel);
    Budget budget;
    grpc::ClientContext context;
    SetDeadline(context, kRpcTimeout);
    const grpc::Status status = stub_->GetBudget(&context, request, &budget);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return budget;
  }

  // Polls GetBudget until `queued` requests wait; false after `timeout`.
  bool WaitForQueued(uint32_t queued, absl::Duration timeout = kRpcTimeout) {
    const absl::Time give_up = absl::Now() + timeout;
    while (absl::Now() < give_up) {
      if (GetBudget().queued_requests() == queued) return true;
      absl::SleepFor(absl::Milliseconds(2));
    }
    return false;
  }

  static ShapeBytes shape_;
  std::unique_ptr<KvgatedProcess> server_;
  std::unique_ptr<Admission::Stub> stub_;
  // Files written for this test, removed in TearDown.
  std::vector<std::string> temp_files_;
};

ShapeBytes KvgatedTest::shape_;

// ---------------------------------------------------------------------------
// Leases, over a unix socket and over TCP.

enum class Transport { kUnix, kTcp };

class KvgatedTransportTest : public KvgatedTest,
                             public ::testing::WithParamInterface<Transport> {
 protected:
  // A pool with room for two requests, on the transport under test.
  void SetUp() override {
    KvgatedTest::SetUp();
    if (HasFatalFailure()) return;
    std::string address;
    if (GetParam() == Transport::kTcp) {
      absl::StatusOr<int> port = FreeTcpPort();
      ASSERT_TRUE(port.ok()) << port.status();
      address = absl::StrCat("127.0.0.1:", *port);
    } else {
      address = UniqueUnixAddress("lease");
    }
    StartServer(PoolConfig(shape_, shape_.CapacityFor(2)), address);
  }
};

INSTANTIATE_TEST_SUITE_P(Transports, KvgatedTransportTest,
                         ::testing::Values(Transport::kUnix, Transport::kTcp),
                         [](const ::testing::TestParamInfo<Transport>& info) {
                           return info.param == Transport::kUnix ? "Unix"
                                                                 : "Tcp";
                         });

TEST_P(KvgatedTransportTest, AdmitReservesTheEstimatedBytesUnderALease) {
  kvgate::v1::EstimateRequest estimate_request;
  estimate_request.set_model(kModel);
  *estimate_request.mutable_sequences() = Request("x").sequences();
  kvgate::v1::EstimateResponse estimate;
  grpc::ClientContext context;
  SetDeadline(context, kRpcTimeout);
  ASSERT_TRUE(stub_->Estimate(&context, estimate_request, &estimate).ok());

  AdmitResponse response;
  const grpc::Status status = Admit(Request("r1"), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::ADMITTED);
  EXPECT_FALSE(response.lease_id().empty());
  EXPECT_EQ(response.reason(), "");
  EXPECT_EQ(response.reserved_bytes(), estimate.total_bytes());
  EXPECT_EQ(FromProto(response.queued_for()), absl::ZeroDuration());

  const Budget budget = GetBudget();
  EXPECT_EQ(budget.capacity_bytes(), shape_.CapacityFor(2));
  EXPECT_EQ(budget.weights_bytes(), estimate.weights_bytes());
  EXPECT_EQ(budget.reserved_bytes(), estimate.total_bytes());
  EXPECT_EQ(budget.free_bytes(),
            budget.capacity_bytes() - budget.reserved_bytes());
  EXPECT_EQ(budget.active_leases(), 1u);
  EXPECT_EQ(budget.queued_requests(), 0u);
}

TEST_P(KvgatedTransportTest, ReleaseFreesTheReservedBytes) {
  const std::string lease = AdmitOrFail("r1");
  kvgate::v1::ReleaseResponse released;
  ASSERT_TRUE(Release(lease, &released).ok());
  EXPECT_EQ(released.released_bytes(), shape_.total);
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.reserved_bytes(), 0u);
  EXPECT_EQ(budget.active_leases(), 0u);
  EXPECT_EQ(budget.free_bytes(), budget.capacity_bytes());
}

TEST_P(KvgatedTransportTest, ReleasingTwiceSucceedsWithZeroBytes) {
  const std::string lease = AdmitOrFail("r1");
  kvgate::v1::ReleaseResponse first;
  ASSERT_TRUE(Release(lease, &first).ok());
  kvgate::v1::ReleaseResponse second;
  const grpc::Status status = Release(lease, &second);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(second.released_bytes(), 0u);
  EXPECT_EQ(GetBudget().reserved_bytes(), 0u);
}

TEST_P(KvgatedTransportTest, ReleasingAnUnknownLeaseIsNotFound) {
  kvgate::v1::ReleaseResponse response;
  EXPECT_EQ(Release("no-such-lease", &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Release("", &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_P(KvgatedTransportTest, RenewReturnsTheLeaseTtl) {
  const std::string lease = AdmitOrFail("r1");
  kvgate::v1::RenewRequest request;
  request.set_lease_id(lease);
  kvgate::v1::RenewResponse response;
  {
    grpc::ClientContext context;
    SetDeadline(context, kRpcTimeout);
    const grpc::Status status = stub_->Renew(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  // lease_ttl is 60 s in PoolConfig.
  EXPECT_LE(FromProto(response.ttl()), absl::Seconds(60));
  EXPECT_GT(FromProto(response.ttl()), absl::Seconds(59));

  kvgate::v1::ReleaseResponse released;
  ASSERT_TRUE(Release(lease, &released).ok());
  grpc::ClientContext context;
  SetDeadline(context, kRpcTimeout);
  EXPECT_EQ(stub_->Renew(&context, request, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_P(KvgatedTransportTest, AdmitRetriedWithTheSameRequestIdKeepsItsLease) {
  const std::string first = AdmitOrFail("retried");
  const std::string second = AdmitOrFail("retried");
  EXPECT_EQ(first, second);
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.reserved_bytes(), shape_.total);
  EXPECT_EQ(budget.active_leases(), 1u);
}

// ---------------------------------------------------------------------------
// The queue.

TEST_F(KvgatedTest, QueuedAdmitIsAdmittedWhenALeaseIsReleased) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(1)));
  const std::string lease = AdmitOrFail("first");
  PendingAdmit second(stub_.get(), Request("second"));
  ASSERT_TRUE(WaitForQueued(1));
  EXPECT_FALSE(second.Answered());

  kvgate::v1::ReleaseResponse released;
  ASSERT_TRUE(Release(lease, &released).ok());
  const grpc::Status status = second.Wait();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(second.response().decision(), kvgate::v1::ADMITTED);
  EXPECT_EQ(second.response().reserved_bytes(), shape_.total);
  EXPECT_GT(FromProto(second.response().queued_for()), absl::ZeroDuration());
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.queued_requests(), 0u);
  EXPECT_EQ(budget.reserved_bytes(), shape_.total);
}

// A gRPC deadline bounds the wait in the queue. The server times the entry
// out at that same instant, so the client sees its own DEADLINE_EXCEEDED
// (the server's QUEUE_TIMEOUT answer cannot arrive before the deadline);
// callers that want a REJECTED answer with retry_after set max_queue_wait
// shorter than their deadline. Either way the entry leaves the queue.
TEST_F(KvgatedTest, GrpcDeadlineEndsTheWaitAndLeavesTheQueue) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(1)));
  AdmitOrFail("first");
  const absl::Time start = absl::Now();
  AdmitResponse response;
  const grpc::Status status =
      Admit(Request("second"), &response, absl::Milliseconds(300));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << response.ShortDebugString();
  EXPECT_GE(took, absl::Milliseconds(250));
  EXPECT_LT(took, absl::Seconds(3));
  EXPECT_TRUE(WaitForQueued(0));
  EXPECT_EQ(GetBudget().reserved_bytes(), shape_.total);
}

TEST_F(KvgatedTest, MaxQueueWaitRejectsWithQueueTimeoutAndRetryAfter) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(1)));
  AdmitOrFail("first");
  AdmitRequest request = Request("second");
  request.mutable_max_queue_wait()->set_nanos(150 * 1000 * 1000);
  AdmitResponse response;
  const grpc::Status status = Admit(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(response.reason(), "QUEUE_TIMEOUT");
  EXPECT_EQ(response.lease_id(), "");
  EXPECT_GT(FromProto(response.retry_after()), absl::ZeroDuration());
  EXPECT_GE(FromProto(response.queued_for()), absl::Milliseconds(150));
  EXPECT_LT(FromProto(response.queued_for()), absl::Seconds(3));
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.queued_requests(), 0u);
  EXPECT_EQ(budget.reserved_bytes(), shape_.total);
}

TEST_F(KvgatedTest, ServerMaxQueueWaitCapsTheWait) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(1),
                         "queue { max_queue_wait { nanos: 200000000 } }"));
  AdmitOrFail("first");
  AdmitResponse response;
  const grpc::Status status = Admit(Request("second"), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(response.reason(), "QUEUE_TIMEOUT");
  EXPECT_GT(FromProto(response.retry_after()), absl::ZeroDuration());
  EXPECT_GE(FromProto(response.queued_for()), absl::Milliseconds(200));
}

TEST_F(KvgatedTest, ClientThatCancelsWhileQueuedLeavesTheQueue) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(1)));
  const std::string lease = AdmitOrFail("first");
  PendingAdmit second(stub_.get(), Request("second"));
  ASSERT_TRUE(WaitForQueued(1));
  second.Cancel();
  EXPECT_EQ(second.Wait().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(WaitForQueued(0));
  // The cancelled request never takes the freed bytes.
  kvgate::v1::ReleaseResponse released;
  ASSERT_TRUE(Release(lease, &released).ok());
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.reserved_bytes(), 0u);
  EXPECT_EQ(budget.active_leases(), 0u);
}

TEST_F(KvgatedTest, BatchLargerThanTheCapacityIsRejectedNeverFitsAtOnce) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(1)));
  AdmitResponse response;
  const grpc::Status status =
      Admit(Request("big", /*sequences=*/2), &response, absl::Seconds(30));
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(response.reason(), "NEVER_FITS");
  EXPECT_EQ(FromProto(response.queued_for()), absl::ZeroDuration());
  EXPECT_EQ(FromProto(response.retry_after()), absl::ZeroDuration());
  EXPECT_EQ(GetBudget().queued_requests(), 0u);
}

TEST_F(KvgatedTest, FullQueueRejectsWithQueueFull) {
  StartServer(
      PoolConfig(shape_, shape_.CapacityFor(1), "queue { max_requests: 1 }"));
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

TEST_F(KvgatedTest, CriticalArrivalShedsSheddableFromAFullQueue) {
  StartServer(
      PoolConfig(shape_, shape_.CapacityFor(1), "queue { max_requests: 1 }"));
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

  kvgate::v1::ReleaseResponse released;
  ASSERT_TRUE(Release(lease, &released).ok());
  const grpc::Status admitted = critical.Wait();
  ASSERT_TRUE(admitted.ok()) << admitted.error_message();
  EXPECT_EQ(critical.response().decision(), kvgate::v1::ADMITTED);
}

// ---------------------------------------------------------------------------
// Malformed requests.

TEST_F(KvgatedTest, MalformedAdmitIsInvalidArgumentNamingTheField) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(2)));
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
      {"too many sequences", Request("too-many", 4097), "sequences"});
  {
    AdmitRequest r = Request("negative-wait");
    r.mutable_max_queue_wait()->set_seconds(-1);
    cases.push_back({"negative max_queue_wait", r, "max_queue_wait"});
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

TEST_F(KvgatedTest, UnknownModelIsNotFound) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(2)));
  AdmitRequest request = Request("r1");
  request.set_model("no-such-model");
  AdmitResponse response;
  const grpc::Status status = Admit(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("no-such-model"));

  kvgate::v1::GetBudgetRequest budget_request;
  budget_request.set_model("no-such-model");
  Budget budget;
  grpc::ClientContext context;
  SetDeadline(context, kRpcTimeout);
  EXPECT_EQ(stub_->GetBudget(&context, budget_request, &budget).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(GetBudget().reserved_bytes(), 0u);
}

// ---------------------------------------------------------------------------
// The kvgate CLI's client subcommands against the real server.

// Runs the kvgate CLI with `args`; its exit code and output.
KvgatedProcess::Exit RunCli(std::vector<std::string> args) {
  KvgatedProcess::Options options;
  options.binary = KVGATE_CLI_PATH;
  options.args = std::move(args);
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(options);
  EXPECT_TRUE(exit.ok()) << exit.status();
  return exit.ok() ? *std::move(exit) : KvgatedProcess::Exit{};
}

TEST_F(KvgatedTest, CliAdmitBudgetAndReleaseGoThroughTheServer) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(2)));
  const std::string address = "--address=" + server_->address();
  const std::string model = absl::StrCat("--model=", kModel);

  KvgatedProcess::Exit admit =
      RunCli({"admit", address, model, "--json", "--request-id=cli-1",
              absl::StrCat("--prompt-tokens=", kPromptTokens),
              absl::StrCat("--max-new-tokens=", kMaxNewTokens)});
  ASSERT_EQ(admit.code, 0) << admit.stderr_text;
  const nlohmann::json admitted = nlohmann::json::parse(admit.stdout_text);
  EXPECT_EQ(admitted["decision"], "ADMITTED");
  EXPECT_EQ(admitted["reserved_bytes"].get<uint64_t>(), shape_.total);
  const std::string lease = admitted["lease_id"].get<std::string>();
  ASSERT_FALSE(lease.empty());

  // The CLI's budget is the server's.
  KvgatedProcess::Exit budget = RunCli({"budget", address, model, "--json"});
  ASSERT_EQ(budget.code, 0) << budget.stderr_text;
  const nlohmann::json shown = nlohmann::json::parse(budget.stdout_text);
  EXPECT_EQ(shown["reserved_bytes"].get<uint64_t>(), shape_.total);
  EXPECT_EQ(shown["active_leases"].get<uint32_t>(), 1u);
  EXPECT_EQ(GetBudget().reserved_bytes(), shape_.total);

  KvgatedProcess::Exit release =
      RunCli({"release", address, "--json", "--lease-id=" + lease});
  ASSERT_EQ(release.code, 0) << release.stderr_text;
  EXPECT_EQ(nlohmann::json::parse(release.stdout_text)["released_bytes"]
                .get<uint64_t>(),
            shape_.total);
  // Idempotent through the CLI too.
  release = RunCli({"release", address, "--json", "--lease-id=" + lease});
  ASSERT_EQ(release.code, 0) << release.stderr_text;
  EXPECT_EQ(nlohmann::json::parse(release.stdout_text)["released_bytes"]
                .get<uint64_t>(),
            0u);
  EXPECT_EQ(GetBudget().reserved_bytes(), 0u);
}

TEST_F(KvgatedTest, CliErrorsAreOneLineAndNonZero) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(2)));
  struct Case {
    std::vector<std::string> args;
    const char* says;
  };
  const std::vector<Case> cases = {
      {{"admit", "--address=" + server_->address(), "--model=no-such-model"},
       "no-such-model"},
      {{"admit", "--address=" + server_->address(),
        absl::StrCat("--model=", kModel), "--prompt-tokens=0"},
       "prompt"},
      {{"release", "--address=" + server_->address()}, "--lease-id"},
      {{"budget", "--address=" + UniqueUnixAddress("nobody-listens"),
        absl::StrCat("--model=", kModel), "--timeout=2"},
       "unavailable"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrJoin(c.args, " "));
    const KvgatedProcess::Exit exit = RunCli(c.args);
    EXPECT_NE(exit.code, 0);
    EXPECT_EQ(exit.stdout_text, "");
    const std::vector<std::string> lines =
        absl::StrSplit(exit.stderr_text, '\n', absl::SkipEmpty());
    ASSERT_EQ(lines.size(), 1u) << exit.stderr_text;
    EXPECT_THAT(lines[0], HasSubstr(c.says));
  }
  EXPECT_EQ(GetBudget().reserved_bytes(), 0u);
}

// ---------------------------------------------------------------------------
// Flags and the config file.

TEST_F(KvgatedTest, FlagsOverrideTheConfigFile) {
  // The file names one socket and one metrics port; the flags name others.
  const std::string file_address = UniqueUnixAddress("from-file");
  const std::string flag_address = UniqueUnixAddress("from-flag");
  absl::StatusOr<int> metrics_port = FreeTcpPort();
  ASSERT_TRUE(metrics_port.ok()) << metrics_port.status();
  KvgatedProcess::Options options = ServerOptions(
      PoolConfig(shape_, shape_.CapacityFor(2),
                 absl::StrCat("grpc_address: \"", file_address, "\"\n")),
      flag_address);
  options.args.push_back(
      absl::StrCat("--metrics_address=127.0.0.1:", *metrics_port));
  absl::StatusOr<std::unique_ptr<KvgatedProcess>> server =
      KvgatedProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<int> health = HealthCheck((*server)->NewChannel(), "");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_NE(access(file_address.substr(5).c_str(), F_OK), 0)
      << "kvgated listened on the file's address too";
  EXPECT_THAT(
      (*server)->Stderr(),
      HasSubstr(absl::StrCat("\"address\":\"127.0.0.1:", *metrics_port, "\"")));
}

// ---------------------------------------------------------------------------
// Health and reflection.

TEST_F(KvgatedTest, HealthServiceReportsServing) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(1)));
  std::shared_ptr<grpc::Channel> channel = server_->NewChannel();
  absl::StatusOr<int> server = HealthCheck(channel, "");
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(*server, 1);  // SERVING
  absl::StatusOr<int> admission = HealthCheck(channel, "kvgate.v1.Admission");
  ASSERT_TRUE(admission.ok()) << admission.status();
  EXPECT_EQ(*admission, 1);
  EXPECT_EQ(HealthCheck(channel, "no.such.Service").status().code(),
            absl::StatusCode::kNotFound);
}

// --health_address: a TCP listener for Kubernetes gRPC probes that answers
// health with the main server's statuses and serves nothing else.
TEST_F(KvgatedTest, HealthAddressServesHealthButNotAdmission) {
  absl::StatusOr<int> port = FreeTcpPort();
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string health_address = absl::StrCat("127.0.0.1:", *port);
  KvgatedProcess::Options options = ServerOptions(
      PoolConfig(shape_, shape_.CapacityFor(1)), UniqueUnixAddress("health"));
  options.args.push_back("--health_address=" + health_address);
  absl::StatusOr<std::unique_ptr<KvgatedProcess>> started =
      KvgatedProcess::Start(options);
  ASSERT_TRUE(started.ok()) << started.status();
  server_ = *std::move(started);

  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(health_address, grpc::InsecureChannelCredentials());
  absl::StatusOr<int> server = HealthCheck(channel, "");
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(*server, 1);  // SERVING
  absl::StatusOr<int> admission = HealthCheck(channel, "kvgate.v1.Admission");
  ASSERT_TRUE(admission.ok()) << admission.status();
  EXPECT_EQ(*admission, 1);

  auto health_stub = Admission::NewStub(channel);
  kvgate::v1::GetBudgetRequest request;
  request.set_model(kModel);
  Budget budget;
  grpc::ClientContext context;
  SetDeadline(context, kRpcTimeout);
  EXPECT_EQ(health_stub->GetBudget(&context, request, &budget).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  // Admission still answers on the main address.
  stub_ = Admission::NewStub(server_->NewChannel());
  AdmitOrFail("main-address");
}

TEST_F(KvgatedTest, HealthAddressInUseFailsAtStartUp) {
  absl::StatusOr<int> port = FreeTcpPort();
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string health_address = absl::StrCat("127.0.0.1:", *port);
  StartServer(PoolConfig(shape_, shape_.CapacityFor(1)), health_address);
  KvgatedProcess::Options second = ServerOptions(
      PoolConfig(shape_, shape_.CapacityFor(1)), UniqueUnixAddress("health"));
  second.args.push_back("--health_address=" + health_address);
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(second);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_NE(exit->code, 0);
  EXPECT_THAT(exit->stderr_text, HasSubstr("health address"));
}

TEST_F(KvgatedTest, ReflectionListsTheAdmissionService) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(1)));
  absl::StatusOr<std::vector<std::string>> services =
      ReflectionListServices(server_->NewChannel());
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services, Contains("kvgate.v1.Admission"));
  EXPECT_THAT(*services, Contains("grpc.health.v1.Health"));
}

// ---------------------------------------------------------------------------
// Start-up and shutdown.

TEST_F(KvgatedTest, SecondKvgatedOnTheSameUnixSocketFails) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(1)));
  KvgatedProcess::Options second = ServerOptions(
      PoolConfig(shape_, shape_.CapacityFor(1)), server_->address());
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(second);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_NE(exit->code, 0);
  EXPECT_THAT(exit->stderr_text, HasSubstr("in use"));
  // The first one still serves on its socket.
  AdmitOrFail("still-serving");
}

TEST_F(KvgatedTest, SecondKvgatedOnTheSameTcpPortFails) {
  absl::StatusOr<int> port = FreeTcpPort();
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string address = absl::StrCat("127.0.0.1:", *port);
  StartServer(PoolConfig(shape_, shape_.CapacityFor(1)), address);
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(
      ServerOptions(PoolConfig(shape_, shape_.CapacityFor(1)), address));
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_NE(exit->code, 0);
  EXPECT_THAT(exit->stderr_text, HasSubstr("in use"));
  AdmitOrFail("still-serving");
}

TEST_F(KvgatedTest, StaleUnixSocketFileIsReplaced) {
  // A socket file that nothing listens on, as a crashed kvgated leaves it.
  const std::string address = UniqueUnixAddress("stale");
  const std::string path = address.substr(5);
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
  ASSERT_EQ(access(path.c_str(), F_OK), 0);

  StartServer(PoolConfig(shape_, shape_.CapacityFor(1)), address);
  AdmitOrFail("after-stale");
}

TEST_F(KvgatedTest, SigtermAnswersQueuedAdmitDrainingAndExitsZero) {
  StartServer(PoolConfig(shape_, shape_.CapacityFor(1)));
  AdmitOrFail("first");
  PendingAdmit queued(stub_.get(), Request("queued"));
  ASSERT_TRUE(WaitForQueued(1));

  absl::StatusOr<KvgatedProcess::Exit> exit =
      server_->SignalAndWait(SIGTERM, absl::Seconds(10));
  ASSERT_TRUE(exit.ok()) << exit.status() << "\n" << server_->Stderr();
  EXPECT_EQ(exit->code, 0) << exit->stderr_text;
  const grpc::Status status = queued.Wait();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(queued.response().decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(queued.response().reason(), "DRAINING");
  // The socket file is gone.
  EXPECT_NE(access(server_->address().substr(5).c_str(), F_OK), 0);
}

TEST_F(KvgatedTest, ValidateAcceptsAGoodConfigWithoutListening) {
  const std::string address = UniqueUnixAddress("validate");
  KvgatedProcess::Options options =
      ServerOptions(PoolConfig(shape_, shape_.CapacityFor(1)), address);
  options.args.push_back("--validate");
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(options);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->code, 0) << exit->stderr_text;
  EXPECT_THAT(exit->stdout_text, HasSubstr("configuration is valid"));
  EXPECT_NE(access(address.substr(5).c_str(), F_OK), 0);
}

TEST_F(KvgatedTest, ValidateRejectsABadConfigWithOneJsonErrorLine) {
  struct Case {
    const char* what;
    std::string config;
    const char* field;
  };
  const std::vector<Case> cases = {
      {"block_size too big",
       "models { name: \"m\" preset: \"gpt2\" block_size: 4096 }",
       "models[0].block_size"},
      {"unknown field", "models { name: \"m\" preset: \"gpt2\" }\nbogus: 1",
       "line 2"},
      {"weights do not fit",
       "models { name: \"m\" preset: \"gpt2\" }\n"
       "memory_source { static_source { memory_bytes: 1000 } }",
       "'m' does not fit"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    KvgatedProcess::Options options =
        ServerOptions(c.config, UniqueUnixAddress("validate"));
    options.args.push_back("--validate");
    absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(options);
    ASSERT_TRUE(exit.ok()) << exit.status();
    EXPECT_NE(exit->code, 0);
    const std::vector<std::string> lines = Lines(exit->stderr_text);
    ASSERT_EQ(lines.size(), 1u) << exit->stderr_text;
    const nlohmann::json line =
        nlohmann::json::parse(lines[0], nullptr,
                              /*allow_exceptions=*/false);
    ASSERT_TRUE(line.is_object()) << lines[0];
    EXPECT_EQ(line.value("level", ""), "error");
    EXPECT_THAT(line.value("error", ""), HasSubstr(c.field)) << lines[0];
  }
}

// ---------------------------------------------------------------------------
// The NVML memory source, against the fake libnvidia-ml.

constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kMiB = uint64_t{1} << 20;

// Replaces the fake driver's script in one rename, so that the server never
// reads a half-written file.
void WriteNvmlScript(const std::string& path, uint64_t total, uint64_t free) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << "device GPU-11111111-2222-3333-4444-555555555555 " << total << " "
        << free << "\n";
    ASSERT_TRUE(out.good()) << "cannot write " << tmp;
  }
  ASSERT_EQ(std::rename(tmp.c_str(), path.c_str()), 0) << path;
}

std::string NvmlConfig(const std::string& library) {
  return absl::StrCat(
      "models { name: \"", kModel, "\" preset: \"gpt2\" }\n",
      "memory_source { nvml { library_path: \"", library, "\" ",
      "poll_interval { nanos: 50000000 } free_margin_bytes: ", kGiB, " } }\n");
}

TEST_F(KvgatedTest, NvmlFreeMemoryUnderTheMarginPausesAdmission) {
  const std::string script = WriteTempFile("_nvml.txt", "");
  WriteNvmlScript(script, 16 * kGiB, 8 * kGiB);
  KvgatedProcess::Options options = ServerOptions(
      NvmlConfig(KVGATE_FAKE_NVML_PATH), UniqueUnixAddress("nvml"));
  options.env = {{"KVGATE_FAKE_NVML_SCRIPT", script}};
  absl::StatusOr<std::unique_ptr<KvgatedProcess>> started =
      KvgatedProcess::Start(options);
  ASSERT_TRUE(started.ok()) << started.status();
  server_ = *std::move(started);
  stub_ = Admission::NewStub(server_->NewChannel());

  const std::string lease = AdmitOrFail("plenty");
  EXPECT_EQ(GetBudget().device_free_bytes(), 8 * kGiB);
  kvgate::v1::ReleaseResponse released;
  ASSERT_TRUE(Release(lease, &released).ok());

  WriteNvmlScript(script, 16 * kGiB, 100 * kMiB);
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  AdmitResponse response;
  for (int i = 0; absl::Now() < give_up; ++i) {
    response.Clear();
    ASSERT_TRUE(Admit(Request(absl::StrCat("low-", i)), &response).ok());
    if (response.decision() == kvgate::v1::REJECTED) break;
    ASSERT_TRUE(Release(response.lease_id(), &released).ok());
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(response.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(response.reason(), "MEMORY_PRESSURE");
  EXPECT_GT(FromProto(response.retry_after()), absl::ZeroDuration());
  EXPECT_EQ(GetBudget().device_free_bytes(), 100 * kMiB);
  std::remove(script.c_str());
}

// --validate checks an nvml config without the driver, as CI and image
// builds must.
TEST_F(KvgatedTest, ValidateAcceptsAnNvmlConfigWithoutOpeningTheLibrary) {
  KvgatedProcess::Options options =
      ServerOptions(NvmlConfig("/nonexistent/kvgate/libnvidia-ml.so.1"),
                    UniqueUnixAddress("validate"));
  options.args.push_back("--validate");
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(options);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->code, 0) << exit->stderr_text;
  EXPECT_THAT(exit->stdout_text, HasSubstr("configuration is valid"));
  EXPECT_THAT(exit->stdout_text, HasSubstr("nvml (not opened"));
}

TEST_F(KvgatedTest, ValidateStillRejectsABadNvmlConfig) {
  KvgatedProcess::Options options = ServerOptions(
      absl::StrCat(NvmlConfig("/nonexistent/kvgate/libnvidia-ml.so.1"),
                   "models { name: \"m\" preset: \"no-such-model\" }\n"),
      UniqueUnixAddress("validate"));
  options.args.push_back("--validate");
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(options);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_NE(exit->code, 0);
  EXPECT_THAT(exit->stderr_text, HasSubstr("no-such-model"));
}

TEST_F(KvgatedTest, MissingNvmlLibraryFailsAtStartUpWithOneErrorLine) {
  const std::string library = "/nonexistent/kvgate/libnvidia-ml.so.1";
  KvgatedProcess::Options options =
      ServerOptions(NvmlConfig(library), UniqueUnixAddress("nvml"));
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(options);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_NE(exit->code, 0);
  const std::vector<std::string> lines = Lines(exit->stderr_text);
  ASSERT_EQ(lines.size(), 1u) << exit->stderr_text;
  const nlohmann::json line =
      nlohmann::json::parse(lines[0], nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(line.is_object()) << lines[0];
  EXPECT_EQ(line.value("level", ""), "error");
  EXPECT_THAT(line.value("error", ""), HasSubstr(library));
}

}  // namespace
}  // namespace kvgate
