#include "tests/integration/kvgated_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "plugin/base/handoff.h"

extern char** environ;

namespace kvgate {
namespace {

std::atomic<int> next_unique_id{0};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

int ExitCode(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

// fork + exec with stdout and stderr sent to the given files. The child gets
// SIGKILL when the thread that started it exits (PR_SET_PDEATHSIG): call
// Start from the test's main thread.
absl::StatusOr<pid_t> Spawn(const KvgatedProcess::Options& options,
                            const std::string& stdout_path,
                            const std::string& stderr_path) {
  std::vector<std::string> argv_text = {options.binary};
  argv_text.insert(argv_text.end(), options.args.begin(), options.args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::vector<std::string> env_text;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    bool overridden = false;
    for (const auto& [name, value] : options.env) {
      if (entry.compare(0, name.size() + 1, name + "=") == 0) overridden = true;
    }
    if (!overridden) env_text.push_back(entry);
  }
  for (const auto& [name, value] : options.env) {
    env_text.push_back(name + "=" + value);
  }
  std::vector<char*> envp;
  for (std::string& e : env_text) envp.push_back(e.data());
  envp.push_back(nullptr);

  // Only async-signal-safe calls between fork and exec.
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  if (pid == 0) {
    // Die with the test: a crashed or killed test leaves no kvgated behind.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    const int in = open("/dev/null", O_RDONLY);
    const int out =
        open(stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err =
        open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || err < 0 || dup2(in, STDIN_FILENO) < 0 ||
        dup2(out, STDOUT_FILENO) < 0 || dup2(err, STDERR_FILENO) < 0) {
      _exit(127);
    }
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  return pid;
}

std::string TempPath(const std::string& suffix) {
  return absl::StrCat(::testing::TempDir(), "kvgated_", getpid(), "_",
                      next_unique_id.fetch_add(1), suffix);
}

grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromByteBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

// A length-delimited protobuf field: tag, varint length, bytes. Enough for
// the short strings the health and reflection requests carry.
std::string LengthDelimited(int field, const std::string& bytes) {
  std::string out;
  out.push_back(static_cast<char>((field << 3) | 2));
  size_t n = bytes.size();
  do {
    uint8_t b = n & 0x7f;
    n >>= 7;
    if (n != 0) b |= 0x80;
    out.push_back(static_cast<char>(b));
  } while (n != 0);
  return out + bytes;
}

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      s.error_message());
}

// Longest wait for a call that was given a deadline (or cancelled) to
// complete past that deadline: gRPC then completes it at once, so running
// out of this means a hung client library or server.
constexpr absl::Duration kCompletionGrace = absl::Seconds(10);

}  // namespace

KvgatedProcess::KvgatedProcess(Options options, pid_t pid,
                               std::string stdout_path, std::string stderr_path)
    : options_(std::move(options)),
      pid_(pid),
      stdout_path_(std::move(stdout_path)),
      stderr_path_(std::move(stderr_path)) {}

absl::StatusOr<std::unique_ptr<KvgatedProcess>> KvgatedProcess::Start(
    const Options& options) {
  const std::string out = TempPath(".stdout");
  const std::string err = TempPath(".stderr");
  absl::StatusOr<pid_t> pid = Spawn(options, out, err);
  if (!pid.ok()) return pid.status();
  std::unique_ptr<KvgatedProcess> process(
      new KvgatedProcess(options, *pid, out, err));
  if (options.address.empty()) return process;

  const absl::Time give_up = absl::Now() + options.start_timeout;
  absl::Status last = absl::UnavailableError("no health check answered yet");
  while (absl::Now() < give_up) {
    if (std::optional<int> code = process->WaitForExit(absl::ZeroDuration())) {
      return absl::UnavailableError(
          absl::StrCat("kvgated exited with code ", *code,
                       " before serving; stderr:\n", process->Stderr()));
    }
    // A fresh channel per attempt connects at once, where a reused one
    // would wait out its reconnect backoff.
    absl::StatusOr<int> health =
        HealthCheck(process->NewChannel(), "", absl::Milliseconds(200));
    if (health.ok() && *health == 1) return process;
    last = health.ok()
               ? absl::UnavailableError(absl::StrCat("health status ", *health))
               : health.status();
    absl::SleepFor(absl::Milliseconds(10));
  }
  return absl::UnavailableError(
      absl::StrCat("kvgated did not serve at ", options.address, " within ",
                   absl::FormatDuration(options.start_timeout), " (",
                   last.ToString(), "); stderr:\n", process->Stderr()));
}

absl::StatusOr<KvgatedProcess::Exit> KvgatedProcess::Run(
    const Options& options, absl::Duration timeout) {
  Options no_wait = options;
  no_wait.address.clear();
  absl::StatusOr<std::unique_ptr<KvgatedProcess>> process = Start(no_wait);
  if (!process.ok()) return process.status();
  if (std::optional<int> code = (*process)->WaitForExit(timeout)) {
    return (*process)->Collect(*code);
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "kvgated still running after ", absl::FormatDuration(timeout),
      "; stderr:\n", (*process)->Stderr()));
}

