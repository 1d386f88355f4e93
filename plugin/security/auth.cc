#include "plugin/security/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "grpc/grpc_security_constants.h"

namespace kvgate {
namespace {

constexpr absl::string_view kBearer = "bearer ";

absl::Status NoCredentials() {
  return absl::UnauthenticatedError(
      "authentication required: send `authorization: Bearer <token>` "
      "metadata, or connect with a client certificate named in "
      "auth.certificates");
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Sha256Digest Sha256(absl::string_view data) {
  Sha256Digest digest{};
  unsigned int size = 0;
  // EVP_Digest fails only when the allocator does; the digest then stays
  // all zero, which no configured digest equals by accident.
  EVP_Digest(data.data(), data.size(), digest.data(), &size, EVP_sha256(),
             nullptr);
  return digest;
}

absl::StatusOr<Sha256Digest> ParseSha256Hex(absl::string_view hex) {
  Sha256Digest digest{};
  if (hex.size() != 2 * digest.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected 64 hex digits (a SHA-256 digest), got ",
                     hex.size(), " characters"));
  }
  for (size_t i = 0; i < digest.size(); ++i) {
    const int hi = HexValue(hex[2 * i]);
    const int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError(
          "expected 64 hex digits (a SHA-256 digest)");
    }
    digest[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return digest;
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(
    Options options) {
  if (options.tokens.empty() && options.certificates.empty()) {
    return absl::InvalidArgumentError(
        "auth: configure at least one token or certificate identity");
  }
  absl::flat_hash_set<std::string> digests;
  for (size_t i = 0; i < options.tokens.size(); ++i) {
    const TokenIdentity& t = options.tokens[i];
    if (t.tenant.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("auth.tokens[", i, "].tenant: is required"));
    }
    const std::string key(t.token_sha256.begin(), t.token_sha256.end());
    if (!digests.insert(key).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "auth.tokens[", i, "]: the same token is configured twice"));
    }
  }
  absl::flat_hash_set<std::string> names;
  for (size_t i = 0; i < options.certificates.size(); ++i) {
    const CertificateIdentity& c = options.certificates[i];
    const std::string field = absl::StrCat("auth.certificates[", i, "]");
    if (c.name.empty()) {
      return absl::InvalidArgumentError(field + ".name: is required");
    }
    if (c.tenant.empty()) {
      return absl::InvalidArgumentError(field + ".tenant: is required");
    }
    if (!names.insert(c.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".name: duplicate name '", c.name, "'"));
    }
  }
  return std::unique_ptr<Authenticator>(new Authenticator(std::move(options)));
}

absl::StatusOr<CallerIdentity> Authenticator::AuthenticateBearer(
    absl::string_view authorization) const {
  authorization = absl::StripAsciiWhitespace(authorization);
  // The scheme is case-insensitive (RFC 9110, section 11.1).
  if (!absl::StartsWithIgnoreCase(authorization, kBearer)) {
    return absl::UnauthenticatedError(
        "authorization: expected \"Bearer <token>\"");
  }
  const absl::string_view token =
      absl::StripLeadingAsciiWhitespace(authorization.substr(kBearer.size()));
  if (token.empty()) {
    return absl::UnauthenticatedError("authorization: empty bearer token");
  }
  const Sha256Digest presented = Sha256(token);
  // Compare with every digest, whatever matched, so that the time taken
  // does not depend on which configured token (if any) is sent.
  const TokenIdentity* match = nullptr;
  for (const TokenIdentity& t : options_.tokens) {
    const bool equal = CRYPTO_memcmp(presented.data(), t.token_sha256.data(),
                                     presented.size()) == 0;
    if (equal) match = &t;
  }
  if (match == nullptr) {
    return absl::UnauthenticatedError("authorization: unknown bearer token");
  }
  return CallerIdentity{match->tenant, match->allow_critical,
                        absl::StrCat("token:", match->tenant)};
}

absl::StatusOr<CallerIdentity> Authenticator::Authenticate(
    const CallerCredentials& credentials) const {
  if (credentials.authorization.size() > 1) {
    return absl::UnauthenticatedError("authorization: sent more than once");
  }
  if (credentials.authorization.size() == 1) {
    return AuthenticateBearer(credentials.authorization.front());
  }
  if (credentials.certificate_names.empty()) return NoCredentials();
  for (const CertificateIdentity& c : options_.certificates) {
    for (const std::string& name : credentials.certificate_names) {
      if (name == c.name) {
        return CallerIdentity{c.tenant, c.allow_critical,
                              absl::StrCat("certificate:", c.name)};
      }
    }
  }
  return absl::UnauthenticatedError(
      absl::StrCat("client certificate (",
                   absl::StrJoin(credentials.certificate_names, ", "),
                   ") matches no auth.certificates name"));
}

absl::StatusOr<CallerIdentity> Authenticator::Authenticate(
    const grpc::AuthContext* auth_context,
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) const {
  CallerCredentials credentials;
  const auto [first, last] = metadata.equal_range("authorization");
  for (auto it = first; it != last; ++it) {
    credentials.authorization.emplace_back(it->second.data(),
                                           it->second.size());
  }
  credentials.certificate_names = VerifiedCertificateNames(auth_context);
  return Authenticate(credentials);
}

std::vector<std::string> VerifiedCertificateNames(
    const grpc::AuthContext* auth_context) {
  std::vector<std::string> names;
  if (auth_context == nullptr || !auth_context->IsPeerAuthenticated()) {
    return names;
  }
  bool tls = false;
  for (const grpc::string_ref& type : auth_context->FindPropertyValues(
           GRPC_TRANSPORT_SECURITY_TYPE_PROPERTY_NAME)) {
    tls = tls || type == GRPC_SSL_TRANSPORT_SECURITY_TYPE ||
          type == GRPC_TLS_TRANSPORT_SECURITY_TYPE;
  }
  if (!tls) return names;
  for (const char* property :
       {GRPC_X509_CN_PROPERTY_NAME, GRPC_X509_SAN_PROPERTY_NAME,
        GRPC_PEER_DNS_PROPERTY_NAME}) {
    for (const grpc::string_ref& value :
         auth_context->FindPropertyValues(property)) {
      names.emplace_back(value.data(), value.size());
    }
  }
  return names;
}

}  // namespace kvgate
