#include "tools/cli_client_flags.h"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace kvgate {
namespace {

// The value of environment variable `name`, or `fallback` when it is unset
// or empty.
std::string FromEnv(const char* name, std::string fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' ? std::string(value) : fallback;
}

// The whole of `path`, or InvalidArgument naming `what`.
absl::StatusOr<std::string> ReadWhole(const std::string& what,
                                      const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": cannot read '", path, "'"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

void ClientFlags::Register(FlagSet& flags) {
  address = FromEnv("KVGATE_ADDRESS", address);
  token_file = FromEnv("KVGATE_TOKEN_FILE", token_file);
  const std::string tls_env =
      absl::AsciiStrToLower(FromEnv("KVGATE_TLS", "false"));
  if (tls_env == "1" || tls_env == "true") {
    tls = true;
  } else if (tls_env != "0" && tls_env != "false") {
    tls_env_error_ =
        absl::StrCat("KVGATE_TLS must be true or false, got '", tls_env, "'");
  }
  tls_ca_file = FromEnv("KVGATE_TLS_CA_FILE", tls_ca_file);
  tls_cert_file = FromEnv("KVGATE_TLS_CERT_FILE", tls_cert_file);
  tls_key_file = FromEnv("KVGATE_TLS_KEY_FILE", tls_key_file);
  tls_server_name = FromEnv("KVGATE_TLS_SERVER_NAME", tls_server_name);

  flags.AddString("address", &address,
                  "kvgated address: unix:/path or host:port (env "
                  "KVGATE_ADDRESS)");
  flags.AddString("token-file", &token_file,
                  "file holding the bearer token for kvgated's auth.tokens "
                  "(env KVGATE_TOKEN_FILE)");
  flags.AddBool("tls", &tls,
                "connect with TLS; implied by the --tls-* files (env "
                "KVGATE_TLS)");
  flags.AddString("tls-ca-file", &tls_ca_file,
                  "PEM CA bundle to verify kvgated's certificate (default: "
                  "the system's; env KVGATE_TLS_CA_FILE)");
  flags.AddString("tls-cert-file", &tls_cert_file,
                  "PEM client certificate for mutual TLS (env "
                  "KVGATE_TLS_CERT_FILE)");
  flags.AddString("tls-key-file", &tls_key_file,
                  "PEM key of --tls-cert-file (env KVGATE_TLS_KEY_FILE)");
  flags.AddString("tls-server-name", &tls_server_name,
                  "name kvgated's certificate must carry (default: the "
                  "address's host; env KVGATE_TLS_SERVER_NAME)");
  flags.AddDouble("timeout", &timeout_seconds, "RPC deadline in seconds");
  flags.AddBool("json", &json, "print one JSON object");
}

absl::Status ClientFlags::Load() {
  if (!tls_env_error_.empty()) {
    return absl::InvalidArgumentError(tls_env_error_);
  }
  if (!(timeout_seconds > 0)) {
    return absl::InvalidArgumentError("--timeout must be > 0");
  }
  if (!token_file.empty()) {
    absl::StatusOr<std::string> text =
        ReadWhole("--token-file (KVGATE_TOKEN_FILE)", token_file);
    if (!text.ok()) return text.status();
    token_ = std::string(absl::StripAsciiWhitespace(*text));
    if (token_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--token-file (KVGATE_TOKEN_FILE): '", token_file, "' is empty"));
    }
  }
  if (tls_cert_file.empty() != tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert-file and --tls-key-file go together (mutual TLS)");
  }
  const struct {
    const char* what;
    const std::string& path;
    std::string& pem;
  } files[] = {
      {"--tls-ca-file (KVGATE_TLS_CA_FILE)", tls_ca_file, root_pem_},
      {"--tls-cert-file (KVGATE_TLS_CERT_FILE)", tls_cert_file, cert_pem_},
      {"--tls-key-file (KVGATE_TLS_KEY_FILE)", tls_key_file, key_pem_},
  };
  for (const auto& file : files) {
    if (file.path.empty()) continue;
    absl::StatusOr<std::string> pem = ReadWhole(file.what, file.path);
    if (!pem.ok()) return pem.status();
    file.pem = *std::move(pem);
  }
  return absl::OkStatus();
}

bool ClientFlags::UsesTls() const {
  return tls || !tls_ca_file.empty() || !tls_cert_file.empty();
}

std::unique_ptr<kvgate::v1::Admission::Stub> ClientFlags::Connect() const {
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      grpc::InsecureChannelCredentials();
  grpc::ChannelArguments args;
  if (UsesTls()) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = root_pem_;
    options.pem_cert_chain = cert_pem_;
    options.pem_private_key = key_pem_;
    credentials = grpc::SslCredentials(options);
    if (!tls_server_name.empty()) {
      args.SetSslTargetNameOverride(tls_server_name);
    }
  }
  return kvgate::v1::Admission::NewStub(
      grpc::CreateCustomChannel(address, credentials, args));
}

void ClientFlags::Arm(grpc::ClientContext& context) const {
  context.set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000)));
  if (!token_.empty()) {
    context.AddMetadata("authorization", absl::StrCat("Bearer ", token_));
  }
}

}  // namespace kvgate
