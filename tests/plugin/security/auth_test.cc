// Authenticator: bearer tokens (kept as SHA-256 digests), client certificate
// names, and the rules that pick a caller's identity.
#include "plugin/security/auth.h"

#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/support/string_ref.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kTokenA[] = "token-for-tenant-a-3f9c";
constexpr char kTokenB[] = "token-for-tenant-b-71e2";

std::unique_ptr<Authenticator> MakeAuthenticator() {
  Authenticator::Options options;
  options.tokens.push_back({Sha256(kTokenA), "tenant-a", true});
  options.tokens.push_back({Sha256(kTokenB), "tenant-b", false});
  options.certificates.push_back({"router.example", "tenant-r", true});
  options.certificates.push_back({"batch-client", "tenant-batch", false});
  absl::StatusOr<std::unique_ptr<Authenticator>> auth =
      Authenticator::Create(options);
  EXPECT_TRUE(auth.ok()) << auth.status();
  return auth.ok() ? *std::move(auth) : nullptr;
}

CallerCredentials Bearer(const std::string& value) {
  CallerCredentials c;
  c.authorization.push_back(value);
  return c;
}

CallerCredentials Certificate(std::vector<std::string> names) {
  CallerCredentials c;
  c.certificate_names = std::move(names);
  return c;
}