KvgatedProcess::~KvgatedProcess() {
  if (!exited_) {
    kill(pid_, SIGTERM);
    if (!WaitForExit(options_.stop_timeout).has_value()) {
      ADD_FAILURE() << "kvgated (pid " << pid_ << ") ignored SIGTERM for "
                    << options_.stop_timeout << "; killing it. stderr:\n"
                    << Stderr();
      kill(pid_, SIGKILL);
      if (!WaitForExit(options_.stop_timeout).has_value()) {
        ADD_FAILURE() << "kvgated (pid " << pid_ << ") still running "
                      << options_.stop_timeout << " after SIGKILL";
      }
    }
  }
  std::remove(stdout_path_.c_str());
  std::remove(stderr_path_.c_str());
}

std::shared_ptr<grpc::Channel> KvgatedProcess::NewChannel() const {
  grpc::ChannelArguments args;
  // Reconnect quickly: the server may not be listening yet. Not
  // GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC also takes it as the deadline of
  // each connection attempt, and a 20 ms handshake deadline fails under
  // ThreadSanitizer or a loaded machine ("connection attempt timed out
  // before receiving SETTINGS frame"); the default keeps 20 s.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 20);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 100);
  // Keep this channel's connection state apart from other tests' channels.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(options_.address,
                                   grpc::InsecureChannelCredentials(), args);
}

absl::StatusOr<KvgatedProcess::Exit> KvgatedProcess::SignalAndWait(
    int signal, absl::Duration timeout) {
  if (exited_) return absl::FailedPreconditionError("already exited");
  kill(pid_, signal);
  if (std::optional<int> code = WaitForExit(timeout)) return Collect(*code);
  return absl::DeadlineExceededError(absl::StrCat("kvgated still running ",
                                                  absl::FormatDuration(timeout),
                                                  " after signal ", signal));
}

std::string KvgatedProcess::Stderr() const { return ReadFile(stderr_path_); }

std::optional<int> KvgatedProcess::WaitForExit(absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      return ExitCode(status);
    }
    if (r < 0 && errno != EINTR) {
      exited_ = true;
      return -1;
    }
    if (absl::Now() >= give_up) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

KvgatedProcess::Exit KvgatedProcess::Collect(int code) const {
  return Exit{code, ReadFile(stdout_path_), ReadFile(stderr_path_)};
}

absl::StatusOr<int> FreeTcpPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string error = strerror(errno);
    close(fd);
    return absl::InternalError(error);
  }
  close(fd);
  return ntohs(addr.sin_port);
}

std::string UniqueUnixAddress(const std::string& tag) {
  const std::string path =
      absl::StrCat("/tmp/kvgated_test_", getpid(), "_",
                   next_unique_id.fetch_add(1), "_", tag, ".sock");
  unlink(path.c_str());
  return "unix:" + path;
}

std::string WriteTempFile(const std::string& suffix, const std::string& text) {
  const std::string path = TempPath(suffix);
  std::ofstream out(path, std::ios::trunc);
  out << text;
  EXPECT_TRUE(out.good()) << "cannot write " << path;
  return path;
}

