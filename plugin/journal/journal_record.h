// The record codec of the lease journal: one JournalRecord to and from its
// on-disk bytes. Pure: no I/O, no clock, no logging. The journal file, its
// replay and its compaction are LeaseJournal's (lease_journal.h, which also
// describes when each record is written); this is only the byte format.
//
// A record is one line:
//   <crc32 of payload, 8 lower-case hex digits> TAB <payload> LF
// The payload's fields are separated by TAB; strings are C-escaped
// (absl::CEscape), so no field holds a raw TAB or LF; times are Unix
// microseconds of wall time, as a signed decimal; byte counts are unsigned
// decimals:
//   V 1                                                  format version
//   G <model> <lease_id> <request_id> <kv_bytes> <activation_bytes> <expires>
//   N <model> <lease_id> <expires>                       renewed
//   R <model> <lease_id>                                 released
//   E <model> <lease_id>                                 expired
// The CRC is CRC-32 (IEEE 802.3, the polynomial of zlib and PNG) of the
// payload bytes. For example, the grant of lease "L-1" (request "r1", 100 KV
// bytes, 5 activation bytes, expiring at Unix time 1700000000 s) of model
// "m" is these 43 bytes:
//   e17e52ee TAB G TAB m TAB L-1 TAB r1 TAB 100 TAB 5 TAB 1700000000000000 LF
#ifndef KVGATE_PLUGIN_JOURNAL_JOURNAL_RECORD_H_
#define KVGATE_PLUGIN_JOURNAL_JOURNAL_RECORD_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "plugin/admission/controller.h"

namespace kvgate {

// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320) of `data`.
uint32_t Crc32(absl::string_view data);

// The journal format version this code writes and reads.
inline constexpr int kJournalFormatVersion = 1;

// The kinds of record; the value is the payload's first field.
enum class JournalRecordKind : char {
  kVersion = 'V',  // first record of every journal
  kGrant = 'G',    // a lease was granted: every field of `lease`
  kRenewal = 'N',  // its expiry moved: lease.lease_id, lease.expires_at
  kRelease = 'R',  // it was released: lease.lease_id
  kExpiry = 'E',   // it expired: lease.lease_id
};

// One decoded record of the lease journal. Which fields a kind carries is
// listed at JournalRecordKind; the others are ignored by the encoder and left
// at their defaults by the decoder, so a decoded record compares equal to
// the decoding of its own encoding. A version record carries no field (the
// decoder accepts only kJournalFormatVersion).
struct JournalRecord {
  JournalRecordKind kind = JournalRecordKind::kVersion;
  std::string model;  // every kind but kVersion
  LeaseRecord lease;  // expires_at is wall time

  static JournalRecord Version();
  static JournalRecord Grant(std::string model, LeaseRecord lease);
  static JournalRecord Renewal(std::string model, std::string lease_id,
                               absl::Time expires_at);
  static JournalRecord End(std::string model, std::string lease_id,
                           LeaseEnd end);
};

// Field-by-field equality (every field, whatever the kind).
bool operator==(const JournalRecord& a, const JournalRecord& b);
inline bool operator!=(const JournalRecord& a, const JournalRecord& b) {
  return !(a == b);
}

// The on-disk bytes of `record`: one line, its LF included. A time that
// Unix microseconds cannot hold (absl::InfiniteFuture) is written saturated.
std::string EncodeJournalRecord(const JournalRecord& record);

// The same bytes straight from a controller's arguments, without building a
// JournalRecord (the journal's append path).
std::string EncodeGrantRecord(absl::string_view model,
                              const LeaseRecord& lease);
std::string EncodeRenewalRecord(absl::string_view model,
                                absl::string_view lease_id,
                                absl::Time expires_at);
std::string EncodeEndRecord(absl::string_view model, absl::string_view lease_id,
                            LeaseEnd end);

// Decodes exactly one record: `bytes` must be one line ending in its LF
// (the only LF in it). Errors name what is wrong:
//   DataLoss            the bytes are not a sound record: no LF at the end
//                       (a torn write), an LF inside, no CRC field, a CRC
//                       mismatch, an unknown kind, a wrong field count, or a
//                       field that does not parse (named);
//   FailedPrecondition  a sound version record of a version other than
//                       kJournalFormatVersion (a journal of another release,
//                       not damage).
absl::StatusOr<JournalRecord> DecodeJournalRecord(absl::string_view bytes);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_JOURNAL_JOURNAL_RECORD_H_
