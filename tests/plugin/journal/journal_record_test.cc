// The lease journal's record codec: exact bytes, round trips of every kind,
// and a precise error for every way a record can be malformed.
#include "plugin/journal/journal_record.h"

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "plugin/admission/controller.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;

const absl::Time kExpires = absl::FromUnixSeconds(1700000000);

// `payload` framed as a record with its correct CRC.
std::string Framed(const std::string& payload) {
  return absl::StrFormat("%08x\t%s\n", Crc32(payload), payload);
}

JournalRecord SampleGrant() {
  return JournalRecord::Grant("m",
                              LeaseRecord{"L-1", "r1", {100, 5}, kExpires});
}

// Decoding `bytes` fails with `code` and a message containing `what`.
void ExpectError(const std::string& bytes, absl::StatusCode code,
                 const std::string& what) {
  absl::StatusOr<JournalRecord> r = DecodeJournalRecord(bytes);
  ASSERT_FALSE(r.ok()) << "decoded: " << bytes;
  EXPECT_EQ(r.status().code(), code) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr(what));
}

void ExpectDataLoss(const std::string& bytes, const std::string& what) {
  ExpectError(bytes, absl::StatusCode::kDataLoss, what);
}

void ExpectRoundTrip(const JournalRecord& record) {
  const std::string bytes = EncodeJournalRecord(record);
  absl::StatusOr<JournalRecord> decoded = DecodeJournalRecord(bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status() << " for " << bytes;
  EXPECT_TRUE(*decoded == record) << bytes;
  EXPECT_EQ(EncodeJournalRecord(*decoded), bytes);
}

TEST(Crc32Test, MatchesTheStandardCheckValue) {
  // The CRC-32/ISO-HDLC check value of "123456789" (as zlib's crc32 gives).
  EXPECT_EQ(Crc32("123456789"), 0xCBF43926u);
  EXPECT_EQ(Crc32(""), 0u);
}

// The on-disk format: these bytes are what every earlier kvgated wrote, so
// they must never change (existing journals must replay).
TEST(JournalRecordTest, ExactBytesOfEachKind) {
  EXPECT_EQ(EncodeJournalRecord(JournalRecord::Version()), "176c3063\tV\t1\n");
  EXPECT_EQ(EncodeJournalRecord(SampleGrant()),
            "e17e52ee\tG\tm\tL-1\tr1\t100\t5\t1700000000000000\n");
  EXPECT_EQ(EncodeJournalRecord(JournalRecord::Renewal(
                "m", "L-1", kExpires + absl::Minutes(1))),
            "c109075a\tN\tm\tL-1\t1700000060000000\n");
  EXPECT_EQ(
      EncodeJournalRecord(JournalRecord::End("m", "L-1", LeaseEnd::kReleased)),
      "1af7a42f\tR\tm\tL-1\n");
  EXPECT_EQ(
      EncodeJournalRecord(JournalRecord::End("m", "L-1", LeaseEnd::kExpired)),
      "b88e066f\tE\tm\tL-1\n");
}

TEST(JournalRecordTest, ExactBytesOfEscapedStrings) {
  // A record of an earlier kvgated with every kind of byte to escape.
  const std::string model("we\tird\n\"m\\o\x01\xff\0d\0", 16);
  const std::string bytes =
      "dad8be1f\tN\twe\\tird\\n\\\"m\\\\o\\001\\377\\000d\\000\tunknown\t-5\n";
  EXPECT_EQ(EncodeRenewalRecord(model, "unknown", absl::FromUnixMicros(-5)),
            bytes);
  absl::StatusOr<JournalRecord> decoded = DecodeJournalRecord(bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->model, model);
}

TEST(JournalRecordTest, DirectEncodersMatchTheRecordEncoder) {
  const JournalRecord grant = SampleGrant();
  EXPECT_EQ(EncodeGrantRecord(grant.model, grant.lease),
            EncodeJournalRecord(grant));
  EXPECT_EQ(EncodeRenewalRecord("m", "L-1", kExpires),
            EncodeJournalRecord(JournalRecord::Renewal("m", "L-1", kExpires)));
  EXPECT_EQ(
      EncodeEndRecord("m", "L-1", LeaseEnd::kExpired),
      EncodeJournalRecord(JournalRecord::End("m", "L-1", LeaseEnd::kExpired)));
}

TEST(JournalRecordTest, EveryKindRoundTrips) {
  ExpectRoundTrip(JournalRecord::Version());
  ExpectRoundTrip(SampleGrant());
  ExpectRoundTrip(JournalRecord::Renewal("m", "L-1", kExpires));
  ExpectRoundTrip(JournalRecord::End("m", "L-1", LeaseEnd::kReleased));
  ExpectRoundTrip(JournalRecord::End("m", "L-1", LeaseEnd::kExpired));
}

TEST(JournalRecordTest, ExtremeFieldsRoundTrip) {
  const std::string odd("tab\tlf\nquote\"back\\nul\0hi\xff\x7f", 26);
  ExpectRoundTrip(
      JournalRecord::Grant(odd, LeaseRecord{odd,
                                            odd,
                                            {UINT64_MAX, UINT64_MAX},
                                            absl::FromUnixMicros(INT64_MAX)}));
  ExpectRoundTrip(JournalRecord::Grant(
      "", LeaseRecord{"", "", {0, 0}, absl::FromUnixMicros(INT64_MIN)}));
  ExpectRoundTrip(JournalRecord::Renewal(odd, odd, absl::FromUnixMicros(-1)));
  ExpectRoundTrip(JournalRecord::End(odd, "", LeaseEnd::kReleased));
}

TEST(JournalRecordTest, DecodedFieldsAreThoseOfTheKind) {
  absl::StatusOr<JournalRecord> r =
      DecodeJournalRecord(Framed("N\tm\tL-1\t1700000060000000"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kind, JournalRecordKind::kRenewal);
  EXPECT_EQ(r->model, "m");
  EXPECT_EQ(r->lease.lease_id, "L-1");
  EXPECT_EQ(r->lease.expires_at, kExpires + absl::Minutes(1));
  EXPECT_EQ(r->lease.request_id, "");
  EXPECT_EQ(r->lease.cost.kv_bytes, 0u);

  r = DecodeJournalRecord(Framed("E\tm\tL-1"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kind, JournalRecordKind::kExpiry);
  EXPECT_EQ(r->lease.expires_at, absl::Time());
}

TEST(JournalRecordTest, TornRecordIsIncomplete) {
  const std::string whole = EncodeJournalRecord(SampleGrant());
  ExpectDataLoss("", "incomplete record");
  ExpectDataLoss(whole.substr(0, whole.size() - 1), "no newline at its end");
  ExpectDataLoss(whole.substr(0, 5), "incomplete record");
}

TEST(JournalRecordTest, NewlineInsideIsRejected) {
  ExpectDataLoss("176c3063\tV\t1\n176c3063\tV\t1\n", "newline inside");
}

TEST(JournalRecordTest, MissingOrMalformedCrcField) {
  ExpectDataLoss("\n", "no CRC field");
  ExpectDataLoss("176c3063\n", "no CRC field");
  ExpectDataLoss("176c306\tV\t1\n", "no CRC field");
  ExpectDataLoss("176c30630\tV\t1\n", "no CRC field");
  ExpectDataLoss("176c306g\tV\t1\n", "no CRC field");
  ExpectDataLoss("0x6c3063\tV\t1\n", "no CRC field");
  ExpectDataLoss(" 76c3063\tV\t1\n", "no CRC field");
}

TEST(JournalRecordTest, CrcMismatchNamesBothValues) {
  std::string bytes = EncodeJournalRecord(SampleGrant());
  bytes[bytes.find("100")] = '9';  // the payload no longer matches
  ExpectDataLoss(bytes,
                 "CRC mismatch: the record says e17e52ee, its payload has");
}

TEST(JournalRecordTest, UnknownKindIsNamed) {
  ExpectDataLoss(Framed("X\tm\tL-1"), "unknown record kind \"X\"");
  ExpectDataLoss(Framed("GG\tm\tL-1"), "unknown record kind \"GG\"");
  ExpectDataLoss(Framed(""), "unknown record kind \"\"");
  ExpectDataLoss(Framed("g\tm\tL-1"), "unknown record kind \"g\"");
}

TEST(JournalRecordTest, WrongFieldCountNamesTheKindAndCounts) {
  ExpectDataLoss(Framed("G\tm\tL-1\tr1\t100\t5"),
                 "grant record has 6 fields, expected 7");
  ExpectDataLoss(Framed("G\tm\tL-1\tr1\t100\t5\t1\t"),
                 "grant record has 8 fields, expected 7");
  ExpectDataLoss(Framed("N\tm\tL-1"),
                 "renewal record has 3 fields, expected 4");
  ExpectDataLoss(Framed("R\tm"), "release record has 2 fields, expected 3");
  ExpectDataLoss(Framed("E\tm\tL-1\tx"),
                 "expiry record has 4 fields, expected 3");
  ExpectDataLoss(Framed("V"), "version record has 1 fields, expected 2");
}

TEST(JournalRecordTest, BadStringFieldIsNamed) {
  ExpectDataLoss(Framed("G\tm\\q\tL-1\tr1\t1\t0\t0"),
                 "grant record: field model is not a valid C-escaped string");
  ExpectDataLoss(Framed("R\tm\tL\\"),
                 "release record: field lease_id is not a valid C-escaped");
  ExpectDataLoss(Framed("G\tm\tL-1\tr\\x\t1\t0\t0"),
                 "grant record: field request_id is not a valid C-escaped");
}

TEST(JournalRecordTest, BadNumberFieldIsNamed) {
  ExpectDataLoss(Framed("G\tm\tL-1\tr1\tlots\t0\t0"),
                 "grant record: field kv_bytes is not an unsigned 64-bit "
                 "integer: \"lots\"");
  ExpectDataLoss(Framed("G\tm\tL-1\tr1\t-1\t0\t0"), "field kv_bytes");
  ExpectDataLoss(Framed("G\tm\tL-1\tr1\t1\t18446744073709551616\t0"),
                 "field activation_bytes is not an unsigned 64-bit integer");
  ExpectDataLoss(Framed("G\tm\tL-1\tr1\t1\t0\t"),
                 "grant record: field expires is not a signed 64-bit count "
                 "of Unix microseconds: \"\"");
  ExpectDataLoss(Framed("N\tm\tL-1\tsoon"), "renewal record: field expires");
  ExpectDataLoss(Framed("N\tm\tL-1\t9223372036854775808"), "field expires");
}

TEST(JournalRecordTest, LongBadFieldIsQuotedShort) {
  const std::string long_field(1000, '7');
  absl::StatusOr<JournalRecord> r = DecodeJournalRecord(
      Framed(absl::StrCat("G\tm\tL-1\tr1\t", long_field, "\t0\t0")));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("\"..."));
  EXPECT_LT(r.status().message().size(), 200u);
}

TEST(JournalRecordTest, OtherVersionIsAPreconditionNotDamage) {
  ExpectError(Framed("V\t7"), absl::StatusCode::kFailedPrecondition,
              "journal format version 7 is not 1");
  ExpectError(Framed("V\t01"), absl::StatusCode::kFailedPrecondition,
              "version 01 is not 1");
  // A damaged version record is damage.
  ExpectDataLoss("00000000\tV\t7\n", "CRC mismatch");
}

}  // namespace
}  // namespace kvgate