absl::StatusOr<int> HealthCheck(const std::shared_ptr<grpc::Channel>& channel,
                                const std::string& service,
                                absl::Duration timeout) {
  // What gRPC writes to, leaked rather than freed under gRPC should the call
  // never complete (a failure reported below). The callback owns only the
  // promise: were it to own the ClientContext, the context could be
  // destroyed inside gRPC, with the callback.
  struct Call {
    grpc::ByteBuffer request;
    grpc::ByteBuffer response;
    grpc::ClientContext context;
    std::shared_ptr<std::promise<grpc::Status>> promise;
  };
  auto call = std::make_unique<Call>();
  call->promise = std::make_shared<std::promise<grpc::Status>>();
  std::future<grpc::Status> done = call->promise->get_future();
  // HealthCheckRequest { string service = 1; }
  call->request =
      ToByteBuffer(service.empty() ? "" : LengthDelimited(1, service));
  SetDeadline(call->context, timeout);
  grpc::GenericStub stub(channel);
  HandOff(call.get());  // the callback runs on a gRPC thread
  // One pointer captured: the callback then fits std::function's inline
  // buffer, written inside gRPC's callback tag, rather than a heap block
  // written here after the HandOff (which TSan reports). The promise is
  // copied before set_value, so it outlives the wake-up of the waiter.
  Call* raw = call.get();
  stub.UnaryCall(
      &raw->context, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
      &raw->request, &raw->response, [raw](grpc::Status s) {
        HandOffReceived(raw);
        std::shared_ptr<std::promise<grpc::Status>> promise = raw->promise;
        promise->set_value(std::move(s));
      });
  if (done.wait_for(absl::ToChronoMilliseconds(timeout + kCompletionGrace)) !=
      std::future_status::ready) {
    call->context.TryCancel();
    call.release();  // leaked: gRPC may still use it
    ADD_FAILURE() << "(test) health check not completed " << kCompletionGrace
                  << " past its deadline";
    return absl::DeadlineExceededError("(test) health check hung");
  }
  const grpc::Status status = done.get();
  if (!status.ok()) return FromGrpc(status);
  // HealthCheckResponse { ServingStatus status = 1; }; absent means 0.
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(FromByteBuffer(call->response))) {
    return absl::DataLossError("unparsable HealthCheckResponse");
  }
  int serving = 0;
  for (int i = 0; i < fields.field_count(); ++i) {
    const google::protobuf::UnknownField& f = fields.field(i);
    if (f.number() == 1 &&
        f.type() == google::protobuf::UnknownField::TYPE_VARINT) {
      serving = static_cast<int>(f.varint());
    }
  }
  return serving;
}

namespace {

// One ServerReflectionInfo call: everything gRPC may still touch, in one
// object that is leaked rather than freed under gRPC should the call hang (a
// failure reported by the caller).
struct ReflectionCall {
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> stream;
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
  grpc::Status status;
  int tags[5] = {};
  // Each step posts one tag, awaited no later than the call's deadline plus
  // a grace (gRPC completes every tag by then).
  std::chrono::system_clock::time_point give_up;
  bool hung = false;

  // Waits for the next event; true if it is `tag`, completed ok. Once the
  // queue has timed out (hung), cancels the call and answers false.
  bool Step(void* tag) {
    void* got = nullptr;
    bool ok = false;
    if (hung) return false;
    if (cq.AsyncNext(&got, &ok, give_up) !=
        grpc::CompletionQueue::NextStatus::GOT_EVENT) {
      hung = true;
      context.TryCancel();
      return false;
    }
    return got == tag && ok;
  }

  // Start, write the list_services request, half-close, read one response
  // and finish. *ok: the writes went through; *read: a response was read.
  void Exchange(bool* ok, bool* read) {
    // ServerReflectionRequest { string list_services = 7; }
    request = ToByteBuffer(LengthDelimited(7, "*"));
    *ok = true;
    stream->StartCall(&tags[0]);
    *ok = *ok && Step(&tags[0]);
    if (*ok) stream->Write(request, &tags[1]);
    *ok = *ok && Step(&tags[1]);
    if (*ok) stream->WritesDone(&tags[2]);
    *ok = *ok && Step(&tags[2]);
    *read = false;
    if (*ok) {
      stream->Read(&response, &tags[3]);
      *read = Step(&tags[3]);
    }
    stream->Finish(&status, &tags[4]);
    Step(&tags[4]);
  }