TEST(Sha256Test, MatchesTheFipsVector) {
  // FIPS 180-2, appendix B.1: SHA-256("abc").
  absl::StatusOr<Sha256Digest> expected = ParseSha256Hex(
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(Sha256("abc"), *expected);
}

TEST(Sha256Test, ParsesUpperCaseHex) {
  EXPECT_EQ(*ParseSha256Hex("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB"
                            "410FF61F20015AD"),
            Sha256("abc"));
}

TEST(Sha256Test, RejectsWrongLengthAndNonHex) {
  EXPECT_EQ(ParseSha256Hex("abc").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseSha256Hex(std::string(64, 'g')).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AuthenticatorCreateTest, NeedsAnIdentity) {
  EXPECT_EQ(Authenticator::Create({}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AuthenticatorCreateTest, NeedsTenants) {
  Authenticator::Options tokens;
  tokens.tokens.push_back({Sha256("t"), "", false});
  EXPECT_THAT(Authenticator::Create(tokens).status().message(),
              HasSubstr("auth.tokens[0].tenant"));
  Authenticator::Options certs;
  certs.certificates.push_back({"name", "", false});
  EXPECT_THAT(Authenticator::Create(certs).status().message(),
              HasSubstr("auth.certificates[0].tenant"));
}

TEST(AuthenticatorCreateTest, RejectsDuplicates) {
  Authenticator::Options tokens;
  tokens.tokens.push_back({Sha256("t"), "a", false});
  tokens.tokens.push_back({Sha256("t"), "b", false});
  EXPECT_EQ(Authenticator::Create(tokens).status().code(),
            absl::StatusCode::kInvalidArgument);
  Authenticator::Options certs;
  certs.certificates.push_back({"n", "a", false});
  certs.certificates.push_back({"n", "b", false});
  EXPECT_EQ(Authenticator::Create(certs).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AuthenticatorTest, ValidTokenGivesItsTenantAndCriticalRight) {
  auto auth = MakeAuthenticator();
  absl::StatusOr<CallerIdentity> a =
      auth->Authenticate(Bearer(absl::StrCat("Bearer ", kTokenA)));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->tenant, "tenant-a");
  EXPECT_TRUE(a->allow_critical);
  EXPECT_EQ(a->principal, "token:tenant-a");
  absl::StatusOr<CallerIdentity> b =
      auth->Authenticate(Bearer(absl::StrCat("Bearer ", kTokenB)));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->tenant, "tenant-b");
  EXPECT_FALSE(b->allow_critical);
}

TEST(AuthenticatorTest, BearerSchemeIsCaseInsensitive) {
  auto auth = MakeAuthenticator();
  EXPECT_TRUE(auth->AuthenticateBearer(absl::StrCat("bearer ", kTokenA)).ok());
  EXPECT_TRUE(auth->AuthenticateBearer(absl::StrCat("BEARER  ", kTokenA)).ok());
}

TEST(AuthenticatorTest, WrongTokenIsUnauthenticatedAndNotEchoed) {
  auto auth = MakeAuthenticator();
  const std::string wrong = "Bearer not-a-configured-token-5521";
  absl::StatusOr<CallerIdentity> r = auth->Authenticate(Bearer(wrong));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(r.status().message(),
              Not(HasSubstr("not-a-configured-token-5521")));
}

TEST(AuthenticatorTest, TokenPrefixOrExtensionDoesNotMatch) {
  auto auth = MakeAuthenticator();
  const std::string token = kTokenA;
  EXPECT_FALSE(
      auth->AuthenticateBearer("Bearer " + token.substr(0, token.size() - 1))
          .ok());
  EXPECT_FALSE(auth->AuthenticateBearer("Bearer " + token + "x").ok());
}

TEST(AuthenticatorTest, OtherSchemesAndEmptyTokensAreRejected) {
  auto auth = MakeAuthenticator();
  EXPECT_EQ(auth->AuthenticateBearer(kTokenA).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth->AuthenticateBearer("Basic dXNlcjpwYXNz").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth->AuthenticateBearer("Bearer ").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth->AuthenticateBearer("").status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(AuthenticatorTest, TwoAuthorizationValuesAreRejected) {
  auto auth = MakeAuthenticator();
  CallerCredentials c = Bearer(absl::StrCat("Bearer ", kTokenB));
  c.authorization.push_back(absl::StrCat("Bearer ", kTokenA));
  EXPECT_EQ(auth->Authenticate(c).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(AuthenticatorTest, NoCredentialsIsUnauthenticated) {
  auto auth = MakeAuthenticator();
  absl::StatusOr<CallerIdentity> r = auth->Authenticate(CallerCredentials{});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(r.status().message(), HasSubstr("Bearer"));
}

TEST(AuthenticatorTest, CertificateMatchedByAnyOfItsNames) {
  auto auth = MakeAuthenticator();
  absl::StatusOr<CallerIdentity> r =
      auth->Authenticate(Certificate({"some-cn", "router.example"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tenant, "tenant-r");
  EXPECT_TRUE(r->allow_critical);
  EXPECT_EQ(r->principal, "certificate:router.example");
  absl::StatusOr<CallerIdentity> batch =
      auth->Authenticate(Certificate({"batch-client"}));
  ASSERT_TRUE(batch.ok());
  EXPECT_FALSE(batch->allow_critical);
}

TEST(AuthenticatorTest, UnknownCertificateIsUnauthenticated) {
  auto auth = MakeAuthenticator();
  absl::StatusOr<CallerIdentity> r =
      auth->Authenticate(Certificate({"stranger"}));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(r.status().message(), HasSubstr("stranger"));
}

TEST(AuthenticatorTest, BadTokenIsNotExcusedByAGoodCertificate) {
  auto auth = MakeAuthenticator();
  CallerCredentials c = Certificate({"router.example"});
  c.authorization.push_back("Bearer wrong");
  EXPECT_EQ(auth->Authenticate(c).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(AuthenticatorTest, TokenWinsOverCertificate) {
  auto auth = MakeAuthenticator();
  CallerCredentials c = Certificate({"router.example"});
  c.authorization.push_back(absl::StrCat("Bearer ", kTokenB));
  absl::StatusOr<CallerIdentity> r = auth->Authenticate(c);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tenant, "tenant-b");
}

TEST(AuthenticatorTest, ReadsGrpcMetadataWithoutAnAuthContext) {
  auto auth = MakeAuthenticator();
  const std::string key = "authorization";
  const std::string value = absl::StrCat("Bearer ", kTokenA);
  const std::string other_key = "x-kvgate-tenant";
  const std::string other_value = "tenant-b";
  std::multimap<grpc::string_ref, grpc::string_ref> metadata = {
      {grpc::string_ref(other_key), grpc::string_ref(other_value)},
      {grpc::string_ref(key), grpc::string_ref(value)}};
  absl::StatusOr<CallerIdentity> r = auth->Authenticate(nullptr, metadata);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tenant, "tenant-a");

  std::multimap<grpc::string_ref, grpc::string_ref> none = {
      {grpc::string_ref(other_key), grpc::string_ref(other_value)}};
  EXPECT_EQ(auth->Authenticate(nullptr, none).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(AuthenticatorTest, NoCertificateNamesWithoutAnAuthContext) {
  EXPECT_TRUE(VerifiedCertificateNames(nullptr).empty());
}

}  // namespace
}  // namespace kvgate
