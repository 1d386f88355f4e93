// libFuzzer target: the lease journal's record codec (journal_record.h).
//
// Bytes -> DecodeJournalRecord, twice: once as they are (the CRC, framing
// and torn-write checks), and once re-framed with the correct CRC of the
// bytes before the first LF (so that the fuzzer reaches the field parsing
// without having to guess a CRC). Decoding must never crash; whenever it
// succeeds, the record's encoding must decode to an equal record and
// re-encode to the same bytes, and decoding errors must be DataLoss or (for
// a version record of another version) FailedPrecondition.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "plugin/journal/journal_record.h"

namespace kvgate {
namespace {

void Fail(const char* what, absl::string_view bytes) {
  std::fprintf(stderr, "fuzz_journal_record: %s; input \"%s\"\n", what,
               absl::CEscape(bytes).c_str());
  std::abort();
}

void CheckBytes(absl::string_view bytes) {
  absl::StatusOr<JournalRecord> decoded = DecodeJournalRecord(bytes);
  if (!decoded.ok()) {
    const absl::StatusCode code = decoded.status().code();
    if (code != absl::StatusCode::kDataLoss &&
        code != absl::StatusCode::kFailedPrecondition) {
      Fail("decoding failed with an unexpected code", bytes);
    }
    if (decoded.status().message().empty())
      Fail("error without a reason", bytes);
    return;
  }
  const std::string encoded = EncodeJournalRecord(*decoded);
  absl::StatusOr<JournalRecord> again = DecodeJournalRecord(encoded);
  if (!again.ok())
    Fail("the encoding of a decoded record does not decode", bytes);
  if (*again != *decoded) Fail("round trip changed the record", bytes);
  if (EncodeJournalRecord(*again) != encoded) {
    Fail("encoding is not stable", bytes);
  }
}

}  // namespace
}  // namespace kvgate

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  kvgate::CheckBytes(bytes);
  // The same payload behind a correct CRC: the part after "<crc>\t" when the
  // input has that shape, else the whole input, up to its first LF.
  absl::string_view payload = bytes;
  if (payload.size() > 8 && payload[8] == '\t') payload.remove_prefix(9);
  payload = payload.substr(0, payload.find('\n'));
  kvgate::CheckBytes(
      absl::StrFormat("%08x\t%s\n", kvgate::Crc32(payload), payload));
  return 0;
}
