// Security of the real kvgated binary: the unix socket's mode, TLS and
// mutual TLS on TCP (certificates made by the `openssl` command at run time),
// caller authentication by bearer token and client certificate, the CRITICAL
// rule, message and batch size limits, and a /metrics scrape that must not
// reveal request ids, tenants, tokens or lease ids.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvgate/v1/admission.grpc.pb.h"
#include "plugin/base/handoff.h"
#include "tests/integration/kvgated_process.h"

namespace kvgate {
namespace {

using kvgate::v1::Admission;
using kvgate::v1::AdmitRequest;
using kvgate::v1::AdmitResponse;
using ::testing::HasSubstr;

constexpr char kModel[] = "gpt2";
constexpr absl::Duration kRpcTimeout = absl::Seconds(5);

// Two tokens of one tenant: only the first may use CRITICAL.
constexpr char kCriticalToken[] = "tok-critical-5b1e0c";
constexpr char kPlainToken[] = "tok-plain-d93a27";
constexpr char kTenant[] = "tenant-from-identity";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs a shell command; its output goes to `log`. False on failure.
bool Shell(const std::string& command, const std::string& log) {
  const std::string line = absl::StrCat(command, " >>", log, " 2>&1");
  return std::system(line.c_str()) == 0;
}

// Certificates made once for the suite: a CA, a server certificate for
// localhost / 127.0.0.1, two clients it signed, and a client of another CA.
struct Pki {
  std::string dir;
  std::string Path(const std::string& name) const {
    return absl::StrCat(dir, "/", name);
  }
  std::string Pem(const std::string& name) const {
    return ReadFile(Path(name));
  }
};

absl::StatusOr<Pki> MakePki() {
  std::string templ = absl::StrCat(::testing::TempDir(), "kvgate_pki_XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) {
    return absl::InternalError("mkdtemp failed");
  }
  Pki pki{templ};
  const std::string log = pki.Path("openssl.log");
  const std::string d = pki.dir;
  // P-256 keys: fast to make, accepted by gRPC's TLS stack.
  const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1";
  auto ca = [&](const std::string& name) {
    return Shell(absl::StrCat("openssl req -x509 ", key, " -nodes -days 2 ",
                              "-subj /CN=", name, " -keyout ", d, "/", name,
                              ".key -out ", d, "/", name, ".pem ",
                              "-addext basicConstraints=critical,CA:TRUE ",
                              "-addext keyUsage=critical,keyCertSign,cRLSign"),
                 log);
  };
  // A leaf certificate `name` signed by `ca_name`, with `ext` extensions.
  auto leaf = [&](const std::string& name, const std::string& ca_name,
                  const std::string& ext) {
    std::ofstream(absl::StrCat(d, "/", name, ".ext")) << ext;
    return Shell(absl::StrCat("openssl req ", key, " -nodes -subj /CN=", name,
                              " -keyout ", d, "/", name, ".key -out ", d, "/",
                              name, ".csr"),
                 log) &&
           Shell(
               absl::StrCat("openssl x509 -req -days 2 -in ", d, "/", name,
                            ".csr -CA ", d, "/", ca_name, ".pem -CAkey ", d,
                            "/", ca_name, ".key -CAcreateserial -out ", d, "/",
                            name, ".pem -extfile ", d, "/", name, ".ext"),
               log);
  };
  const std::string client_ext = "extendedKeyUsage=clientAuth\n";
  const bool ok = ca("test-ca") && ca("other-ca") &&
                  leaf("server", "test-ca",
                       "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                       "extendedKeyUsage=serverAuth\n") &&
                  leaf("client-a", "test-ca", client_ext) &&
                  leaf("client-b", "test-ca", client_ext) &&
                  leaf("intruder", "other-ca", client_ext);
  if (!ok) {
    return absl::InternalError(
        absl::StrCat("openssl failed:\n", ReadFile(log)));
  }
  return pki;
}

void SetDeadline(grpc::ClientContext& context, absl::Duration timeout) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

AdmitRequest Request(const std::string& request_id, int sequences = 1,
                     kvgate::v1::Priority priority = kvgate::v1::STANDARD) {
  AdmitRequest r;
  r.set_request_id(request_id);
  r.set_model(kModel);
  r.set_tenant("tenant-from-request");
  r.set_priority(priority);
  for (int i = 0; i < sequences; ++i) {
    kvgate::v1::Sequence* s = r.add_sequences();
    s->set_prompt_tokens(100);
    s->set_max_new_tokens(28);
  }
  return r;
}

// A unary Admit, optionally with a bearer token.
grpc::Status Admit(Admission::Stub* stub, const AdmitRequest& request,
                   AdmitResponse* response, const std::string& token = "") {
  grpc::ClientContext context;
  SetDeadline(context, kRpcTimeout);
  if (!token.empty()) {
    context.AddMetadata("authorization", absl::StrCat("Bearer ", token));
  }
  return stub->Admit(&context, request, response);
}

// An Admit in flight; the destructor cancels it and waits for its answer.
class PendingAdmit {
 public:
  PendingAdmit(Admission::Stub* stub, AdmitRequest request,
               const std::string& token)
      : request_(std::move(request)), done_(promise_.get_future().share()) {
    SetDeadline(context_, absl::Seconds(20));
    context_.AddMetadata("authorization", absl::StrCat("Bearer ", token));
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
  bool Answered(absl::Duration wait) const {
    return done_.wait_for(absl::ToChronoMilliseconds(wait)) ==
           std::future_status::ready;
  }
  const AdmitResponse& response() const { return response_; }
  grpc::Status status() const { return done_.get(); }

 private:
  grpc::ClientContext context_;
  AdmitRequest request_;
  AdmitResponse response_;
  std::promise<grpc::Status> promise_;
  std::shared_future<grpc::Status> done_;
};

// Client side of TLS: the CA to trust and, for mutual TLS, a client pair.
struct ClientTls {
  std::string root_pem;
  std::string cert_pem;
  std::string key_pem;
};

std::shared_ptr<grpc::Channel> TlsChannel(const std::string& address,
                                          const ClientTls& tls) {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = tls.root_pem;
  options.pem_cert_chain = tls.cert_pem;
  options.pem_private_key = tls.key_pem;
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // As in KvgatedProcess::NewChannel: no MIN_RECONNECT_BACKOFF (it is
  // also each connection attempt's deadline).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 20);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 100);
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(options),
                                   args);
}

std::shared_ptr<grpc::Channel> PlainChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(),
                                   args);
}

// GET http://host_port/metrics; the whole response, headers included.
std::string HttpGetMetrics(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (fd >= 0 &&
      connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (write(fd, request.data(), request.size()) ==
        static_cast<ssize_t>(request.size())) {
      char buffer[8192];
      ssize_t n = 0;
      while ((n = read(fd, buffer, sizeof(buffer))) > 0) out.append(buffer, n);
    }
  }
  if (fd >= 0) close(fd);
  return out;
}

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<Pki> pki = MakePki();
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = new Pki(*std::move(pki));
    // The bytes of one Request("..."), from a throwaway kvgated.
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
    weights_bytes_ = estimate.weights_bytes();
    one_request_bytes_ = estimate.total_bytes();
    std::remove(config.c_str());
  }
  static void TearDownTestSuite() {
    if (pki_ != nullptr) {
      Shell(absl::StrCat("rm -rf ", pki_->dir), "/dev/null");
      delete pki_;
      pki_ = nullptr;
    }
  }

  void SetUp() override {
    ASSERT_NE(pki_, nullptr) << "certificates could not be made";
    ASSERT_GT(one_request_bytes_, 0u);
  }
  void TearDown() override {
    // Close the client's connection first: a server being drained waits for
    // open connections to go away.
    stub_.reset();
    server_.reset();
    for (const std::string& f : temp_files_) std::remove(f.c_str());
  }

  // A gpt2 pool in which exactly one Request() fits at a time, then `extra`.
  static std::string OneRequestPool(const std::string& extra) {
    return absl::StrCat(
        "models { name: \"", kModel, "\" preset: \"gpt2\" ",
        "gpu_memory_utilization: 1.0 }\n",
        "memory_source { static_source { memory_bytes: ",
        weights_bytes_ + one_request_bytes_, " } }\n",
        // Room for several requests to wait (the default is the capacity).
        "queue { max_bytes: ", 16 * one_request_bytes_, " }\n", extra);
  }

  static std::string TokensConfig() {
    return absl::StrCat(
        "auth {\n"
        "  tokens { token_file: \"",
        TokenFile(kCriticalToken), "\" tenant: \"", kTenant,
        "\" allow_critical: true }\n", "  tokens { token_file: \"",
        TokenFile(kPlainToken), "\" tenant: \"", kTenant, "\" }\n}\n");
  }
  static std::string TokenFile(const std::string& token) {
    const std::string path = pki_->Path(absl::StrCat(token, ".token"));
    std::ofstream(path) << token << "\n";
    return path;
  }

  // Options for kvgated with `config_text`, listening at `address`.
  KvgatedProcess::Options ServerOptions(const std::string& config_text,
                                        const std::string& address) {
    KvgatedProcess::Options options;
    options.binary = KVGATED_PATH;
    temp_files_.push_back(WriteTempFile(".txtpb", config_text));
    options.args = {"--config=" + temp_files_.back(),
                    "--grpc_address=" + address};
    return options;
  }

  // Starts kvgated on a unix socket (waiting as the helper does).
  void StartUnix(const std::string& config_text,
                 std::vector<std::string> extra_args = {}) {
    const std::string address = UniqueUnixAddress("security");
    KvgatedProcess::Options options = ServerOptions(config_text, address);
    options.address = address;
    for (std::string& a : extra_args) options.args.push_back(std::move(a));
    absl::StatusOr<std::unique_ptr<KvgatedProcess>> server =
        KvgatedProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = Admission::NewStub(server_->NewChannel());
  }

  // Starts kvgated on TCP with the suite's server certificate (plus
  // `tls_fields` in its tls block) and waits until a client with `probe`
  // TLS sees it SERVING.
  void StartTls(const std::string& config_text, const ClientTls& probe,
                const std::string& tls_fields = "") {
    absl::StatusOr<int> port = FreeTcpPort();
    ASSERT_TRUE(port.ok()) << port.status();
    tcp_address_ = absl::StrCat("127.0.0.1:", *port);
    KvgatedProcess::Options options = ServerOptions(
        absl::StrCat("tls { cert_file: \"", pki_->Path("server.pem"),
                     "\" key_file: \"", pki_->Path("server.key"), "\" ",
                     tls_fields, " }\n", config_text),
        tcp_address_);
    absl::StatusOr<std::unique_ptr<KvgatedProcess>> server =
        KvgatedProcess::Start(options);  // no address: does not wait
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    absl::StatusOr<int> health = absl::UnavailableError("not asked");
    while (absl::Now() < give_up) {
      health = HealthCheck(TlsChannel(tcp_address_, probe), "",
                           absl::Milliseconds(300));
      if (health.ok() && *health == 1) return;
      absl::SleepFor(absl::Milliseconds(20));
    }
    FAIL() << "kvgated did not serve TLS: " << health.status() << "\nstderr:\n"
           << server_->Stderr();
  }

  std::string MutualTlsFields() const {
    return absl::StrCat("client_ca_file: \"", pki_->Path("test-ca.pem"),
                        "\" require_client_cert: true");
  }
  ClientTls Trusting() const { return {pki_->Pem("test-ca.pem"), "", ""}; }
  ClientTls As(const std::string& client) const {
    return {pki_->Pem("test-ca.pem"), pki_->Pem(client + ".pem"),
            pki_->Pem(client + ".key")};
  }

  // Exit of kvgated --validate run with `args` (expected to fail).
  KvgatedProcess::Exit RunToExit(const std::string& config_text,
                                 const std::string& address) {
    KvgatedProcess::Options options = ServerOptions(config_text, address);
    options.args.push_back("--validate");
    absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(options);
    EXPECT_TRUE(exit.ok()) << exit.status();
    return exit.ok() ? *exit : KvgatedProcess::Exit{};
  }

  static Pki* pki_;
  static uint64_t weights_bytes_;
  static uint64_t one_request_bytes_;
  std::vector<std::string> temp_files_;
  std::unique_ptr<KvgatedProcess> server_;
  std::unique_ptr<Admission::Stub> stub_;
  std::string tcp_address_;
};

