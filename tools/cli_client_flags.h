// ClientFlags: how the `kvgate` client subcommands (admit, release, renew,
// budget, demo) reach kvgated: its address, TLS and a bearer token.
//
// Each setting comes from its flag or, when the flag is absent, from the
// environment the kvgated pod sets for its clients, else a default:
//
//   --address          KVGATE_ADDRESS        unix:/tmp/kvgate.sock
//   --token-file       KVGATE_TOKEN_FILE     (none: no token sent)
//   --tls              KVGATE_TLS            false (implied by the files)
//   --tls-ca-file      KVGATE_TLS_CA_FILE    (none: the system's roots)
//   --tls-cert-file    KVGATE_TLS_CERT_FILE  (none: no client certificate)
//   --tls-key-file     KVGATE_TLS_KEY_FILE
//   --tls-server-name  KVGATE_TLS_SERVER_NAME  (none: the address's host)
//
// The token is sent as `authorization: Bearer <token>` metadata on every
// call, which is what kvgated's `auth.tokens` expect; the file's surrounding
// whitespace is not part of the token (as kvgated reads its own token files).
//
//   ClientFlags client;
//   client.Register(flags);            // before flags.Parse
//   ...flags.Parse(args)...
//   absl::Status loaded = client.Load();  // reads the files
//   std::unique_ptr<Admission::Stub> stub = client.Connect();
//   grpc::ClientContext context;
//   client.Arm(context);               // deadline and token
//
// Not thread-safe while loading; const methods are safe from any thread.
#ifndef KVGATE_TOOLS_CLI_CLIENT_FLAGS_H_
#define KVGATE_TOOLS_CLI_CLIENT_FLAGS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "grpcpp/grpcpp.h"
#include "kvgate/v1/admission.grpc.pb.h"
#include "tools/cli_flags.h"

namespace kvgate {

// Where kvgated listens when neither --address nor KVGATE_ADDRESS says.
inline constexpr char kDefaultKvgatedAddress[] = "unix:/tmp/kvgate.sock";

struct ClientFlags {
  std::string address = kDefaultKvgatedAddress;
  std::string token_file;
  bool tls = false;
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_server_name;
  double timeout_seconds = 30;
  bool json = false;

  // Registers the flags on `flags`, their defaults taken from the KVGATE_*
  // environment variables above where set. InvalidArgument (at Load) for a
  // KVGATE_TLS that is not a boolean.
  void Register(FlagSet& flags);

  // Reads the token and TLS files named by the flags. InvalidArgument naming
  // the flag (and the variable it may come from) for a file that cannot be
  // read, an empty token, a certificate without its key or the reverse, or
  // a timeout that is not positive.
  absl::Status Load();

  // True when the channel is TLS.
  bool UsesTls() const;

  // A stub on a new channel to `address` with the loaded credentials.
  std::unique_ptr<kvgate::v1::Admission::Stub> Connect() const;

  // Sets the call's deadline (--timeout) and, when a token was loaded, its
  // authorization metadata.
  void Arm(grpc::ClientContext& context) const;

 private:
  std::string token_;
  std::string root_pem_;
  std::string cert_pem_;
  std::string key_pem_;
  std::string tls_env_error_;
};

}  // namespace kvgate

#endif  // KVGATE_TOOLS_CLI_CLIENT_FLAGS_H_
