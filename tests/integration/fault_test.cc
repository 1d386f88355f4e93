// Fault tests: the real kvgated binary under the faults a sidecar meets in
// production, each test one fault.
//
//   crash      kill -9 under load, restart from the lease journal; a torn or
//              corrupt journal tail; SIGTERM keeps leases for the restart
//   leases     a client that never releases (TTL reclaims, metric counts),
//              renew after expiry
//   NVML       init failure at start-up; a GPU lost or erroring mid-run,
//              fail closed and fail open; recovery
//   overload   10,000 concurrent Admits with random cancels and deadlines
//              over the unix socket, six rounds (soak)
//
// Pools serve the gpt2 preset at gpu_memory_utilization 1.0 on a device
// sized so that the capacity is an exact multiple of one request shape,
// whose bytes come from the server's own Estimate (KvgatedTest, in
// kvgated_process.h).
// Faults already covered elsewhere are not repeated: a missing NVML library,
// free memory under the margin and SIGTERM answering the queue DRAINING
// (kvgated_test.cc); release twice and one cancel while queued
// (tests/plugin/server/admission_service_test.cc, in-process).
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
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
using ::testing::HasSubstr;

constexpr uint64_t kGiB = uint64_t{1} << 30;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The JSON log records of `stderr_text` whose "msg" is `msg`.
std::vector<nlohmann::json> LogRecords(const std::string& stderr_text,
                                       const std::string& msg) {
  std::vector<nlohmann::json> out;
  for (absl::string_view line : absl::StrSplit(stderr_text, '\n')) {
    nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    if (record.is_object() && record.value("msg", "") == msg) {
      out.push_back(std::move(record));
    }
  }
  return out;
}

// Kilobytes of resident memory of `pid` (VmRSS); 0 when unreadable.
uint64_t RssKiB(pid_t pid) {
  const std::string status = ReadFile(absl::StrCat("/proc/", pid, "/status"));
  for (absl::string_view line : absl::StrSplit(status, '\n')) {
    if (!absl::ConsumePrefix(&line, "VmRSS:")) continue;
    uint64_t kib = 0;
    line = absl::StripAsciiWhitespace(
        absl::StripSuffix(absl::StripAsciiWhitespace(line), "kB"));
    if (absl::SimpleAtoi(line, &kib)) return kib;
  }
  return 0;
}

// Each test gets a state directory of its own (for the lease journal).
class FaultTest : public KvgatedTest {
 protected:
  void SetUp() override {
    KvgatedTest::SetUp();
    if (HasFatalFailure()) return;
    const ::testing::TestInfo* test =
        ::testing::UnitTest::GetInstance()->current_test_info();
    state_dir_ = absl::StrCat(::testing::TempDir(), "kvgate_fault_",
                              test->name(), "_", getpid());
    std::system(absl::StrCat("rm -rf '", state_dir_, "'").c_str());
  }

  void TearDown() override {
    KvgatedTest::TearDown();
    if (!state_dir_.empty()) {
      std::system(absl::StrCat("rm -rf '", state_dir_, "'").c_str());
    }
  }

  std::string journal_path() const { return state_dir_ + "/leases.journal"; }

  // After a restart from the journal: between `kept` and `kept` + 1 leases
  // restored (the load lease of the moment may or may not have been
  // released), logged once, and only what is left of `capacity` admitted.
  void ExpectRestoredLeasesFillTheCapacity(int kept, int capacity);
  // The restored leases `kept` are the old ones: released, renewed and
  // returned to a retry by their old ids.
  void ExpectOldLeaseIdsStillWork(const std::vector<std::string>& kept);

  std::string state_dir_;
};

// Admits then releases, one at a time, on a channel of its own, from a
// thread of its own until stopped or a call fails (each has a 1 s deadline).
class AdmitReleaseLoad {
 public:
  explicit AdmitReleaseLoad(const std::shared_ptr<grpc::Channel>& channel)
      : stub_(Admission::NewStub(channel)), thread_([this] { Loop(); }) {}
  ~AdmitReleaseLoad() { Stop(); }

