// Integration tests: the real kvgated binary, started per test with a small
// configuration, and a real gRPC client over a unix socket or TCP loopback:
// what only a process shows (both transports, flags and the config file,
// health and reflection, start-up errors, SIGTERM, the CLI, the NVML
// library). The Admission API's request/response semantics (leases, the
// queue, deadlines, cancels, malformed requests) are tested in-process by
// tests/plugin/server/admission_service_test.cc.
//
// Every pool serves the gpt2 preset with gpu_memory_utilization 1.0 on a
// static device sized so that the pool's capacity is an exact multiple of
// one request shape (see KvgatedTest in kvgated_process.h, which asks the
// server's own Estimate for its bytes, so nothing here hard-codes estimator
// figures).
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
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
#include "tests/integration/kvgated_process.h"

namespace kvgate {
namespace {

using kvgate::v1::Admission;
using kvgate::v1::AdmitResponse;
using kvgate::v1::Budget;
using ::testing::Contains;
using ::testing::HasSubstr;

// Non-empty lines of `text`.
std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

// ---------------------------------------------------------------------------
// Both transports: a unix socket and TCP.

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
    StartServer(PoolConfig(shape().CapacityFor(2)), address);
  }
};

INSTANTIATE_TEST_SUITE_P(Transports, KvgatedTransportTest,
                         ::testing::Values(Transport::kUnix, Transport::kTcp),
                         [](const ::testing::TestParamInfo<Transport>& info) {
                           return info.param == Transport::kUnix ? "Unix"
                                                                 : "Tcp";
                         });

// One lease's round trip on the transport. Its semantics in detail (release
// twice, unknown leases, renew, retries) are in admission_service_test.cc.
TEST_P(KvgatedTransportTest, AdmitReservesAndReleaseFreesTheEstimatedBytes) {
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
  EXPECT_EQ(response.reserved_bytes(), estimate.total_bytes());
  Budget budget = GetBudget();
  EXPECT_EQ(budget.capacity_bytes(), shape().CapacityFor(2));
  EXPECT_EQ(budget.weights_bytes(), estimate.weights_bytes());
  EXPECT_EQ(budget.reserved_bytes(), estimate.total_bytes());
  EXPECT_EQ(budget.active_leases(), 1u);

  uint64_t released = 0;
  ASSERT_TRUE(Release(response.lease_id(), &released).ok());
  EXPECT_EQ(released, estimate.total_bytes());
  budget = GetBudget();
  EXPECT_EQ(budget.reserved_bytes(), 0u);
  EXPECT_EQ(budget.active_leases(), 0u);
  EXPECT_EQ(budget.free_bytes(), budget.capacity_bytes());
}

// ---------------------------------------------------------------------------
// The config file's queue settings reach the controller (the queue's
// behaviour itself is tested in-process).