Pki* SecurityTest::pki_ = nullptr;
uint64_t SecurityTest::weights_bytes_ = 0;
uint64_t SecurityTest::one_request_bytes_ = 0;

uint32_t SocketMode(const std::string& address) {
  struct stat st;
  const std::string path = address.substr(5);  // after "unix:"
  if (stat(path.c_str(), &st) != 0) return 07777;
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  return st.st_mode & 07777;
}

// --- Unix socket mode ---------------------------------------------------

TEST_F(SecurityTest, UnixSocketIsOwnerAndGroupOnlyByDefault) {
  StartUnix(OneRequestPool(""));
  EXPECT_EQ(SocketMode(server_->address()), 0660u);
}

TEST_F(SecurityTest, UnixSocketModeFromConfig) {
  StartUnix(OneRequestPool("socket_mode: \"0600\"\n"));
  EXPECT_EQ(SocketMode(server_->address()), 0600u);
}

TEST_F(SecurityTest, SocketModeFlagOverridesConfig) {
  StartUnix(OneRequestPool("socket_mode: \"0600\"\n"), {"--socket_mode=0640"});
  EXPECT_EQ(SocketMode(server_->address()), 0640u);
}

// --- TLS and mutual TLS ------------------------------------------------

TEST_F(SecurityTest, TlsClientIsServed) {
  StartTls(OneRequestPool(""), Trusting());
  auto stub = Admission::NewStub(TlsChannel(tcp_address_, Trusting()));
  AdmitResponse response;
  const grpc::Status status = Admit(stub.get(), Request("tls-1"), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::ADMITTED);
}

