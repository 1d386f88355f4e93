#include "plugin/journal/journal_record.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace kvgate {
namespace {

constexpr std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrcTable = MakeCrcTable();

constexpr size_t kCrcDigits = 8;
// At most this much of a bad field is quoted in an error.
constexpr size_t kQuoteLimit = 32;

// One line: crc, TAB, payload, LF.
std::string Frame(absl::string_view payload) {
  return absl::StrFormat("%08x\t%s\n", Crc32(payload), payload);
}

// `text`, C-escaped and cut to kQuoteLimit bytes, in double quotes.
std::string Quote(absl::string_view text) {
  const bool cut = text.size() > kQuoteLimit;
  return absl::StrCat("\"", absl::CEscape(text.substr(0, kQuoteLimit)),
                      cut ? "\"..." : "\"");
}

// A record kind's name, fields and payload tag.
struct KindInfo {
  JournalRecordKind kind;
  const char* name;
  size_t fields;  // the tag included
};
constexpr KindInfo kKinds[] = {
    {JournalRecordKind::kVersion, "version", 2},
    {JournalRecordKind::kGrant, "grant", 7},
    {JournalRecordKind::kRenewal, "renewal", 4},
    {JournalRecordKind::kRelease, "release", 3},
    {JournalRecordKind::kExpiry, "expiry", 3},
};

const KindInfo* FindKind(absl::string_view tag) {
  if (tag.size() != 1) return nullptr;
  for (const KindInfo& info : kKinds) {
    if (static_cast<char>(info.kind) == tag[0]) return &info;
  }
  return nullptr;
}

// Parses the fields of one record kind, each error naming the kind and field.
class FieldParser {
 public:
  explicit FieldParser(const KindInfo& info) : info_(info) {}

  absl::StatusOr<std::string> String(const char* name,
                                     absl::string_view text) const {
    std::string value;
    std::string why;
    if (!absl::CUnescape(text, &value, &why)) {
      return Error(name, absl::StrCat("is not a valid C-escaped string (", why,
                                      "): ", Quote(text)));
    }
    return value;
  }

  absl::StatusOr<uint64_t> Bytes(const char* name,
                                 absl::string_view text) const {
    uint64_t value = 0;
    if (!absl::SimpleAtoi(text, &value)) {
      return Error(name, absl::StrCat("is not an unsigned 64-bit integer: ",
                                      Quote(text)));
    }
    return value;
  }

  absl::StatusOr<absl::Time> Time(const char* name,
                                  absl::string_view text) const {
    int64_t micros = 0;
    if (!absl::SimpleAtoi(text, &micros)) {
      return Error(name, absl::StrCat("is not a signed 64-bit count of Unix "
                                      "microseconds: ",
                                      Quote(text)));
    }
    return absl::FromUnixMicros(micros);
  }

 private:
  absl::Status Error(const char* name, absl::string_view what) const {
    return absl::DataLossError(
        absl::StrCat(info_.name, " record: field ", name, " ", what));
  }

  const KindInfo& info_;
};

// The payload's fields (tag first, count already checked) into a record.
absl::StatusOr<JournalRecord> DecodeFields(
    const KindInfo& info, const std::vector<absl::string_view>& f) {
  JournalRecord r;
  r.kind = info.kind;
  if (r.kind == JournalRecordKind::kVersion) {
    if (f[1] != absl::StrCat(kJournalFormatVersion)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "journal format version ", absl::CEscape(f[1].substr(0, kQuoteLimit)),
          " is not ", kJournalFormatVersion));
    }
    return r;
  }
  const FieldParser parse(info);
  absl::StatusOr<std::string> model = parse.String("model", f[1]);
  if (!model.ok()) return model.status();
  r.model = *std::move(model);
  absl::StatusOr<std::string> id = parse.String("lease_id", f[2]);
  if (!id.ok()) return id.status();
  r.lease.lease_id = *std::move(id);
  if (r.kind == JournalRecordKind::kGrant) {
    absl::StatusOr<std::string> request = parse.String("request_id", f[3]);
    if (!request.ok()) return request.status();
    r.lease.request_id = *std::move(request);
    absl::StatusOr<uint64_t> kv = parse.Bytes("kv_bytes", f[4]);
    if (!kv.ok()) return kv.status();
    r.lease.cost.kv_bytes = *kv;
    absl::StatusOr<uint64_t> activation = parse.Bytes("activation_bytes", f[5]);
    if (!activation.ok()) return activation.status();
    r.lease.cost.activation_bytes = *activation;
  }
  if (r.kind == JournalRecordKind::kGrant ||
      r.kind == JournalRecordKind::kRenewal) {
    absl::StatusOr<absl::Time> expires = parse.Time("expires", f.back());
    if (!expires.ok()) return expires.status();
    r.lease.expires_at = *expires;
  }
  return r;
}

}  // namespace