TEST_F(KvgatedTest, QueueSettingsFromTheConfigFileApply) {
  StartServer(PoolConfig(
      shape().CapacityFor(1),
      "queue { max_requests: 1 max_queue_wait { nanos: 200000000 } }"));
  AdmitOrFail("first");
  PendingAdmit second(stub_.get(), Request("second"), /*token=*/"",
                      kRpcTimeout);
  ASSERT_TRUE(WaitForQueued(1));
  // max_requests: 1.
  AdmitResponse response;
  const grpc::Status status = Admit(Request("third"), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(response.reason(), "QUEUE_FULL");
  // max_queue_wait: 200 ms.
  const grpc::Status waited = second.Wait();
  ASSERT_TRUE(waited.ok()) << waited.error_message();
  EXPECT_EQ(second.response().decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(second.response().reason(), "QUEUE_TIMEOUT");
  EXPECT_GE(FromProto(second.response().queued_for()), absl::Milliseconds(200));
  EXPECT_LT(FromProto(second.response().queued_for()), absl::Seconds(3));
}

// ---------------------------------------------------------------------------
// The kvgate CLI's client subcommands against the real server.

// Runs the kvgate CLI with `args` and `env` (on top of the test's own
// environment); its exit code and output.
KvgatedProcess::Exit RunCli(
    std::vector<std::string> args,
    std::vector<std::pair<std::string, std::string>> env = {}) {
  KvgatedProcess::Options options;
  options.binary = KVGATE_CLI_PATH;
  options.args = std::move(args);
  options.env = std::move(env);
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(options);
  EXPECT_TRUE(exit.ok()) << exit.status();
  return exit.ok() ? *std::move(exit) : KvgatedProcess::Exit{};
}

TEST_F(KvgatedTest, CliAdmitBudgetAndReleaseGoThroughTheServer) {
  StartServer(PoolConfig(shape().CapacityFor(2)));
  const std::string address = "--address=" + server_->address();
  const std::string model = absl::StrCat("--model=", kModel);

  KvgatedProcess::Exit admit =
      RunCli({"admit", address, model, "--json", "--request-id=cli-1",
              absl::StrCat("--prompt-tokens=", kPromptTokens),
              absl::StrCat("--max-new-tokens=", kMaxNewTokens)});
  ASSERT_EQ(admit.code, 0) << admit.stderr_text;
  const nlohmann::json admitted = nlohmann::json::parse(admit.stdout_text);
  EXPECT_EQ(admitted["decision"], "ADMITTED");
  EXPECT_EQ(admitted["reserved_bytes"].get<uint64_t>(), shape().total);
  const std::string lease = admitted["lease_id"].get<std::string>();
  ASSERT_FALSE(lease.empty());

  // The CLI's budget is the server's.
  KvgatedProcess::Exit budget = RunCli({"budget", address, model, "--json"});
  ASSERT_EQ(budget.code, 0) << budget.stderr_text;
  const nlohmann::json shown = nlohmann::json::parse(budget.stdout_text);
  EXPECT_EQ(shown["reserved_bytes"].get<uint64_t>(), shape().total);
  EXPECT_EQ(shown["active_leases"].get<uint32_t>(), 1u);
  EXPECT_EQ(GetBudget().reserved_bytes(), shape().total);

  KvgatedProcess::Exit release =
      RunCli({"release", address, "--json", "--lease-id=" + lease});
  ASSERT_EQ(release.code, 0) << release.stderr_text;
  EXPECT_EQ(nlohmann::json::parse(release.stdout_text)["released_bytes"]
                .get<uint64_t>(),
            shape().total);
  // Idempotent through the CLI too.
  release = RunCli({"release", address, "--json", "--lease-id=" + lease});
  ASSERT_EQ(release.code, 0) << release.stderr_text;
  EXPECT_EQ(nlohmann::json::parse(release.stdout_text)["released_bytes"]
                .get<uint64_t>(),
            0u);
  EXPECT_EQ(GetBudget().reserved_bytes(), 0u);
}

// kvgate demo --json prints one JSON object: the pool and each step.
TEST_F(KvgatedTest, DemoJsonPrintsOneJsonObject) {
  StartServer("models { name: \"llama-3-8b\" preset: \"llama-3-8b\" }");
  const KvgatedProcess::Exit exit =
      RunCli({"demo", "--address=" + server_->address(), "--json"});
  ASSERT_EQ(exit.code, 0) << exit.stderr_text;
  const nlohmann::json j =
      nlohmann::json::parse(exit.stdout_text, nullptr, false);
  ASSERT_TRUE(j.is_object()) << exit.stdout_text;
  EXPECT_EQ(j.value("model", ""), "llama-3-8b");
  EXPECT_GT(j.value("capacity_bytes", uint64_t{0}), 0u);
  ASSERT_TRUE(j.contains("steps") && j["steps"].is_array());
  std::set<std::string> decisions;
  for (const nlohmann::json& step : j["steps"]) {
    EXPECT_TRUE(step.contains("step")) << step.dump();
    if (step.contains("decision")) decisions.insert(step["decision"]);
  }
  EXPECT_TRUE(decisions.count("ADMITTED")) << exit.stdout_text;
  EXPECT_TRUE(decisions.count("REJECTED")) << exit.stdout_text;
  EXPECT_EQ(j["steps"].back().value("step", ""), "after releasing all");
  EXPECT_EQ(j["steps"].back().value("active_leases", 1), 0);
}

TEST_F(KvgatedTest, CliErrorsAreOneLineAndNonZero) {
  StartServer(PoolConfig(shape().CapacityFor(2)));
  struct Case {
    std::vector<std::string> args;
    const char* says;
  };
  const std::vector<Case> cases = {
      {{"admit", "--address=" + server_->address(), "--model=no-such-model"},
       "no-such-model"},
      {{"budget", "--address=" + server_->address(), "--model=no-such-model"},
       "served models: 'gpt2'"},
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

TEST_F(KvgatedTest, CliReadsTheAddressFromKvgateAddress) {
  StartServer(PoolConfig(shape().CapacityFor(2)));
  const KvgatedProcess::Exit budget =
      RunCli({"budget", absl::StrCat("--model=", kModel), "--json"},
             {{"KVGATE_ADDRESS", server_->address()}});
  ASSERT_EQ(budget.code, 0) << budget.stderr_text;
  EXPECT_EQ(nlohmann::json::parse(budget.stdout_text)["capacity_bytes"]
                .get<uint64_t>(),
            GetBudget().capacity_bytes());
}

TEST_F(KvgatedTest, CliAddressFlagWinsOverKvgateAddress) {
  StartServer(PoolConfig(shape().CapacityFor(2)));
  const std::string nobody = UniqueUnixAddress("nobody-listens");
  const KvgatedProcess::Exit flag_wins =
      RunCli({"budget", "--address=" + server_->address(),
              absl::StrCat("--model=", kModel), "--json"},
             {{"KVGATE_ADDRESS", nobody}});
  EXPECT_EQ(flag_wins.code, 0) << flag_wins.stderr_text;
  // And the variable is really read: alone, it names where nobody listens.
  const KvgatedProcess::Exit env_only =
      RunCli({"budget", absl::StrCat("--model=", kModel), "--timeout=2"},
             {{"KVGATE_ADDRESS", nobody}});
  EXPECT_EQ(env_only.code, 1);
  EXPECT_THAT(env_only.stderr_text, HasSubstr("unavailable"));
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
      PoolConfig(shape().CapacityFor(2),
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
// The memory source, as the log and /metrics tell it.

// A static source's devices are simulated: start-up says so with a warning
// line naming the source; an NVML source is named too, without a warning.
TEST_F(KvgatedTest, StartUpLogWarnsThatTheStaticSourceIsSimulated) {
  StartServer(PoolConfig(shape().CapacityFor(1)));
  const std::string log = server_->Stderr();
  bool warned = false;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    if (!record.is_object() || record.value("memory_source", "") != "static") {
      continue;
    }
    if (record.value("level", "") == "warning") {
      warned = true;
      EXPECT_THAT(record.value("msg", ""), HasSubstr("SIMULATED"));
    }
  }
  EXPECT_TRUE(warned) << log;
}

// With the static source, kvgate_device_free_bytes is what GetBudget's
// device_free_bytes says: the simulated device less the weights and the
// reserved bytes, not an always-empty device.
TEST_F(KvgatedTest, StaticDeviceMetricsAgreeWithTheBudget) {
  absl::StatusOr<int> port = FreeTcpPort();
  ASSERT_TRUE(port.ok()) << port.status();
  StartServer(
      ServerOptions(PoolConfig(shape().CapacityFor(2)), /*address=*/"",
                    {absl::StrCat("--metrics_address=127.0.0.1:", *port)}));
  AdmitOrFail("holds-memory");
  const uint64_t expected = shape().CapacityFor(2) - shape().ReservedFor(1);
  const std::string series = "kvgate_device_free_bytes{gpu_uuid=\"sim-0\"}";
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  uint64_t budget_free = 0;
  double metric_free = -1;
  do {
    absl::SleepFor(absl::Milliseconds(50));
    budget_free = GetBudget().device_free_bytes();
    metric_free = MetricValue(ScrapeMetrics(*port), series);
  } while ((budget_free != expected || metric_free != expected) &&
           absl::Now() < give_up);
  EXPECT_EQ(budget_free, expected);
  EXPECT_EQ(metric_free, static_cast<double>(expected));
  EXPECT_EQ(MetricValue(ScrapeMetrics(*port),
                        "kvgate_device_used_bytes{gpu_uuid=\"sim-0\"}"),
            static_cast<double>(shape().weights + shape().ReservedFor(1)));
}

// ---------------------------------------------------------------------------
// Health and reflection.

// The router's signal (docs/design.md, "Cluster scale"): the used ratio and
// the queue move with each call, without waiting for a poll, and agree with
// GetBudget.
TEST_F(KvgatedTest, BudgetUsedRatioAndQueueFollowAdmitAndRelease) {
  absl::StatusOr<int> port = FreeTcpPort();
  ASSERT_TRUE(port.ok()) << port.status();
  // Room for 2 requests. Each figure is scraped right after the call that
  // moved it, within the ticker's 500 ms between polls of the source.
  StartServer(
      ServerOptions(PoolConfig(shape().CapacityFor(2)), "",
                    {absl::StrCat("--metrics_address=127.0.0.1:", *port)}));
  const std::string ratio =
      absl::StrCat("kvgate_budget_used_ratio{model=\"", kModel, "\"}");
  const std::string queued =
      absl::StrCat("kvgate_queued_requests{model=\"", kModel, "\"}");
  auto expect_ratio_of_budget = [&]() {
    const kvgate::v1::Budget b = GetBudget();
    EXPECT_DOUBLE_EQ(MetricValue(ScrapeMetrics(*port), ratio),
                     static_cast<double>(b.reserved_bytes()) /
                         static_cast<double>(b.capacity_bytes()));
  };
  EXPECT_EQ(MetricValue(ScrapeMetrics(*port), ratio), 0);
  const std::string first = AdmitOrFail("first");
  expect_ratio_of_budget();
  const std::string second = AdmitOrFail("second");
  EXPECT_EQ(MetricValue(ScrapeMetrics(*port), ratio), 1);
  PendingAdmit waiting(stub_.get(), Request("waiting"), /*token=*/"",
                       absl::Seconds(10));
  ASSERT_TRUE(WaitForQueued(1));
  EXPECT_EQ(MetricValue(ScrapeMetrics(*port), queued), 1);
  uint64_t released = 0;
  ASSERT_TRUE(Release(first, &released).ok());
  ASSERT_TRUE(waiting.Wait().ok());  // it took the freed room
  EXPECT_EQ(MetricValue(ScrapeMetrics(*port), queued), 0);
  ASSERT_TRUE(Release(second, &released).ok());
  expect_ratio_of_budget();
  ASSERT_TRUE(Release(waiting.response().lease_id(), &released).ok());
  EXPECT_EQ(MetricValue(ScrapeMetrics(*port), ratio), 0);
}

TEST_F(KvgatedTest, HealthServiceReportsServing) {
  StartServer(PoolConfig(shape().CapacityFor(1)));
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
      PoolConfig(shape().CapacityFor(1)), UniqueUnixAddress("health"));
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
  StartServer(PoolConfig(shape().CapacityFor(1)), health_address);
  KvgatedProcess::Options second = ServerOptions(
      PoolConfig(shape().CapacityFor(1)), UniqueUnixAddress("health"));
  second.args.push_back("--health_address=" + health_address);
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(second);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_NE(exit->code, 0);
  EXPECT_THAT(exit->stderr_text, HasSubstr("health address"));
}

TEST_F(KvgatedTest, ReflectionListsTheAdmissionService) {
  StartServer(PoolConfig(shape().CapacityFor(1)));
  absl::StatusOr<std::vector<std::string>> services =
      ReflectionListServices(server_->NewChannel());
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services, Contains("kvgate.v1.Admission"));
  EXPECT_THAT(*services, Contains("grpc.health.v1.Health"));
}

// ---------------------------------------------------------------------------
// Start-up and shutdown.

TEST_F(KvgatedTest, SecondKvgatedOnTheSameUnixSocketFails) {
  StartServer(PoolConfig(shape().CapacityFor(1)));
  KvgatedProcess::Options second =
      ServerOptions(PoolConfig(shape().CapacityFor(1)), server_->address());
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
  StartServer(PoolConfig(shape().CapacityFor(1)), address);
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(
      ServerOptions(PoolConfig(shape().CapacityFor(1)), address));
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

  StartServer(PoolConfig(shape().CapacityFor(1)), address);
  AdmitOrFail("after-stale");
}

TEST_F(KvgatedTest, SigtermAnswersQueuedAdmitDrainingAndExitsZero) {
  StartServer(PoolConfig(shape().CapacityFor(1)));
  AdmitOrFail("first");
  PendingAdmit queued(stub_.get(), Request("queued"), /*token=*/"",
                      kRpcTimeout);
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
      ServerOptions(PoolConfig(shape().CapacityFor(1)), address);
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
      {"unknown engine",
       "models { name: \"m\" preset: \"gpt2\" engine { kind: \"tgi\" } }",
       "models[0].engine.kind: unknown engine 'tgi'"},
      {"engine url not http",
       "models { name: \"m\" preset: \"gpt2\" engine { kind: \"vllm\" "
       "metrics_url: \"unix:/run/vllm.sock\" } }",
       "models[0].engine.metrics_url"},
      {"dynamic engine with a url",
       "models { name: \"m\" preset: \"gpt2\" engine { "
       "metrics_url: \"http://127.0.0.1:8000/metrics\" } }",
       "models[0].engine.metrics_url: is only read for a vllm or sglang"},
      {"zero cooldown",
       "models { name: \"m\" preset: \"gpt2\" engine { kind: \"vllm\" "
       "metrics_url: \"http://127.0.0.1:8000/metrics\" "
       "preemption_cooldown { seconds: 0 } } }",
       "models[0].engine.preemption_cooldown: must be more than 0"},
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

// --validate refuses what start-up would: a listen address that is not
// host:port, a state_dir whose parent does not exist, certificate files that
// cannot be read; one JSON error line naming the field each.
TEST_F(KvgatedTest, VersionPrintsTheReleaseAndExitsZero) {
  KvgatedProcess::Options options = ServerOptions(PoolConfig(1 << 20));
  options.args.push_back("--version");
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(options);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->code, 0) << exit->stderr_text;
  EXPECT_THAT(exit->stdout_text, ::testing::StartsWith("kvgated 0."));
}

TEST_F(KvgatedTest, ValidateRejectsWhatStartUpWould) {
  struct Case {
    const char* what;
    std::string config;
    std::string address;
    const char* field;
  };
  const std::string pool = "models { name: \"m\" preset: \"gpt2\" }\n";
  const std::vector<Case> cases = {
      {"metrics port alone", pool + "metrics_address: \"9464\"",
       UniqueUnixAddress("validate"),
       "metrics_address: '9464' is not host:port"},
      {"health address on a unix socket", pool, UniqueUnixAddress("validate"),
       "health_address"},
      {"grpc address without a port", pool, "localhost",
       "grpc_address: 'localhost' is not host:port"},
      {"state_dir whose parent is missing",
       pool + "lease_journal { state_dir: \"/nonexistent-kvgate/state\" }",
       UniqueUnixAddress("validate"), "lease_journal.state_dir"},
      {"unreadable certificate",
       pool + "tls { cert_file: \"/nonexistent-kvgate/cert.pem\" "
              "key_file: \"/nonexistent-kvgate/key.pem\" }",
       "127.0.0.1:0", "tls.cert_file: cannot read"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    KvgatedProcess::Options options = ServerOptions(c.config, c.address);
    options.args.push_back("--validate");
    if (std::string(c.what) == "health address on a unix socket") {
      options.args.push_back("--health_address=unix:/tmp/kvgate-health.sock");
    }
    absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(options);
    ASSERT_TRUE(exit.ok()) << exit.status();
    EXPECT_NE(exit->code, 0);
    const std::vector<std::string> lines = Lines(exit->stderr_text);
    ASSERT_EQ(lines.size(), 1u) << exit->stderr_text;
    const nlohmann::json line =
        nlohmann::json::parse(lines[0], nullptr, /*allow_exceptions=*/false);
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
  uint64_t released = 0;
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