TEST_F(SecurityTest, PlaintextClientIsRefusedByTlsPort) {
  StartTls(OneRequestPool(""), Trusting());
  absl::StatusOr<int> health =
      HealthCheck(PlainChannel(tcp_address_), "", absl::Seconds(2));
  EXPECT_FALSE(health.ok());
}

TEST_F(SecurityTest, ClientThatDoesNotTrustTheServerIsRefused) {
  StartTls(OneRequestPool(""), Trusting());
  const ClientTls wrong_root = {pki_->Pem("other-ca.pem"), "", ""};
  EXPECT_FALSE(
      HealthCheck(TlsChannel(tcp_address_, wrong_root), "", absl::Seconds(2))
          .ok());
}

TEST_F(SecurityTest, MutualTlsNeedsACertificateFromTheClientCa) {
  StartTls(OneRequestPool(""), As("client-a"), MutualTlsFields());
  EXPECT_TRUE(HealthCheck(TlsChannel(tcp_address_, As("client-a")), "").ok());
  // No certificate.
  EXPECT_FALSE(
      HealthCheck(TlsChannel(tcp_address_, Trusting()), "", absl::Seconds(2))
          .ok());
  // A certificate from another CA.
  EXPECT_FALSE(HealthCheck(TlsChannel(tcp_address_, As("intruder")), "",
                           absl::Seconds(2))
                   .ok());
}

