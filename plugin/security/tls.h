// Server-side TLS for kvgated's TCP listener: the certificate files checked
// at start-up, then gRPC credentials built from them.
//
//   absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
//       MakeServerCredentials(settings.tls);
//
// gRPC itself reports an unreadable or mismatched certificate only when the
// first client connects (and then only in its own log), so every file is
// read and parsed here, and the key is checked against the certificate, to
// fail at start-up with the file's name.
#ifndef KVGATE_PLUGIN_SECURITY_TLS_H_
#define KVGATE_PLUGIN_SECURITY_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"

namespace kvgate {

// Server TLS: the certificate and key files, and optionally the CA that
// client certificates must chain to (mutual TLS). Empty cert_file: plaintext.
struct TlsSettings {
  // PEM files. cert_file may hold the chain (leaf first).
  std::string cert_file;
  std::string key_file;
  // CA bundle that client certificates must chain to. Empty: no client
  // certificate is requested.
  std::string client_ca_file;
  // Refuse clients without a valid certificate (mutual TLS).
  bool require_client_cert = false;

  bool enabled() const { return !cert_file.empty(); }
};

// Reads and checks the files of `tls` (which must be enabled()):
// NotFound / PermissionDenied naming a file that cannot be read,
// InvalidArgument for a file that holds no PEM certificate or key, a key
// that does not belong to the certificate, or a certificate that has
// expired or is not yet valid.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsSettings& tls);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_SECURITY_TLS_H_