uint32_t Crc32(absl::string_view data) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char byte : data) c = kCrcTable[(c ^ byte) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

JournalRecord JournalRecord::Version() { return JournalRecord(); }

JournalRecord JournalRecord::Grant(std::string model, LeaseRecord lease) {
  JournalRecord r;
  r.kind = JournalRecordKind::kGrant;
  r.model = std::move(model);
  r.lease = std::move(lease);
  return r;
}

JournalRecord JournalRecord::Renewal(std::string model, std::string lease_id,
                                     absl::Time expires_at) {
  JournalRecord r;
  r.kind = JournalRecordKind::kRenewal;
  r.model = std::move(model);
  r.lease.lease_id = std::move(lease_id);
  r.lease.expires_at = expires_at;
  return r;
}

JournalRecord JournalRecord::End(std::string model, std::string lease_id,
                                 LeaseEnd end) {
  JournalRecord r;
  r.kind = end == LeaseEnd::kReleased ? JournalRecordKind::kRelease
                                      : JournalRecordKind::kExpiry;
  r.model = std::move(model);
  r.lease.lease_id = std::move(lease_id);
  return r;
}

bool operator==(const JournalRecord& a, const JournalRecord& b) {
  return a.kind == b.kind && a.model == b.model &&
         a.lease.lease_id == b.lease.lease_id &&
         a.lease.request_id == b.lease.request_id &&
         a.lease.cost.kv_bytes == b.lease.cost.kv_bytes &&
         a.lease.cost.activation_bytes == b.lease.cost.activation_bytes &&
         a.lease.expires_at == b.lease.expires_at;
}

std::string EncodeGrantRecord(absl::string_view model,
                              const LeaseRecord& lease) {
  return Frame(absl::StrCat(
      "G\t", absl::CEscape(model), "\t", absl::CEscape(lease.lease_id), "\t",
      absl::CEscape(lease.request_id), "\t", lease.cost.kv_bytes, "\t",
      lease.cost.activation_bytes, "\t", absl::ToUnixMicros(lease.expires_at)));
}

std::string EncodeRenewalRecord(absl::string_view model,
                                absl::string_view lease_id,
                                absl::Time expires_at) {
  return Frame(absl::StrCat("N\t", absl::CEscape(model), "\t",
                            absl::CEscape(lease_id), "\t",
                            absl::ToUnixMicros(expires_at)));
}

std::string EncodeEndRecord(absl::string_view model, absl::string_view lease_id,
                            LeaseEnd end) {
  return Frame(absl::StrCat(end == LeaseEnd::kReleased ? "R\t" : "E\t",
                            absl::CEscape(model), "\t",
                            absl::CEscape(lease_id)));
}

std::string EncodeJournalRecord(const JournalRecord& record) {
  switch (record.kind) {
    case JournalRecordKind::kGrant:
      return EncodeGrantRecord(record.model, record.lease);
    case JournalRecordKind::kRenewal:
      return EncodeRenewalRecord(record.model, record.lease.lease_id,
                                 record.lease.expires_at);
    case JournalRecordKind::kRelease:
      return EncodeEndRecord(record.model, record.lease.lease_id,
                             LeaseEnd::kReleased);
    case JournalRecordKind::kExpiry:
      return EncodeEndRecord(record.model, record.lease.lease_id,
                             LeaseEnd::kExpired);
    case JournalRecordKind::kVersion:
      break;
  }
  return Frame(absl::StrCat("V\t", kJournalFormatVersion));
}

absl::StatusOr<JournalRecord> DecodeJournalRecord(absl::string_view bytes) {
  if (bytes.empty() || bytes.back() != '\n') {
    return absl::DataLossError(
        "incomplete record: no newline at its end (a torn write)");
  }
  const absl::string_view line = bytes.substr(0, bytes.size() - 1);
  if (const size_t lf = line.find('\n'); lf != absl::string_view::npos) {
    return absl::DataLossError(
        absl::StrCat("newline inside the record, at byte ", lf));
  }
  uint32_t crc = 0;
  if (line.size() <= kCrcDigits || line[kCrcDigits] != '\t' ||
      !std::all_of(line.begin(), line.begin() + kCrcDigits,
                   [](char c) { return absl::ascii_isxdigit(c); }) ||
      !absl::SimpleHexAtoi(line.substr(0, kCrcDigits), &crc)) {
    return absl::DataLossError(absl::StrCat(
        "no CRC field (8 hex digits and a TAB): ", Quote(line.substr(0, 9))));
  }
  const absl::string_view payload = line.substr(kCrcDigits + 1);
  if (const uint32_t actual = Crc32(payload); actual != crc) {
    return absl::DataLossError(
        absl::StrFormat("CRC mismatch: the record says %08x, its payload "
                        "has %08x",
                        crc, actual));
  }
  const std::vector<absl::string_view> f = absl::StrSplit(payload, '\t');
  const KindInfo* info = FindKind(f[0]);
  if (info == nullptr) {
    return absl::DataLossError(
        absl::StrCat("unknown record kind ", Quote(f[0])));
  }
  if (f.size() != info->fields) {
    return absl::DataLossError(absl::StrCat(info->name, " record has ",
                                            f.size(), " fields, expected ",
                                            info->fields));
  }
  return DecodeFields(*info, f);
}

}  // namespace kvgate