TEST_F(SecurityTest, CertificateIdentityAuthenticatesWithoutToken) {
  StartTls(OneRequestPool(absl::StrCat(
               "auth { certificates { name: \"client-a\" tenant: \"", kTenant,
               "\" } }\n")),
           As("client-a"), MutualTlsFields());
  AdmitResponse response;
  auto known = Admission::NewStub(TlsChannel(tcp_address_, As("client-a")));
  const grpc::Status ok = Admit(known.get(), Request("cert-1"), &response);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::ADMITTED);
  // Signed by the right CA, but named by no identity.
  auto unknown = Admission::NewStub(TlsChannel(tcp_address_, As("client-b")));
  const grpc::Status refused =
      Admit(unknown.get(), Request("cert-2"), &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(refused.error_message(), HasSubstr("client-b"));
}

// --- Start-up errors -----------------------------------------------------

TEST_F(SecurityTest, MismatchedKeyFailsAtStartup) {
  const KvgatedProcess::Exit exit =
      RunToExit(absl::StrCat(OneRequestPool(""), "tls { cert_file: \"",
                             pki_->Path("server.pem"), "\" key_file: \"",
                             pki_->Path("client-a.key"), "\" }\n"),
                "127.0.0.1:1");
  EXPECT_EQ(exit.code, 1);
  EXPECT_THAT(exit.stderr_text, HasSubstr("does not belong"));
}

TEST_F(SecurityTest, UnreadableCertificateFailsAtStartup) {
  const KvgatedProcess::Exit exit =
      RunToExit(absl::StrCat(OneRequestPool(""),
                             "tls { cert_file: \"/nonexistent/server.pem\" "
                             "key_file: \"",
                             pki_->Path("server.key"), "\" }\n"),
                "127.0.0.1:1");
  EXPECT_EQ(exit.code, 1);
  EXPECT_THAT(exit.stderr_text, HasSubstr("tls.cert_file"));
  EXPECT_THAT(exit.stderr_text, HasSubstr("/nonexistent/server.pem"));
}