  // Waits until the load has made `cycles` admit/release cycles or for at
  // most `limit` (it stops at its first failed call); the cycles made.
  int WaitForCycles(int cycles, absl::Duration limit) {
    const absl::Time give_up = absl::Now() + limit;
    while (cycles_.load() < cycles && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    return cycles_.load();
  }

  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Loop() {
    for (int i = 0; !stop_.load(); ++i) {
      AdmitResponse admitted;
      grpc::ClientContext admit_context;
      SetDeadline(admit_context, absl::Seconds(1));
      if (!stub_
               ->Admit(&admit_context, Request(absl::StrCat("load-", i)),
                       &admitted)
               .ok()) {
        return;
      }
      kvgate::v1::ReleaseRequest release;
      release.set_lease_id(admitted.lease_id());
      kvgate::v1::ReleaseResponse released;
      grpc::ClientContext release_context;
      SetDeadline(release_context, absl::Seconds(1));
      if (!stub_->Release(&release_context, release, &released).ok()) return;
      cycles_.fetch_add(1);
    }
  }

  std::unique_ptr<Admission::Stub> stub_;
  std::atomic<bool> stop_{false};
  std::atomic<int> cycles_{0};
  std::thread thread_;  // last: starts once the members above exist
};

void FaultTest::ExpectRestoredLeasesFillTheCapacity(int kept, int capacity) {
  const Budget budget = GetBudget();
  EXPECT_GE(budget.active_leases(), static_cast<uint32_t>(kept));
  EXPECT_LE(budget.active_leases(), static_cast<uint32_t>(kept + 1));
  EXPECT_EQ(budget.reserved_bytes(),
            shape().ReservedFor(budget.active_leases()));
  const std::vector<nlohmann::json> replayed =
      LogRecords(server_->Stderr(), "lease journal replayed");
  ASSERT_EQ(replayed.size(), 1u) << server_->Stderr();
  EXPECT_EQ(replayed[0].value("restored_leases", ""),
            absl::StrCat(budget.active_leases()));

  // What is left of the capacity is all that is admitted.
  const int room = capacity - static_cast<int>(budget.active_leases());
  for (int i = 0; i < room; ++i) AdmitOrFail(absl::StrCat("after-", i));
  const AdmitResponse over = AdmitWaiting("over", absl::Milliseconds(100));
  EXPECT_EQ(over.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(over.reason(), "QUEUE_TIMEOUT");
}

void FaultTest::ExpectOldLeaseIdsStillWork(
    const std::vector<std::string>& kept) {
  uint64_t released = 0;
  ASSERT_TRUE(Release(kept[0], &released).ok());
  EXPECT_EQ(released, shape().total);  // its own kv + activation bytes
  ASSERT_TRUE(Release(kept[0], &released).ok());
  EXPECT_EQ(released, 0u);
  ASSERT_TRUE(Renew(kept[1]).ok());
  // A retry of a restored request gets its old lease back.
  AdmitResponse retry;
  ASSERT_TRUE(Admit(Request("kept-2"), &retry).ok());
  EXPECT_EQ(retry.lease_id(), kept[2]);
}

// ---------------------------------------------------------------------------
// Crash recovery.

// kill -9 while a client admits and releases in a loop; the restarted
// kvgated holds every lease the engine may still hold (the kept ones, plus
// the load lease of the moment if its release had not been recorded),
// admits nothing past them, and takes their old ids in Release.
TEST_F(FaultTest, KillNineUnderLoadRestoresLiveLeasesFromTheJournal) {
  constexpr int kCapacity = 8;
  constexpr int kKept = 5;
  const KvgatedProcess::Options options = ServerOptions(
      PoolConfig(shape().CapacityFor(kCapacity), "lease_ttl { seconds: 60 }"),
      /*address=*/"", {"--state_dir=" + state_dir_});
  StartServer(options);
  std::vector<std::string> kept;
  for (int i = 0; i < kKept; ++i) {
    kept.push_back(AdmitOrFail(absl::StrCat("kept-", i)));
  }

  // Kill once the load has run a while; bounded, since the load thread
  // stops at its first failed call.
  AdmitReleaseLoad load(server_->NewChannel());
  const int cycles_before_kill = load.WaitForCycles(50, absl::Seconds(10));
  Kill9();
  load.Stop();  // each of its calls has a 1 s deadline
  ASSERT_GE(cycles_before_kill, 50)
      << "the load made only " << cycles_before_kill
      << " admit/release cycles in 10 s before the kill";

  StartServer(options);
  ExpectRestoredLeasesFillTheCapacity(kKept, kCapacity);
  if (HasFatalFailure()) return;
  // The engine releases a lease of the killed kvgated by its old id.
  ExpectOldLeaseIdsStillWork(kept);
}

// A torn last record (the write cut by the crash) and garbage after the
// last record are both dropped, logged with their size, and cut away.
TEST_F(FaultTest, TornOrCorruptJournalTailIsDroppedAndLogged) {
  const KvgatedProcess::Options options = ServerOptions(
      PoolConfig(shape().CapacityFor(4),
                 absl::StrCat("lease_journal { state_dir: \"", state_dir_,
                              "\" fsync: \"always\" }")));
  StartServer(options);
  AdmitOrFail("a");
  AdmitOrFail("b");
  AdmitOrFail("c");
  Kill9();

  // Tear c's GRANT: drop its last 5 bytes (newline included).
  std::string journal = ReadFile(journal_path());
  ASSERT_GT(journal.size(), 5u);
  ASSERT_EQ(
      truncate(journal_path().c_str(), static_cast<off_t>(journal.size() - 5)),
      0);
  const size_t torn_line = journal.rfind('\n', journal.size() - 2) + 1;
  StartServer(options);
  EXPECT_EQ(GetBudget().active_leases(), 2u);
  std::vector<nlohmann::json> dropped = LogRecords(
      server_->Stderr(), "lease journal: dropped a torn or corrupt tail");
  ASSERT_EQ(dropped.size(), 1u) << server_->Stderr();
  EXPECT_EQ(dropped[0].value("dropped_bytes", ""),
            absl::StrCat(journal.size() - 5 - torn_line));
  EXPECT_EQ(dropped[0].value("offset", ""), absl::StrCat(torn_line));
  Kill9();

  // Garbage after the last good record.
  {
    std::ofstream out(journal_path(), std::ios::binary | std::ios::app);
    out << std::string("\x00\x01garbage not a record\n\xff\xfe", 26);
  }
  StartServer(options);
  EXPECT_EQ(GetBudget().active_leases(), 2u);
  EXPECT_EQ(GetBudget().reserved_bytes(), shape().ReservedFor(2));
  dropped = LogRecords(server_->Stderr(),
                       "lease journal: dropped a torn or corrupt tail");
  ASSERT_EQ(dropped.size(), 1u) << server_->Stderr();
  EXPECT_EQ(dropped[0].value("dropped_bytes", ""), "26");
  EXPECT_THAT(dropped[0].value("reason", ""), HasSubstr("CRC"));
}

// SIGTERM drains (exit 0) but does not forget: the engine still holds its
// leases, so the next kvgated restores them.
TEST_F(FaultTest, SigtermExitsZeroAndTheRestartKeepsTheLeases) {
  const KvgatedProcess::Options options = ServerOptions(
      PoolConfig(shape().CapacityFor(4), "lease_ttl { seconds: 60 }"),
      /*address=*/"", {"--state_dir=" + state_dir_});
  StartServer(options);
  const std::string a = AdmitOrFail("a");
  AdmitOrFail("b");
  absl::StatusOr<KvgatedProcess::Exit> exit =
      server_->SignalAndWait(SIGTERM, absl::Seconds(10));
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->code, 0) << exit->stderr_text;
  stub_.reset();
  server_.reset();

  StartServer(options);
  EXPECT_EQ(GetBudget().active_leases(), 2u);
  uint64_t released = 0;
  ASSERT_TRUE(Release(a, &released).ok());
  EXPECT_EQ(released, shape().total);
}

TEST_F(FaultTest, SecondKvgatedOnTheSameStateDirFailsClearly) {
  StartServer(ServerOptions(PoolConfig(shape().CapacityFor(1)),
                            /*address=*/"", {"--state_dir=" + state_dir_}));
  KvgatedProcess::Options second =
      ServerOptions(PoolConfig(shape().CapacityFor(1)), /*address=*/"",
                    {"--state_dir=" + state_dir_});
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(second);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_NE(exit->code, 0);
  EXPECT_THAT(exit->stderr_text, HasSubstr("locked by another process"));
}

// ---------------------------------------------------------------------------
// Clients that never release.

TEST_F(FaultTest, NeverReleasedLeaseIsReclaimedByTtlAndCounted) {
  absl::StatusOr<int> port = FreeTcpPort();
  ASSERT_TRUE(port.ok()) << port.status();
  StartServer(ServerOptions(
      PoolConfig(shape().CapacityFor(2), "lease_ttl { seconds: 1 }"),
      /*address=*/"", {absl::StrCat("--metrics_address=127.0.0.1:", *port)}));
  const std::string series =
      absl::StrCat("kvgate_lease_expirations_total{model=\"", kModel, "\"}");
  EXPECT_EQ(MetricValue(ScrapeMetrics(*port), series), 0);
  const std::string lease = AdmitOrFail("forgotten");
  EXPECT_EQ(GetBudget().reserved_bytes(), shape().total);

  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  while (GetBudget().active_leases() > 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  const Budget budget = GetBudget();
  EXPECT_EQ(budget.active_leases(), 0u);
  EXPECT_EQ(budget.reserved_bytes(), 0u);
  EXPECT_EQ(MetricValue(ScrapeMetrics(*port), series), 1);

  // Renewing it now is too late; releasing it is harmless.
  EXPECT_EQ(Renew(lease).error_code(), grpc::StatusCode::NOT_FOUND);
  uint64_t released = 1;
  ASSERT_TRUE(Release(lease, &released).ok());
  EXPECT_EQ(released, 0u);
}

// ---------------------------------------------------------------------------
// NVML faults, against the fake libnvidia-ml
// (tests/plugin/memory/fake_nvml.cc).

constexpr char kGpu[] = "GPU-11111111-2222-3333-4444-555555555555";

// Replaces the fake driver's script in one rename.
void WriteNvmlScript(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
  }
  ASSERT_EQ(std::rename(tmp.c_str(), path.c_str()), 0) << path;
}

std::string HealthyGpu(uint64_t free = 8 * kGiB) {
  return absl::StrCat("device ", kGpu, " ", 16 * kGiB, " ", free, "\n");
}

class NvmlFaultTest : public FaultTest {
 protected:
  void StartNvml(bool fail_open) {
    script_ = WriteTempFile("_nvml.txt", "");
    temp_files_.push_back(script_);
    WriteNvmlScript(script_, HealthyGpu());
    absl::StatusOr<int> port = FreeTcpPort();
    ASSERT_TRUE(port.ok()) << port.status();
    metrics_port_ = *port;
    KvgatedProcess::Options options = ServerOptions(
        absl::StrCat(
            "models { name: \"", kModel, "\" preset: \"gpt2\" }\n",
            "memory_source { nvml { library_path: \"", KVGATE_FAKE_NVML_PATH,
            "\" ", "poll_interval { nanos: 20000000 } free_margin_bytes: ",
            kGiB, " fail_open: ", fail_open ? "true" : "false", " } }\n"),
        /*address=*/"",
        {absl::StrCat("--metrics_address=127.0.0.1:", metrics_port_)});
    options.env = {{"KVGATE_FAKE_NVML_SCRIPT", script_}};
    StartServer(options);
  }

