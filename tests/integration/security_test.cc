// Security of the real kvgated binary: the unix socket's mode, TLS and
// mutual TLS on TCP (certificates made by the `openssl` command at run time),
// caller authentication by bearer token (from token files) and client
// certificate, message and batch size limits from the config, and a /metrics
// scrape that must not reveal request ids, tenants, tokens or lease ids, and
// the `kvgate` CLI as a client of such a kvgated (token file, TLS). The
// CRITICAL rule (an identity without allow_critical is served STANDARD) is
// tested in-process, tests/plugin/server/admission_service_test.cc.
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvgate/v1/admission.grpc.pb.h"
#include "tests/integration/kvgated_process.h"

namespace kvgate {
namespace {

using kvgate::v1::Admission;
using kvgate::v1::AdmitRequest;
using kvgate::v1::AdmitResponse;
using ::testing::HasSubstr;

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

// Runs a shell command, for at most a minute; its output goes to `log`.
// False on failure or timeout.
bool Shell(const std::string& command, const std::string& log) {
  const std::string line =
      absl::StrCat("timeout 60 ", command, " >>", log, " 2>&1");
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

// An Admit of the shape whose tenant field names a tenant the caller is not
// (the identity's tenant must win).
AdmitRequest TenantRequest(const std::string& request_id, int sequences = 1) {
  return Request(request_id, sequences, kvgate::v1::STANDARD,
                 "tenant-from-request");
}

// A unary Admit on `stub` (another channel than the fixture's), optionally
// with a bearer token.
grpc::Status AdmitOn(Admission::Stub* stub, const AdmitRequest& request,
                     AdmitResponse* response, const std::string& token = "") {
  grpc::ClientContext context;
  SetDeadline(context, kRpcTimeout);
  if (!token.empty()) {
    context.AddMetadata("authorization", absl::StrCat("Bearer ", token));
  }
  return stub->Admit(&context, request, response);
}

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

class SecurityTest : public KvgatedTest {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<Pki> pki = MakePki();
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = new Pki(*std::move(pki));
  }
  static void TearDownTestSuite() {
    if (pki_ != nullptr) {
      Shell(absl::StrCat("rm -rf ", pki_->dir), "/dev/null");
      delete pki_;
      pki_ = nullptr;
    }
  }

  void SetUp() override {
    KvgatedTest::SetUp();
    ASSERT_NE(pki_, nullptr) << "certificates could not be made";
  }

  // A gpt2 pool in which exactly one TenantRequest() fits at a time, then
  // `extra`.
  static std::string OneRequestPool(const std::string& extra) {
    return PoolConfig(
        shape().CapacityFor(1),
        // Room for several requests to wait (the default is the capacity).
        absl::StrCat("queue { max_bytes: ", 16 * shape().total, " }\n", extra));
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

  // Starts kvgated on a unix socket (waiting as the helper does).
  void StartUnix(const std::string& config_text,
                 const std::vector<std::string>& extra_args = {}) {
    StartServer(
        ServerOptions(config_text, UniqueUnixAddress("security"), extra_args));
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
    // Start's own wait speaks plaintext: wait here, over TLS, instead.
    options.address.clear();
    absl::StatusOr<std::unique_ptr<KvgatedProcess>> server =
        KvgatedProcess::Start(options);
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

  // Exit of kvgated --validate run with `config_text` and `address`
  // (expected to fail).
  KvgatedProcess::Exit RunToExit(const std::string& config_text,
                                 const std::string& address) {
    KvgatedProcess::Options options = ServerOptions(config_text, address);
    options.args.push_back("--validate");
    absl::StatusOr<KvgatedProcess::Exit> exit = KvgatedProcess::Run(options);
    EXPECT_TRUE(exit.ok()) << exit.status();
    return exit.ok() ? *exit : KvgatedProcess::Exit{};
  }

  static Pki* pki_;
  std::string tcp_address_;
};

Pki* SecurityTest::pki_ = nullptr;

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
  const grpc::Status status =
      AdmitOn(stub.get(), TenantRequest("tls-1"), &response);
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
  const grpc::Status ok =
      AdmitOn(known.get(), TenantRequest("cert-1"), &response);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(response.decision(), kvgate::v1::ADMITTED);
  // Signed by the right CA, but named by no identity.
  auto unknown = Admission::NewStub(TlsChannel(tcp_address_, As("client-b")));
  const grpc::Status refused =
      AdmitOn(unknown.get(), TenantRequest("cert-2"), &response);
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
  EXPECT_EQ(Admit(TenantRequest("no-token"), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Admit(TenantRequest("bad-token"), &response, "tok-not-configured")
                .error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  const grpc::Status ok =
      Admit(TenantRequest("good-token"), &response, kPlainToken);
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

// --- The kvgate CLI as a client -------------------------------------------

// Runs the kvgate CLI with `args` and `env` on top of the test's own.
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

// The lines of a CLI's stderr.
std::vector<std::string> ErrorLines(const KvgatedProcess::Exit& exit) {
  return absl::StrSplit(exit.stderr_text, '\n', absl::SkipEmpty());
}

TEST_F(SecurityTest, CliBudgetSendsTheTokenOfTokenFile) {
  StartUnix(OneRequestPool(TokensConfig()));
  const std::vector<std::string> budget = {
      "budget", "--address=" + server_->address(),
      absl::StrCat("--model=", kModel), "--json"};

  std::vector<std::string> with_token = budget;
  with_token.push_back("--token-file=" + TokenFile(kPlainToken));
  const KvgatedProcess::Exit ok = RunCli(with_token);
  ASSERT_EQ(ok.code, 0) << ok.stderr_text;
  EXPECT_THAT(ok.stdout_text, HasSubstr("\"capacity_bytes\""));

  // Without: one line that says what was refused and what to pass.
  const KvgatedProcess::Exit refused = RunCli(budget);
  EXPECT_EQ(refused.code, 1);
  EXPECT_EQ(refused.stdout_text, "");
  const std::vector<std::string> lines = ErrorLines(refused);
  ASSERT_EQ(lines.size(), 1u) << refused.stderr_text;
  EXPECT_THAT(lines[0], HasSubstr("UNAUTHENTICATED"));
  EXPECT_THAT(lines[0], HasSubstr("--token-file"));
}

TEST_F(SecurityTest, CliTakesTheTokenFileFromKvgateTokenFile) {
  StartUnix(OneRequestPool(TokensConfig()));
  const KvgatedProcess::Exit admit =
      RunCli({"admit", "--address=" + server_->address(),
              absl::StrCat("--model=", kModel), "--json",
              absl::StrCat("--prompt-tokens=", kPromptTokens),
              absl::StrCat("--max-new-tokens=", kMaxNewTokens)},
             {{"KVGATE_TOKEN_FILE", TokenFile(kCriticalToken)}});
  ASSERT_EQ(admit.code, 0) << admit.stderr_text;
  // Admitted, so the token was sent (without one: UNAUTHENTICATED).
  EXPECT_THAT(admit.stdout_text, HasSubstr("\"ADMITTED\""));
}

TEST_F(SecurityTest, CliUnreadableTokenFileIsOneUsageLine) {
  StartUnix(OneRequestPool(TokensConfig()));
  const KvgatedProcess::Exit exit =
      RunCli({"budget", "--address=" + server_->address(),
              "--token-file=/nonexistent/kvgate.token"});
  EXPECT_EQ(exit.code, 2);
  const std::vector<std::string> lines = ErrorLines(exit);
  ASSERT_EQ(lines.size(), 1u) << exit.stderr_text;
  EXPECT_THAT(lines[0], HasSubstr("/nonexistent/kvgate.token"));
}

TEST_F(SecurityTest, CliSpeaksMutualTlsWithItsCaCertificateAndKey) {
  StartTls(OneRequestPool(""), As("client-a"), MutualTlsFields());
  const std::vector<std::string> budget = {
      "budget",
      "--address=" + tcp_address_,
      absl::StrCat("--model=", kModel),
      "--json",
      "--timeout=3",
      "--tls-ca-file=" + pki_->Path("test-ca.pem")};
  std::vector<std::string> mutual = budget;
  mutual.push_back("--tls-cert-file=" + pki_->Path("client-a.pem"));
  mutual.push_back("--tls-key-file=" + pki_->Path("client-a.key"));
  const KvgatedProcess::Exit ok = RunCli(mutual);
  ASSERT_EQ(ok.code, 0) << ok.stderr_text;
  EXPECT_THAT(ok.stdout_text, HasSubstr("\"capacity_bytes\""));

  // The same files from the environment.
  const KvgatedProcess::Exit from_env =
      RunCli({"budget", "--address=" + tcp_address_,
              absl::StrCat("--model=", kModel), "--json"},
             {{"KVGATE_TLS_CA_FILE", pki_->Path("test-ca.pem")},
              {"KVGATE_TLS_CERT_FILE", pki_->Path("client-b.pem")},
              {"KVGATE_TLS_KEY_FILE", pki_->Path("client-b.key")}});
  ASSERT_EQ(from_env.code, 0) << from_env.stderr_text;

  // No client certificate: the handshake fails, in one line.
  const KvgatedProcess::Exit refused = RunCli(budget);
  EXPECT_EQ(refused.code, 1);
  EXPECT_EQ(ErrorLines(refused).size(), 1u) << refused.stderr_text;
  // Plaintext to a TLS port fails too.
  EXPECT_EQ(RunCli({"budget", "--address=" + tcp_address_,
                    absl::StrCat("--model=", kModel), "--timeout=2"})
                .code,
            1);
}

// --- Size limits ---------------------------------------------------------

TEST_F(SecurityTest, OversizedMessageIsResourceExhausted) {
  StartUnix(OneRequestPool("limits { max_message_bytes: 4096 }\n"));
  // About 6 bytes per sequence: 2,000 of them make a 12 KB message.
  AdmitResponse response;
  const grpc::Status status = Admit(TenantRequest("huge", 2000), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  // Small messages still pass.
  EXPECT_TRUE(Admit(TenantRequest("small"), &response).ok());
}

TEST_F(SecurityTest, OversizedBatchIsInvalidArgument) {
  StartUnix(OneRequestPool("limits { max_sequences: 8 }\n"));
  AdmitResponse response;
  const grpc::Status status = Admit(TenantRequest("nine", 9), &response);
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
  ASSERT_TRUE(
      Admit(TenantRequest("req-admitted-6e02"), &admitted, kCriticalToken)
          .ok());
  ASSERT_EQ(admitted.decision(), kvgate::v1::ADMITTED);
  secrets.push_back("req-admitted-6e02");
  secrets.push_back(admitted.lease_id());
  // Its random prefix (the part before '-') alone.
  secrets.push_back(
      admitted.lease_id().substr(0, admitted.lease_id().find('-')));
  AdmitResponse rejected;
  ASSERT_TRUE(
      Admit(TenantRequest("req-never-fits-91aa", 8), &rejected, kPlainToken)
          .ok());
  EXPECT_EQ(rejected.reason(), "NEVER_FITS");
  secrets.push_back("req-never-fits-91aa");
  AdmitRequest unknown_model = TenantRequest("req-unknown-model-3b77");
  unknown_model.set_model("model-unknown-0f5e");
  EXPECT_EQ(Admit(unknown_model, &rejected, kPlainToken).error_code(),
            grpc::StatusCode::NOT_FOUND);
  secrets.push_back("req-unknown-model-3b77");
  secrets.push_back("model-unknown-0f5e");
  EXPECT_EQ(Admit(TenantRequest("req-unauthenticated-77c0"), &rejected,
                  "tok-wrong-a1b2")
                .error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  secrets.push_back("req-unauthenticated-77c0");
  secrets.push_back("tok-wrong-a1b2");

  const std::string scrape = HttpGet(*port, "/metrics");
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
