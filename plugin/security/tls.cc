#include "plugin/security/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/server_credentials.h"

namespace kvgate {
namespace {

absl::StatusOr<std::string> ReadPemFile(const std::string& field,
                                        const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno;
    const std::string message =
        absl::StrCat(field, ": cannot read '", path, "': ", strerror(error));
    return error == EACCES ? absl::PermissionDeniedError(message)
                           : absl::NotFoundError(message);
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioDeleter>;
using Certificate = std::unique_ptr<X509, X509Deleter>;
using PrivateKey = std::unique_ptr<EVP_PKEY, KeyDeleter>;

Bio MemoryBio(const std::string& pem) {
  return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// The first certificate of `pem`, checked for its validity period.
absl::StatusOr<Certificate> ParseCertificate(const std::string& field,
                                             const std::string& path,
                                             const std::string& pem) {
  Bio bio = MemoryBio(pem);
  Certificate cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (cert == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": '", path, "' holds no PEM certificate (BEGIN CERTIFICATE)"));
  }
  if (X509_cmp_current_time(X509_get0_notAfter(cert.get())) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": the certificate in '", path, "' has expired"));
  }
  if (X509_cmp_current_time(X509_get0_notBefore(cert.get())) > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": the certificate in '", path, "' is not valid yet"));
  }
  return cert;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsSettings& tls) {
  if (!tls.enabled() || tls.key_file.empty()) {
    return absl::InvalidArgumentError(
        "tls: cert_file and key_file are both required");
  }
  absl::StatusOr<std::string> cert_pem =
      ReadPemFile("tls.cert_file", tls.cert_file);
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem =
      ReadPemFile("tls.key_file", tls.key_file);
  if (!key_pem.ok()) return key_pem.status();
  absl::StatusOr<Certificate> cert =
      ParseCertificate("tls.cert_file", tls.cert_file, *cert_pem);
  if (!cert.ok()) return cert.status();
  Bio key_bio = MemoryBio(*key_pem);
  PrivateKey key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tls.key_file: '", tls.key_file,
        "' holds no unencrypted PEM private key (BEGIN PRIVATE KEY)"));
  }
  if (X509_check_private_key(cert->get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        "tls.key_file: the key in '", tls.key_file,
        "' does not belong to the certificate in '", tls.cert_file, "'"));
  }

  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_key_cert_pairs.push_back({*key_pem, *cert_pem});
  if (!tls.client_ca_file.empty()) {
    absl::StatusOr<std::string> ca_pem =
        ReadPemFile("tls.client_ca_file", tls.client_ca_file);
    if (!ca_pem.ok()) return ca_pem.status();
    absl::StatusOr<Certificate> ca =
        ParseCertificate("tls.client_ca_file", tls.client_ca_file, *ca_pem);
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca_pem;
    options.client_certificate_request =
        tls.require_client_cert
            ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
            : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  } else if (tls.require_client_cert) {
    return absl::InvalidArgumentError(
        "tls.require_client_cert: needs tls.client_ca_file");
  }
  return grpc::SslServerCredentials(options);
}

}  // namespace kvgate