  // Admits until the answer is REJECTED (then returns it) or `timeout`;
  // releases what it admits.
  AdmitResponse AdmitUntilRejected(absl::Duration timeout = kRpcTimeout) {
    AdmitResponse response;
    const absl::Time give_up = absl::Now() + timeout;
    for (int i = 0; absl::Now() < give_up; ++i) {
      response.Clear();
      EXPECT_TRUE(Admit(Request(absl::StrCat("probe-", i)), &response).ok());
      if (response.decision() != kvgate::v1::ADMITTED) break;
      uint64_t released = 0;
      EXPECT_TRUE(Release(response.lease_id(), &released).ok());
      absl::SleepFor(absl::Milliseconds(5));
    }
    return response;
  }

  // Admits until ADMITTED (released at once) or `timeout`; whether it was.
  bool AdmitsAgain(absl::Duration timeout = kRpcTimeout) {
    const absl::Time give_up = absl::Now() + timeout;
    for (int i = 0; absl::Now() < give_up; ++i) {
      AdmitResponse response;
      EXPECT_TRUE(Admit(Request(absl::StrCat("again-", i)), &response).ok());
      if (response.decision() == kvgate::v1::ADMITTED) {
        uint64_t released = 0;
        EXPECT_TRUE(Release(response.lease_id(), &released).ok());
        return true;
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

  double SourceErrors() {
    return MetricValue(ScrapeMetrics(metrics_port_),
                       "kvgate_memory_source_errors_total{source=\"nvml\"}");
  }

  std::string script_;
  int metrics_port_ = 0;
};

TEST_F(NvmlFaultTest, InitFailureFailsAtStartUpWithOneErrorLine) {
  const std::string script = WriteTempFile("_nvml.txt", "init_error 9\n");
  temp_files_.push_back(script);
  KvgatedProcess::Options options = ServerOptions(
      absl::StrCat("models { name: \"", kModel, "\" preset: \"gpt2\" }\n",
                   "memory_source { nvml { library_path: \"",
                   KVGATE_FAKE_NVML_PATH, "\" } }\n"));
  options.env = {{"KVGATE_FAKE_NVML_SCRIPT", script}};
  absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(options);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_NE(exit->code, 0);
  // Every line is a JSON record; exactly one is an error, and it says why.
  std::vector<nlohmann::json> errors;
  for (absl::string_view text :
       absl::StrSplit(exit->stderr_text, '\n', absl::SkipEmpty())) {
    nlohmann::json line = nlohmann::json::parse(text, nullptr, false);
    ASSERT_TRUE(line.is_object()) << text;
    if (line.value("level", "") == "error") errors.push_back(std::move(line));
  }
  ASSERT_EQ(errors.size(), 1u) << exit->stderr_text;
  EXPECT_THAT(errors[0].value("error", ""), HasSubstr("nvmlInit"));
  EXPECT_THAT(errors[0].value("error", ""), HasSubstr("NVML error 9"));
}

// A GPU that is lost mid-run (NVML_ERROR_GPU_IS_LOST, 15): admission stops
// with MEMORY_PRESSURE (fail closed), one error log line, the error counter
// rises; when the driver answers again admission resumes.
TEST_F(NvmlFaultTest, LostGpuMidRunFailsClosedThenRecovers) {
  StartNvml(/*fail_open=*/false);
  ASSERT_TRUE(AdmitsAgain());
  EXPECT_EQ(SourceErrors(), 0);

  WriteNvmlScript(script_,
                  HealthyGpu() + absl::StrCat("read_error ", kGpu, " 15\n"));
  const AdmitResponse rejected = AdmitUntilRejected();
  EXPECT_EQ(rejected.decision(), kvgate::v1::REJECTED);
  EXPECT_EQ(rejected.reason(), "MEMORY_PRESSURE");
  EXPECT_GT(SourceErrors(), 0);
  const std::vector<nlohmann::json> failed =
      LogRecords(server_->Stderr(), "memory source read failed");
  ASSERT_EQ(failed.size(), 1u) << server_->Stderr();  // once, not per poll
  EXPECT_THAT(failed[0].value("error", ""), HasSubstr("15"));
  EXPECT_THAT(failed[0].value("action", ""), HasSubstr("fail closed"));

  WriteNvmlScript(script_, HealthyGpu());
  EXPECT_TRUE(AdmitsAgain());
  EXPECT_EQ(LogRecords(server_->Stderr(), "memory source recovered").size(),
            1u);
}

TEST_F(NvmlFaultTest, ErroringGpuWithFailOpenKeepsAdmittingOnTheLedger) {
  StartNvml(/*fail_open=*/true);
  WriteNvmlScript(script_,
                  HealthyGpu() + absl::StrCat("read_error ", kGpu, " 999\n"));
  const absl::Time give_up = absl::Now() + kRpcTimeout;
  while (SourceErrors() < 3 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_GE(SourceErrors(), 3);   // polls fail ...
  for (int i = 0; i < 20; ++i) {  // ... and admission goes on
    AdmitResponse response;
    ASSERT_TRUE(Admit(Request(absl::StrCat("open-", i)), &response).ok());
    EXPECT_EQ(response.decision(), kvgate::v1::ADMITTED) << response.reason();
    uint64_t released = 0;
    ASSERT_TRUE(Release(response.lease_id(), &released).ok());
  }
  const std::vector<nlohmann::json> failed =
      LogRecords(server_->Stderr(), "memory source read failed");
  ASSERT_EQ(failed.size(), 1u) << server_->Stderr();
  EXPECT_THAT(failed[0].value("action", ""), HasSubstr("fail_open"));
}

// Free memory falling under the margin mid-run (the engine or another
// process took it): MEMORY_PRESSURE, the pressure gauge at 1; back above the
// margin: admitted again, the gauge at 0.
TEST_F(NvmlFaultTest, FreeMemoryUnderTheMarginPausesAndRecovers) {
  StartNvml(/*fail_open=*/false);
  const std::string gauge =
      absl::StrCat("kvgate_memory_pressure{model=\"", kModel, "\"}");
  ASSERT_TRUE(AdmitsAgain());
  WriteNvmlScript(script_, HealthyGpu(kGiB / 2));
  EXPECT_EQ(AdmitUntilRejected().reason(), "MEMORY_PRESSURE");
  EXPECT_EQ(MetricValue(ScrapeMetrics(metrics_port_), gauge), 1);
  WriteNvmlScript(script_, HealthyGpu());
  EXPECT_TRUE(AdmitsAgain());
  EXPECT_EQ(MetricValue(ScrapeMetrics(metrics_port_), gauge), 0);
  EXPECT_EQ(SourceErrors(), 0);
}

// ---------------------------------------------------------------------------
// Overload.

// One round of kCalls concurrent Admits on kChannels connections (a
// connection carries at most 4096 concurrent streams), on the callback API:
// no thread per call. A tenth of the calls are cancelled at a random moment,
// a tenth carry a short random deadline, the rest a long one. Every admitted
// lease is released as soon as its answer arrives, which lets the queue
// drain. Calls that end CANCELLED or DEADLINE_EXCEEDED are retried with the
// same request_id and the result released, as a client must do when it
// cannot know whether its lost answer was a grant: that returns any lease
// the server granted an instant before the client gave up.
class OverloadRound {
 public:
  static constexpr int kCalls = 10000;
  static constexpr int kChannels = 4;

  struct Figures {
    int calls = 0;
    int answered = 0;        // callbacks run
    int answered_twice = 0;  // callbacks run more than once (must be 0)
    int admitted = 0;
    int rejected = 0;
    int cancelled = 0;
    int deadline_exceeded = 0;
    int other_errors = 0;
    int orphans_recovered = 0;  // leases found by the retry of a lost answer
  };

  // Longest wait for every call of a round to be answered and its lease
  // released.
  static constexpr absl::Duration kRoundTimeout = absl::Seconds(60);

  OverloadRound(const std::vector<std::unique_ptr<Admission::Stub>>& stubs,
                int round)
      : stubs_(stubs), round_(round), calls_(kCalls) {}

  // False when Run gave up on calls still in flight: gRPC may still use
  // this object then, so it must not be destroyed.
  bool finished() const { return finished_; }

  Figures Run() {
    IssueCalls();
    {
      absl::MutexLock lock(&mu_);
      auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return answered_ == kCalls && releasing_ == 0;
      };
      finished_ = mu_.AwaitWithTimeout(absl::Condition(&done), kRoundTimeout);
      if (!finished_) {
        ADD_FAILURE() << "overload round " << round_ << ": " << answered_
                      << " of " << kCalls << " Admits answered and "
                      << releasing_ << " Releases in flight after "
                      << kRoundTimeout << "; cancelling the rest";
        mu_.Unlock();
        for (Call& call : calls_) call.context.TryCancel();
        mu_.Lock();
        // Releases have a 30 s deadline of their own.
        finished_ =
            mu_.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(40));
        if (!finished_) {
          ADD_FAILURE() << "overload round " << round_ << ": " << answered_
                        << " of " << kCalls << " Admits answered and "
                        << releasing_ << " Releases in flight even after "
                        << "cancelling them";
        }
      }
    }
    if (finished_) RecoverLostAnswers();
    Figures f;
    absl::MutexLock lock(&mu_);
    f = figures_;
    f.calls = kCalls;
    for (const Call& call : calls_) {
      if (call.answers > 1) ++f.answered_twice;
    }
    return f;
  }

 private:
  struct Call {
    OverloadRound* owner = nullptr;
    grpc::ClientContext context;
    AdmitRequest request;
    AdmitResponse response;
    int answers = 0;
    grpc::StatusCode code = grpc::StatusCode::OK;
  };
  struct PendingRelease {
    grpc::ClientContext context;
    kvgate::v1::ReleaseRequest request;
    kvgate::v1::ReleaseResponse response;
  };

  // Issues kCalls Admits without waiting: one in ten with a short deadline,
  // one in ten cancelled 1-300 ms after it was issued.
  void IssueCalls() {
    std::mt19937 random(1234 + round_);
    std::uniform_int_distribution<int> kind(0, 9);
    std::uniform_int_distribution<int> millis(1, 300);
    // Cancels fall due while calls are still being issued (issuing 10000
    // calls takes about as long as the server takes to answer them), so they
    // are made between issues, not after the last one, where they would
    // find every call answered already.
    std::vector<std::pair<absl::Time, Call*>> cancels;
    size_t next_cancel = 0;
    auto cancel_due = [&cancels, &next_cancel](absl::Time now) {
      // `cancels` is filled in issue order with delays up to 300 ms, so it
      // is nearly sorted; the due ones are taken in any order.
      for (size_t j = next_cancel; j < cancels.size(); ++j) {
        if (cancels[j].second != nullptr && cancels[j].first <= now) {
          cancels[j].second->context.TryCancel();
          cancels[j].second = nullptr;
        }
      }
      while (next_cancel < cancels.size() &&
             cancels[next_cancel].second == nullptr) {
        ++next_cancel;
      }
    };
    for (int i = 0; i < kCalls; ++i) {
      Call& call = calls_[i];
      call.owner = this;
      call.request = Request(absl::StrCat("r", round_, "-", i));
      const int k = kind(random);
      if (k == 0) {
        SetDeadline(call.context, absl::Milliseconds(millis(random)));
      } else {
        SetDeadline(call.context, absl::Seconds(30));
      }
      if (k == 1) {
        cancels.push_back(
            {absl::Now() + absl::Milliseconds(millis(random)), &call});
      }
      Admission::Stub* stub = stubs_[i % stubs_.size()].get();
      HandOff(&call);  // the callback runs on a gRPC thread
      stub->async()->Admit(&call.context, &call.request, &call.response,
                           [&call](grpc::Status status) {
                             HandOffReceived(&call);
                             call.owner->OnAnswer(call, std::move(status));
                           });
      if (i % 16 == 0) cancel_due(absl::Now());
    }
    std::sort(cancels.begin() + next_cancel, cancels.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    for (size_t j = next_cancel; j < cancels.size(); ++j) {
      const auto& [when, call] = cancels[j];
      if (call == nullptr) continue;
      absl::SleepFor(when - absl::Now());
      call->context.TryCancel();
    }
  }

  void OnAnswer(Call& call, grpc::Status status) {
    std::string lease;
    {
      absl::MutexLock lock(&mu_);
      ++call.answers;
      ++answered_;
      ++figures_.answered;
      call.code = status.error_code();
      if (status.ok() && call.response.decision() == kvgate::v1::ADMITTED) {
        ++figures_.admitted;
        lease = call.response.lease_id();
        ++releasing_;
      } else if (status.ok()) {
        ++figures_.rejected;
      } else if (status.error_code() == grpc::StatusCode::CANCELLED) {
        ++figures_.cancelled;
      } else if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
        ++figures_.deadline_exceeded;
      } else {
        ++figures_.other_errors;
      }
    }
    if (!lease.empty()) ReleaseAsync(call, lease);
  }

  void ReleaseAsync(const Call& call, const std::string& lease) {
    auto* pending = new PendingRelease;
    pending->request.set_lease_id(lease);
    SetDeadline(pending->context, absl::Seconds(30));
    const size_t index = static_cast<size_t>(&call - calls_.data());
    HandOff(pending);
    stubs_[index % stubs_.size()]->async()->Release(
        &pending->context, &pending->request, &pending->response,
        [this, pending](grpc::Status status) {
          HandOffReceived(pending);
          absl::MutexLock lock(&mu_);
          if (!status.ok()) ++figures_.other_errors;
          --releasing_;
          delete pending;
        });
  }

  // Retries each call that ended CANCELLED or DEADLINE_EXCEEDED with its
  // request_id and releases what that returns.
  void RecoverLostAnswers() {
    for (Call& call : calls_) {
      if (call.code != grpc::StatusCode::CANCELLED &&
          call.code != grpc::StatusCode::DEADLINE_EXCEEDED) {
        continue;
      }
      grpc::ClientContext context;
      SetDeadline(context, kRpcTimeout);
      AdmitResponse response;
      Admission::Stub* stub = stubs_[0].get();
      if (!stub->Admit(&context, call.request, &response).ok()) continue;
      if (response.decision() != kvgate::v1::ADMITTED) continue;
      if (response.message() == "already admitted: same lease") {
        absl::MutexLock lock(&mu_);
        ++figures_.orphans_recovered;
      }
      grpc::ClientContext release_context;
      SetDeadline(release_context, kRpcTimeout);
      kvgate::v1::ReleaseRequest release;
      release.set_lease_id(response.lease_id());
      kvgate::v1::ReleaseResponse released;
      stub->Release(&release_context, release, &released);
    }
  }

  const std::vector<std::unique_ptr<Admission::Stub>>& stubs_;
  const int round_;
  std::vector<Call> calls_;
  bool finished_ = false;
  absl::Mutex mu_;
  int answered_ ABSL_GUARDED_BY(mu_) = 0;
  int releasing_ ABSL_GUARDED_BY(mu_) = 0;
  Figures figures_ ABSL_GUARDED_BY(mu_);
};

// OverloadRound::kChannels stubs, each on a connection of its own (channels
// with equal arguments share one).
std::vector<std::unique_ptr<Admission::Stub>> OverloadStubs(
    const std::string& address) {
  std::vector<std::unique_ptr<Admission::Stub>> stubs;
  for (int i = 0; i < OverloadRound::kChannels; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("kvgate.test.connection", i);
    stubs.push_back(Admission::NewStub(grpc::CreateCustomChannel(
        address, grpc::InsecureChannelCredentials(), args)));
  }
  return stubs;
}

// Prints one round's figures and checks them: every call answered once,
// none failed otherwise, most admitted, and nothing left behind.
void ExpectRoundAnsweredAndLeftNothing(int round,
                                       const OverloadRound::Figures& f,
                                       const Budget& budget, uint64_t rss,
                                       absl::Duration took) {
  std::printf(
      "overload round %d: calls %d, answered %d (twice: %d), admitted %d, "
      "rejected %d, cancelled %d, deadline exceeded %d, other errors %d, "
      "orphaned leases recovered %d; after releases: reserved %llu bytes, "
      "active %u, queued %u; kvgated VmRSS %llu KiB; %.1f s\n",
      round, f.calls, f.answered, f.answered_twice, f.admitted, f.rejected,
      f.cancelled, f.deadline_exceeded, f.other_errors, f.orphans_recovered,
      static_cast<unsigned long long>(budget.reserved_bytes()),
      budget.active_leases(), budget.queued_requests(),
      static_cast<unsigned long long>(rss), absl::ToDoubleSeconds(took));
  EXPECT_EQ(f.answered, f.calls);
  EXPECT_EQ(f.answered_twice, 0);
  EXPECT_EQ(f.other_errors, 0);
  EXPECT_EQ(f.admitted + f.rejected + f.cancelled + f.deadline_exceeded,
            f.calls);
  EXPECT_GT(f.admitted, f.calls / 2);
  EXPECT_EQ(budget.reserved_bytes(), 0u) << "leaked bytes";
  EXPECT_EQ(budget.active_leases(), 0u);
  EXPECT_EQ(budget.queued_requests(), 0u);
}

// Soak. A leak grows RSS in every round; a new high-water mark (a deeper
// queue than before: bigger tables, more gRPC buffers) in one round only.
// So the median growth per round after the warm-up must stay under 1 MiB
// (a leak of 100 bytes a call would be 1 MiB a round), and the whole
// growth under 32 MiB.
void ExpectNoGrowthAfterWarmUp(const std::vector<uint64_t>& rss_kib,
                               int warm_up_rounds) {
  std::vector<int64_t> growth;
  for (size_t round = warm_up_rounds; round < rss_kib.size(); ++round) {
    growth.push_back(static_cast<int64_t>(rss_kib[round]) -
                     static_cast<int64_t>(rss_kib[round - 1]));
  }
  std::sort(growth.begin(), growth.end());
  const int64_t median_kib =
      (growth[(growth.size() - 1) / 2] + growth[growth.size() / 2]) / 2;
  ASSERT_GT(rss_kib.front(), 0u);
  EXPECT_LT(median_kib, 1024) << "kvgated grows every round";
  EXPECT_LT(rss_kib.back(), rss_kib[warm_up_rounds - 1] + 32 * 1024)
      << "kvgated grew from " << rss_kib[warm_up_rounds - 1] << " KiB to "
      << rss_kib.back() << " KiB";
}

TEST_F(FaultTest,
       TenThousandConcurrentAdmitsAreEachAnsweredOnceAndLeakNothing) {
  // Room for 64 leases at once: nearly every call waits in the queue.
  const int queue_requests = 2 * OverloadRound::kCalls;
  KvgatedProcess::Options options = ServerOptions(
      PoolConfig(shape().CapacityFor(64),
                 absl::StrCat("lease_ttl { seconds: 60 }\n",
                              "queue { max_requests: ", queue_requests,
                              " max_bytes: ", queue_requests * shape().total,
                              " max_queue_wait { seconds: 30 } }\n")));
  // One malloc arena: glibc otherwise spreads freed memory over up to eight
  // arenas per core, one per gRPC thread that happened to allocate, and RSS
  // then measures that spread (it grew about 120 MiB over 8 rounds with
  // default arenas, and under 0.3 MiB after round 2 with one), not kvgated.
  options.env = {{"MALLOC_ARENA_MAX", "1"}};
  StartServer(options);
  const std::vector<std::unique_ptr<Admission::Stub>> stubs =
      OverloadStubs(server_->address());

  // Rounds 0 and 1 warm up (gRPC's and the allocator's pools reach their
  // working size); the rounds after them must not grow.
  constexpr int kRounds = 6;
  constexpr int kWarmUpRounds = 2;
  std::vector<uint64_t> rss_kib;
  // A cancel or a short deadline only bites a call still in the queue; in a
  // cold first round the calls trickle in and few wait, so these are
  // checked over all rounds.
  int cancelled = 0;
  int deadline_exceeded = 0;
  for (int round = 0; round < kRounds; ++round) {
    const absl::Time start = absl::Now();
    auto overload = std::make_unique<OverloadRound>(stubs, round);
    const OverloadRound::Figures f = overload->Run();
    if (!overload->finished()) {
      overload.release();  // leaked: gRPC still holds some of its calls
      FAIL() << "overload round " << round << " did not finish";
    }
    const Budget budget = GetBudget();
    rss_kib.push_back(RssKiB(server_->pid()));
    ExpectRoundAnsweredAndLeftNothing(round, f, budget, rss_kib.back(),
                                      absl::Now() - start);
    cancelled += f.cancelled;
    deadline_exceeded += f.deadline_exceeded;
  }
  EXPECT_GT(cancelled, 0);
  EXPECT_GT(deadline_exceeded, 0);
  ExpectNoGrowthAfterWarmUp(rss_kib, kWarmUpRounds);
}

}  // namespace
}  // namespace kvgate
