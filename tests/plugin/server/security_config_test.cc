// ServerConfig's security fields: socket_mode, tls, auth and limits, resolved
// and checked by ResolveServerConfig.
#include <cstdio>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "plugin/security/auth.h"
#include "plugin/server/config.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;

// SHA-256 of "secret-token" (sha256sum).
constexpr char kSecretDigest[] =
    "930bbdc51b6aed5c2a5678fd6e28dee7a05e8a4b643cfc0b4427c3efb86c0d94";

absl::StatusOr<ServerSettings> Resolve(const std::string& text) {
  kvgate::v1::ServerConfig config;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &config))
      << text;
  return ResolveServerConfig(config);
}

std::string Message(const std::string& text) {
  absl::StatusOr<ServerSettings> s = Resolve(text);
  EXPECT_FALSE(s.ok()) << text;
  return s.ok() ? "" : std::string(s.status().message());
}

std::string TempFile(const std::string& name, const std::string& text) {
  const std::string path = absl::StrCat(::testing::TempDir(), name);
  std::ofstream(path) << text;
  return path;
}

TEST(SecurityConfigTest, DefaultsAreClosedSocketNoTlsNoAuthAndOneMebibyte) {
  absl::StatusOr<ServerSettings> s = Resolve("");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->socket_mode, 0660u);
  EXPECT_FALSE(s->tls.enabled());
  EXPECT_TRUE(s->auth.tokens.empty());
  EXPECT_TRUE(s->auth.certificates.empty());
  EXPECT_EQ(s->max_message_bytes, 1u << 20);
  EXPECT_EQ(s->max_sequences, 4096u);
}

TEST(SecurityConfigTest, SocketModeIsOctal) {
  absl::StatusOr<ServerSettings> s = Resolve("socket_mode: \"0600\"");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->socket_mode, 0600u);
  EXPECT_EQ(*ParseSocketMode("660"), 0660u);
  EXPECT_THAT(Message("socket_mode: \"0868\""), HasSubstr("socket_mode"));
  EXPECT_THAT(Message("socket_mode: \"4755\""), HasSubstr("0777"));
  EXPECT_FALSE(ParseSocketMode("").ok());
  EXPECT_FALSE(ParseSocketMode("rw-rw----").ok());
}

TEST(SecurityConfigTest, TlsNeedsCertAndKey) {
  EXPECT_THAT(Message("grpc_address: \"127.0.0.1:1\" "
                      "tls { cert_file: \"/c.pem\" }"),
              HasSubstr("cert_file and key_file"));
  absl::StatusOr<ServerSettings> s = Resolve(
      "grpc_address: \"127.0.0.1:1\" "
      "tls { cert_file: \"/c.pem\" key_file: \"/k.pem\" }");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->tls.enabled());
  EXPECT_EQ(s->tls.key_file, "/k.pem");
  EXPECT_FALSE(s->tls.require_client_cert);
}

TEST(SecurityConfigTest, TlsIsRefusedOnAUnixSocket) {
  EXPECT_THAT(Message("tls { cert_file: \"/c.pem\" key_file: \"/k.pem\" }"),
              HasSubstr("unix socket"));
}

TEST(SecurityConfigTest, RequiringClientCertificatesNeedsTheirCa) {
  EXPECT_THAT(Message("grpc_address: \"127.0.0.1:1\" tls { cert_file: "
                      "\"/c.pem\" key_file: \"/k.pem\" require_client_cert: "
                      "true }"),
              HasSubstr("client_ca_file"));
}

TEST(SecurityConfigTest, TokenByDigest) {
  absl::StatusOr<ServerSettings> s =
      Resolve(absl::StrCat("auth { tokens { token_sha256: \"", kSecretDigest,
                           "\" tenant: \"a\" allow_critical: true } }"));
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->auth.tokens.size(), 1u);
  EXPECT_EQ(s->auth.tokens[0].token_sha256, *ParseSha256Hex(kSecretDigest));
  EXPECT_EQ(s->auth.tokens[0].tenant, "a");
  EXPECT_TRUE(s->auth.tokens[0].allow_critical);
}

TEST(SecurityConfigTest, TokenFileIsHashedWithoutItsNewline) {
  const std::string path = TempFile("security_token", "secret-token\n");
  absl::StatusOr<ServerSettings> s = Resolve(absl::StrCat(
      "auth { tokens { token_file: \"", path, "\" tenant: \"a\" } }"));
  std::remove(path.c_str());
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->auth.tokens.size(), 1u);
  EXPECT_EQ(s->auth.tokens[0].token_sha256, Sha256("secret-token"));
}

TEST(SecurityConfigTest, TokenErrorsNameTheField) {
  EXPECT_THAT(Message("auth { tokens { tenant: \"a\" } }"),
              HasSubstr("auth.tokens[0]: set token_sha256 or token_file"));
  EXPECT_THAT(
      Message(absl::StrCat("auth { tokens { token_sha256: \"", kSecretDigest,
                           "\" token_file: \"/t\" tenant: \"a\" } }")),
      HasSubstr("exactly one"));
  EXPECT_THAT(
      Message("auth { tokens { token_sha256: \"abc\" tenant: \"a\" } }"),
      HasSubstr("auth.tokens[0].token_sha256"));
  EXPECT_THAT(Message(absl::StrCat("auth { tokens { token_sha256: \"",
                                   kSecretDigest, "\" } }")),
              HasSubstr("auth.tokens[0].tenant"));
  EXPECT_THAT(Message("auth { tokens { token_file: \"/nonexistent/token\" "
                      "tenant: \"a\" } }"),
              HasSubstr("auth.tokens[0].token_file"));
}

TEST(SecurityConfigTest, CertificateIdentitiesNeedMutualTls) {
  EXPECT_THAT(
      Message("auth { certificates { name: \"client\" tenant: \"a\" } }"),
      HasSubstr("tls.client_ca_file"));
  absl::StatusOr<ServerSettings> s = Resolve(
      "grpc_address: \"127.0.0.1:1\" tls { cert_file: \"/c\" "
      "key_file: \"/k\" client_ca_file: \"/ca\" } "
      "auth { certificates { name: \"client\" tenant: \"a\" } }");
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->auth.certificates.size(), 1u);
  EXPECT_EQ(s->auth.certificates[0].name, "client");
}

TEST(SecurityConfigTest, Limits) {
  absl::StatusOr<ServerSettings> s =
      Resolve("limits { max_message_bytes: 65536 max_sequences: 16 }");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->max_message_bytes, 65536u);
  EXPECT_EQ(s->max_sequences, 16u);
  EXPECT_THAT(Message("limits { max_message_bytes: 100 }"),
              HasSubstr("limits.max_message_bytes"));
  EXPECT_THAT(Message("limits { max_message_bytes: 1000000000 }"),
              HasSubstr("limits.max_message_bytes"));
  EXPECT_THAT(Message("limits { max_sequences: 2000000 }"),
              HasSubstr("limits.max_sequences"));
}

}  // namespace
}  // namespace kvgate