  // Shuts the queue down and drains it; false if it is not drained by
  // give_up.
  bool Drain() {
    cq.Shutdown();
    void* tag = nullptr;
    bool drained_ok = false;
    grpc::CompletionQueue::NextStatus next;
    while ((next = cq.AsyncNext(&tag, &drained_ok, give_up)) ==
           grpc::CompletionQueue::NextStatus::GOT_EVENT) {
    }
    return next == grpc::CompletionQueue::NextStatus::SHUTDOWN;
  }
};

// The service names in a serialized ServerReflectionResponse:
// ServerReflectionResponse { ListServiceResponse list_services_response = 6 }
// ListServiceResponse { repeated ServiceResponse service = 1; }
// ServiceResponse { string name = 1; }
absl::StatusOr<std::vector<std::string>> ParseServiceNames(
    const std::string& bytes) {
  google::protobuf::UnknownFieldSet top;
  if (!top.ParseFromString(bytes)) {
    return absl::DataLossError("unparsable ServerReflectionResponse");
  }
  std::vector<std::string> names;
  for (int i = 0; i < top.field_count(); ++i) {
    if (top.field(i).number() != 6) continue;
    google::protobuf::UnknownFieldSet list;
    if (!list.ParseFromString(top.field(i).length_delimited())) continue;
    for (int j = 0; j < list.field_count(); ++j) {
      if (list.field(j).number() != 1) continue;
      google::protobuf::UnknownFieldSet service;
      if (!service.ParseFromString(list.field(j).length_delimited())) continue;
      for (int k = 0; k < service.field_count(); ++k) {
        if (service.field(k).number() == 1) {
          names.push_back(service.field(k).length_delimited());
        }
      }
    }
  }
  return names;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ReflectionListServices(
    const std::shared_ptr<grpc::Channel>& channel, absl::Duration timeout) {
  auto c = std::make_unique<ReflectionCall>();
  grpc::GenericStub stub(channel);
  SetDeadline(c->context, timeout);
  c->stream = stub.PrepareCall(
      &c->context,
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &c->cq);
  if (c->stream == nullptr) return absl::InternalError("PrepareCall failed");
  c->give_up = absl::ToChronoTime(absl::Now() + timeout + kCompletionGrace);
  bool ok = false;
  bool read = false;
  c->Exchange(&ok, &read);
  if (c->hung) {
    ADD_FAILURE() << "(test) reflection call not completed " << kCompletionGrace
                  << " past its deadline";
    c.release();  // leaked: gRPC may still use it
    return absl::DeadlineExceededError("(test) reflection call hung");
  }
  if (!c->Drain()) {
    ADD_FAILURE() << "(test) reflection call's queue not drained "
                  << kCompletionGrace << " past its deadline";
    c.release();  // leaked: gRPC may still use it
    return absl::DeadlineExceededError("(test) reflection call hung");
  }
  if (!c->status.ok()) return FromGrpc(c->status);
  if (!ok || !read) return absl::UnknownError("reflection stream failed");
  return ParseServiceNames(FromByteBuffer(c->response));
}

std::string HttpGet(int port, const std::string& path, absl::Duration timeout) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  // Bounds connect, each write and each read.
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(absl::ToInt64Seconds(timeout));
  tv.tv_usec = static_cast<suseconds_t>(
      absl::ToInt64Microseconds(timeout - absl::Seconds(tv.tv_sec)));
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = absl::StrCat(
        "GET ", path,
        " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if (write(fd, request.data(), request.size()) ==
        static_cast<ssize_t>(request.size())) {
      const absl::Time give_up = absl::Now() + timeout;
      char buffer[8192];
      ssize_t n = 0;
      while (absl::Now() < give_up &&
             (n = read(fd, buffer, sizeof(buffer))) > 0) {
        response.append(buffer, static_cast<size_t>(n));
      }
    }
  }
  close(fd);
  return response;
}

std::string ScrapeMetrics(int port) {
  const std::string response = HttpGet(port, "/metrics");
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

double MetricValue(const std::string& body, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (!absl::StartsWith(line, series + " ")) continue;
    double value = 0;
    if (absl::SimpleAtod(line.substr(series.size() + 1), &value)) return value;
  }
  return -1;
}

// ---------------------------------------------------------------------------
// The shared fixture.

kvgate::v1::AdmitRequest Request(const std::string& request_id, int sequences,
                                 kvgate::v1::Priority priority,
                                 const std::string& tenant) {
  return AdmitRequestOf(request_id, kModel, tenant, priority, sequences,
                        kPromptTokens, kMaxNewTokens);
}

