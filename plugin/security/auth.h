// Authenticator: who is calling kvgated, and what that caller may ask for.
//
// When authentication is configured (ServerConfig.auth), a caller proves its
// identity with a bearer token (`authorization: Bearer <token>`) or with a
// client certificate verified by mutual TLS. The identity, not the request,
// then decides the tenant a request is accounted to and whether it may use
// CRITICAL priority: a field the caller fills in itself proves nothing.
// It guards the Admission gRPC service only: the Envoy ext_proc service does
// not authenticate (Envoy is the caller there, and it must strip or set the
// tenant and priority headers itself; SECURITY.md).
//
//   absl::StatusOr<std::unique_ptr<Authenticator>> auth =
//       Authenticator::Create(options);
//   absl::StatusOr<CallerIdentity> caller = (*auth)->Authenticate(
//       context->auth_context().get(), context->client_metadata());
//   if (!caller.ok()) return caller.status();  // UNAUTHENTICATED
//
// Tokens are kept only as SHA-256 digests and compared in constant time
// against every configured digest, so neither the configuration nor the
// timing of a failed attempt gives a token away. Thread-safe (immutable after
// Create).
#ifndef KVGATE_PLUGIN_SECURITY_AUTH_H_
#define KVGATE_PLUGIN_SECURITY_AUTH_H_

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/auth_context.h"
#include "grpcpp/support/string_ref.h"

namespace kvgate {

using Sha256Digest = std::array<uint8_t, 32>;

// SHA-256 of `data`.
Sha256Digest Sha256(absl::string_view data);

// Parses 64 hex digits (either case). InvalidArgument otherwise.
absl::StatusOr<Sha256Digest> ParseSha256Hex(absl::string_view hex);

// An authenticated caller.
struct CallerIdentity {
  // The tenant its requests are accounted to (fairness, weights).
  std::string tenant;
  // Whether it may use CRITICAL priority.
  bool allow_critical = false;
  // How it proved itself, for logs: "token:<tenant>" or
  // "certificate:<name>". Never the token.
  std::string principal;
};

// What a caller presented, taken from the transport.
struct CallerCredentials {
  // Each `authorization` header or metadata value sent (normally 0 or 1).
  std::vector<std::string> authorization;
  // The names of a client certificate that the TLS handshake verified: its
  // subject common name and subject alternative names. Empty when there is
  // none.
  std::vector<std::string> certificate_names;
};

// Maps what a caller presents (a bearer token, a verified client
// certificate) to its CallerIdentity, or refuses it. Immutable after Create,
// so thread-safe.
class Authenticator {
 public:
  struct TokenIdentity {
    Sha256Digest token_sha256{};
    std::string tenant;
    bool allow_critical = false;
  };
  struct CertificateIdentity {
    // A certificate's common name or one of its subject alternative names.
    std::string name;
    std::string tenant;
    bool allow_critical = false;
  };
  struct Options {
    std::vector<TokenIdentity> tokens;
    std::vector<CertificateIdentity> certificates;
  };

  // InvalidArgument for an identity without a tenant, a certificate
  // identity without a name, a duplicate certificate name or token digest,
  // or no identity at all.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(Options options);

  // The caller's identity. A bearer token, when one is sent, must be
  // valid (a bad token is never excused by a certificate); otherwise a
  // verified client certificate whose name matches an identity. Fails with
  // Unauthenticated, saying what to send; the message never contains the
  // token.
  absl::StatusOr<CallerIdentity> Authenticate(
      const CallerCredentials& credentials) const;

  // The same, from a gRPC call: the `authorization` metadata and, when the
  // connection is TLS and the peer's certificate was verified, its names
  // (properties x509_common_name, x509_subject_alternative_name, peer_dns).
  // `auth_context` may be null.
  absl::StatusOr<CallerIdentity> Authenticate(
      const grpc::AuthContext* auth_context,
      const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const;

  // One Authorization header value, "Bearer <token>" (scheme in any case),
  // checked on its own: what Authenticate does with each `authorization`
  // value it is given.
  absl::StatusOr<CallerIdentity> AuthenticateBearer(
      absl::string_view authorization) const;

 private:
  explicit Authenticator(Options options) : options_(std::move(options)) {}

  const Options options_;
};

// The names of the verified client certificate of a gRPC call (see
// Authenticator::Authenticate); empty when the connection is not TLS or the
// peer sent no verified certificate.
std::vector<std::string> VerifiedCertificateNames(
    const grpc::AuthContext* auth_context);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_SECURITY_AUTH_H_