TEST_F(SecurityTest, TlsOnUnixSocketIsRefused) {
  const KvgatedProcess::Exit exit =
      RunToExit(absl::StrCat(OneRequestPool(""), "tls { cert_file: \"",
                             pki_->Path("server.pem"), "\" key_file: \"",
                             pki_->Path("server.key"), "\" }\n"),
                UniqueUnixAddress("tls"));
  EXPECT_EQ(exit.code, 1);
  EXPECT_THAT(exit.stderr_text, HasSubstr("unix socket"));
}

// --- Bearer tokens -------------------------------------------------------

TEST_F(SecurityTest, TokenIsRequiredWhenAuthIsOn) {
  StartUnix(OneRequestPool(TokensConfig()));
  AdmitResponse response;
  EXPECT_EQ(Admit(stub_.get(), Request("no-token"), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(
      Admit(stub_.get(), Request("bad-token"), &response, "tok-not-configured")
          .error_code(),
      grpc::StatusCode::UNAUTHENTICATED);
  const grpc::Status ok =
      Admit(stub_.get(), Request("good-token"), &response, kPlainToken);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::ADMITTED);

  // The other calls too.
  grpc::ClientContext context;
  SetDeadline(context, kRpcTimeout);
  kvgate::v1::GetBudgetRequest budget_request;
  budget_request.set_model(kModel);
  kvgate::v1::Budget budget;
  EXPECT_EQ(stub_->GetBudget(&context, budget_request, &budget).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext release_context;
  SetDeadline(release_context, kRpcTimeout);
  kvgate::v1::ReleaseRequest release;
  release.set_lease_id(response.lease_id());
  kvgate::v1::ReleaseResponse released;
  EXPECT_EQ(stub_->Release(&release_context, release, &released).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // Health stays open for probes.
  EXPECT_EQ(*HealthCheck(server_->NewChannel(), ""), 1);
}

// The pool holds one request. Holder admitted; then a STANDARD request and a
// CRITICAL one queue behind it. On release, whoever leads the queue is
// admitted.
TEST_F(SecurityTest, CriticalFromAnIdentityWithoutTheRightWaitsItsTurn) {
  StartUnix(OneRequestPool(TokensConfig()));
  AdmitResponse holder;
  ASSERT_TRUE(
      Admit(stub_.get(), Request("holder"), &holder, kCriticalToken).ok());
  ASSERT_EQ(holder.decision(), kvgate::v1::ADMITTED);
  PendingAdmit standard(stub_.get(), Request("standard"), kCriticalToken);
  ASSERT_FALSE(standard.Answered(absl::Milliseconds(100)))
      << standard.status().error_message() << " "
      << standard.response().ShortDebugString();
  PendingAdmit critical(
      stub_.get(), Request("critical", 1, kvgate::v1::CRITICAL), kPlainToken);
  ASSERT_FALSE(critical.Answered(absl::Milliseconds(100)))
      << critical.status().error_code() << critical.status().error_message()
      << " " << critical.response().ShortDebugString();

  grpc::ClientContext context;
  SetDeadline(context, kRpcTimeout);
  kvgate::v1::ReleaseRequest release;
  release.set_lease_id(holder.lease_id());
  kvgate::v1::ReleaseResponse released;
  context.AddMetadata("authorization", absl::StrCat("Bearer ", kCriticalToken));
  ASSERT_TRUE(stub_->Release(&context, release, &released).ok());

  // Served as STANDARD: first come, first served.
  ASSERT_TRUE(standard.Answered(kRpcTimeout));
  EXPECT_EQ(standard.response().decision(), kvgate::v1::ADMITTED);
  EXPECT_FALSE(critical.Answered(absl::ZeroDuration()));
}

TEST_F(SecurityTest, CriticalFromAnAllowedIdentityGoesFirst) {
  StartUnix(OneRequestPool(TokensConfig()));
  AdmitResponse holder;
  ASSERT_TRUE(Admit(stub_.get(), Request("holder"), &holder, kPlainToken).ok());
  ASSERT_EQ(holder.decision(), kvgate::v1::ADMITTED);
  PendingAdmit standard(stub_.get(), Request("standard"), kPlainToken);
  ASSERT_FALSE(standard.Answered(absl::Milliseconds(100)))
      << standard.status().error_message() << " "
      << standard.response().ShortDebugString();
  PendingAdmit critical(stub_.get(),
                        Request("critical", 1, kvgate::v1::CRITICAL),
                        kCriticalToken);
  ASSERT_FALSE(critical.Answered(absl::Milliseconds(100)))
      << critical.status().error_code() << critical.status().error_message()
      << " " << critical.response().ShortDebugString();

  grpc::ClientContext context;
  SetDeadline(context, kRpcTimeout);
  kvgate::v1::ReleaseRequest release;
  release.set_lease_id(holder.lease_id());
  kvgate::v1::ReleaseResponse released;
  context.AddMetadata("authorization", absl::StrCat("Bearer ", kPlainToken));
  ASSERT_TRUE(stub_->Release(&context, release, &released).ok());

  ASSERT_TRUE(critical.Answered(kRpcTimeout));
  EXPECT_EQ(critical.response().decision(), kvgate::v1::ADMITTED);
  EXPECT_FALSE(standard.Answered(absl::ZeroDuration()));
}

// --- Size limits ---------------------------------------------------------

TEST_F(SecurityTest, OversizedMessageIsResourceExhausted) {
  StartUnix(OneRequestPool("limits { max_message_bytes: 4096 }\n"));
  // About 6 bytes per sequence: 2,000 of them make a 12 KB message.
  AdmitResponse response;
  const grpc::Status status =
      Admit(stub_.get(), Request("huge", 2000), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  // Small messages still pass.
  EXPECT_TRUE(Admit(stub_.get(), Request("small"), &response).ok());
}

TEST_F(SecurityTest, OversizedBatchIsInvalidArgument) {
  StartUnix(OneRequestPool("limits { max_sequences: 8 }\n"));
  AdmitResponse response;
  const grpc::Status status = Admit(stub_.get(), Request("nine", 9), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("limit of 8"));
}

// --- Metrics -------------------------------------------------------------

TEST_F(SecurityTest, MetricsRevealNoIdsTenantsTokensOrLeases) {
  absl::StatusOr<int> port = FreeTcpPort();
  ASSERT_TRUE(port.ok());
  StartUnix(absl::StrCat(
      OneRequestPool(TokensConfig()), "metrics_address: \"127.0.0.1:", *port,
      "\"\n", "tenant_weights { key: \"weight-tenant-c4d1\" value: 2 }\n"));
  std::vector<std::string> secrets = {kCriticalToken, kPlainToken, kTenant,
                                      "tenant-from-request",
                                      "weight-tenant-c4d1"};
  AdmitResponse admitted;
  ASSERT_TRUE(Admit(stub_.get(), Request("req-admitted-6e02"), &admitted,
                    kCriticalToken)
                  .ok());
  ASSERT_EQ(admitted.decision(), kvgate::v1::ADMITTED);
  secrets.push_back("req-admitted-6e02");
  secrets.push_back(admitted.lease_id());
  // Its random prefix (the part before '-') alone.
  secrets.push_back(
      admitted.lease_id().substr(0, admitted.lease_id().find('-')));
  AdmitResponse rejected;
  ASSERT_TRUE(Admit(stub_.get(), Request("req-never-fits-91aa", 8), &rejected,
                    kPlainToken)
                  .ok());
  EXPECT_EQ(rejected.reason(), "NEVER_FITS");
  secrets.push_back("req-never-fits-91aa");
  AdmitRequest unknown_model = Request("req-unknown-model-3b77");
  unknown_model.set_model("model-unknown-0f5e");
  EXPECT_EQ(
      Admit(stub_.get(), unknown_model, &rejected, kPlainToken).error_code(),
      grpc::StatusCode::NOT_FOUND);
  secrets.push_back("req-unknown-model-3b77");
  secrets.push_back("model-unknown-0f5e");
  EXPECT_EQ(Admit(stub_.get(), Request("req-unauthenticated-77c0"), &rejected,
                  "tok-wrong-a1b2")
                .error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  secrets.push_back("req-unauthenticated-77c0");
  secrets.push_back("tok-wrong-a1b2");

  const std::string scrape = HttpGetMetrics(*port);
  ASSERT_THAT(scrape, HasSubstr("kvgate_admission_decisions_total"));
  for (const std::string& secret : secrets) {
    ASSERT_FALSE(secret.empty());
    EXPECT_FALSE(absl::StrContains(scrape, secret))
        << "/metrics reveals '" << secret << "'";
  }
  // Nor the server's key material or file paths.
  EXPECT_FALSE(absl::StrContains(scrape, "PRIVATE KEY"));
  EXPECT_FALSE(absl::StrContains(scrape, pki_->dir));
}

}  // namespace
}  // namespace kvgate