absl::StatusOr<ShapeBytes> ProbeShape(const std::string& binary) {
  KvgatedProcess::Options options;
  options.binary = binary;
  options.address = UniqueUnixAddress("probe");
  const std::string config = WriteTempFile(
      "_probe.txtpb",
      absl::StrCat("models { name: \"", kModel, "\" preset: \"gpt2\" }\n"));
  options.args = {"--config=" + config, "--grpc_address=" + options.address};
  absl::StatusOr<std::unique_ptr<KvgatedProcess>> server =
      KvgatedProcess::Start(options);
  std::remove(config.c_str());
  if (!server.ok()) return server.status();
  auto stub = kvgate::v1::Admission::NewStub((*server)->NewChannel());
  kvgate::v1::EstimateRequest request;
  request.set_model(kModel);
  *request.add_sequences() = Request("probe").sequences(0);
  kvgate::v1::EstimateResponse estimate;
  grpc::ClientContext context;
  SetDeadline(context, kRpcTimeout);
  const grpc::Status status = stub->Estimate(&context, request, &estimate);
  if (!status.ok()) return FromGrpc(status);
  if (estimate.kv_cache_bytes() == 0 ||
      estimate.total_bytes() !=
          estimate.kv_cache_bytes() + estimate.activation_bytes()) {
    return absl::InternalError(
        absl::StrCat("odd estimate: ", estimate.ShortDebugString()));
  }
  return ShapeBytes{estimate.kv_cache_bytes(), estimate.activation_bytes(),
                    estimate.total_bytes(), estimate.weights_bytes()};
}

namespace {

// The probe's result, once per test binary.
const absl::StatusOr<ShapeBytes>& ProbedShape() {
  static const absl::StatusOr<ShapeBytes>* const shape =
      new absl::StatusOr<ShapeBytes>(ProbeShape(KVGATED_PATH));
  return *shape;
}

}  // namespace

void KvgatedTest::SetUp() {
  ASSERT_TRUE(ProbedShape().ok())
      << "the Estimate probe failed: " << ProbedShape().status();
}

void KvgatedTest::TearDown() {
  // Close the client's connection first: a server being drained waits for
  // open connections to go away.
  stub_.reset();
  server_.reset();
  for (const std::string& path : temp_files_) std::remove(path.c_str());
}

const ShapeBytes& KvgatedTest::shape() { return *ProbedShape(); }

std::string KvgatedTest::PoolConfig(uint64_t capacity,
                                    const std::string& extra) {
  return absl::StrCat("models { name: \"", kModel, "\" preset: \"gpt2\" ",
                      "gpu_memory_utilization: 1.0 }\n",
                      "memory_source { static_source { memory_bytes: ",
                      shape().weights + capacity, " } }\n", extra);
}

KvgatedProcess::Options KvgatedTest::ServerOptions(
    const std::string& config_text, const std::string& address,
    const std::vector<std::string>& extra_args) {
  KvgatedProcess::Options options;
  options.binary = KVGATED_PATH;
  options.address = address.empty() ? UniqueUnixAddress("kvgated") : address;
  temp_files_.push_back(WriteTempFile(".txtpb", config_text));
  options.args = {"--config=" + temp_files_.back(),
                  "--grpc_address=" + options.address};
  options.args.insert(options.args.end(), extra_args.begin(), extra_args.end());
  return options;
}

void KvgatedTest::StartServer(const KvgatedProcess::Options& options) {
  absl::StatusOr<std::unique_ptr<KvgatedProcess>> server =
      KvgatedProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  stub_ = kvgate::v1::Admission::NewStub(server_->NewChannel());
}

void KvgatedTest::Kill9() {
  absl::StatusOr<KvgatedProcess::Exit> exit =
      server_->SignalAndWait(SIGKILL, absl::Seconds(5));
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->code, 128 + SIGKILL);
  stub_.reset();
  server_.reset();
}

std::string KvgatedTest::AdmitOrFail(const std::string& request_id) {
  return client().AdmitOrFail(Request(request_id));
}

kvgate::v1::AdmitResponse KvgatedTest::AdmitWaiting(
    const std::string& request_id, absl::Duration wait) {
  kvgate::v1::AdmitResponse response;
  const grpc::Status status =
      Admit(WithQueueWait(Request(request_id), wait), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

bool KvgatedTest::WaitForQueued(uint32_t queued, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  uint32_t now = GetBudget().queued_requests();
  while (now != queued) {
    if (absl::Now() >= give_up) {
      ADD_FAILURE() << "queued_requests is " << now << ", not " << queued
                    << ", after " << timeout;
      return false;
    }
    absl::SleepFor(absl::Milliseconds(2));
    now = GetBudget().queued_requests();
  }
  return true;
}

}  // namespace kvgate
