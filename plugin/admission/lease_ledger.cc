#include "plugin/admission/lease_ledger.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvgate {

using admission_internal::CheckedAdd;

namespace {
constexpr size_t kPrefixLength = 16;  // hex digits
}  // namespace

LeaseLedger::LeaseLedger(const Options& options, uint64_t lease_prefix)
    : options_(options), prefix_text_(absl::StrFormat("%016x", lease_prefix)) {}

std::string LeaseLedger::LeaseIdFor(uint64_t seq) const {
  return absl::StrCat(prefix_text_, "-", seq);
}

std::string LeaseLedger::LeaseId(const Lease& lease) const {
  return lease.restored_id.empty() ? LeaseIdFor(lease.seq) : lease.restored_id;
}

absl::StatusOr<uint64_t> LeaseLedger::ParseLeaseId(
    absl::string_view lease_id) const {
  uint64_t seq = 0;
  if (lease_id.size() > kPrefixLength + 1 && lease_id[kPrefixLength] == '-' &&
      lease_id.substr(0, kPrefixLength) == prefix_text_) {
    const absl::string_view digits = lease_id.substr(kPrefixLength + 1);
    // Digits only, no leading zero, so that "+7" or "007" are not taken
    // for lease 7.
    const bool canonical =
        !digits.empty() && digits.size() <= 20 && digits[0] != '0' &&
        std::all_of(digits.begin(), digits.end(),
                    [](char c) { return c >= '0' && c <= '9'; });
    if (canonical && absl::SimpleAtoi(digits, &seq) && seq > 0 &&
        seq < next_seq_) {
      return seq;
    }
  }
  if (auto it = restored_ids_.find(lease_id); it != restored_ids_.end()) {
    return it->second;
  }
  return absl::NotFoundError(
      absl::StrCat("lease \"", lease_id, "\" was not issued by this kvgate"));
}

std::string LeaseLedger::Grant(const std::string& request_id,
                               const AdmitCost& cost, absl::Time now) {
  const uint64_t seq = next_seq_++;
  Lease& lease = leases_[seq];
  lease.seq = seq;
  lease.request_id = request_id;
  lease.cost = cost;
  lease.bytes = cost.kv_bytes + cost.activation_bytes;
  lease.granted_at = now;
  lease.expires_at = now + options_.lease_ttl;
  kv_reserved_ += cost.kv_bytes;
  activation_sum_ += cost.activation_bytes;
  activations_.insert(cost.activation_bytes);
  expiries_.insert({lease.expires_at, seq});
  by_request_[lease.request_id] = seq;

  std::string lease_id = LeaseIdFor(seq);
  if (options_.observer != nullptr) {
    options_.observer->OnGranted(
        {lease_id, lease.request_id, lease.cost, lease.expires_at});
  }
  return lease_id;
}

LeaseLedger::Freed LeaseLedger::Free(uint64_t seq, absl::Time now,
                                     LeaseEnd end) {
  auto it = leases_.find(seq);
  const Lease& lease = it->second;
  if (options_.observer != nullptr) {
    options_.observer->OnEnded(LeaseId(lease), end);
  }
  const uint64_t reserved_before = Reserved();
  kv_reserved_ -= lease.cost.kv_bytes;
  activation_sum_ -= lease.cost.activation_bytes;
  activations_.erase(activations_.find(lease.cost.activation_bytes));
  expiries_.erase({lease.expires_at, seq});
  if (auto r = by_request_.find(lease.request_id);
      r != by_request_.end() && r->second == seq) {
    by_request_.erase(r);
  }
  Freed freed;
  freed.bytes = lease.bytes;
  freed.reserved_freed = reserved_before - Reserved();
  freed.held = now - lease.granted_at;
  leases_.erase(it);
  return freed;
}

void LeaseLedger::Expire(absl::Time now,
                         absl::FunctionRef<void(const Freed&)> on_expired) {
  while (!expiries_.empty() && expiries_.begin()->first <= now) {
    on_expired(Free(expiries_.begin()->second, now, LeaseEnd::kExpired));
  }
}

absl::StatusOr<absl::Time> LeaseLedger::Renew(absl::string_view lease_id,
                                              absl::Time now) {
  absl::StatusOr<uint64_t> seq = ParseLeaseId(lease_id);
  if (!seq.ok()) return seq.status();
  auto it = leases_.find(*seq);
  if (it == leases_.end() || it->second.expires_at <= now) {
    return absl::NotFoundError(absl::StrCat(
        "lease ", lease_id, " was released or expired; admit again"));
  }
  Lease& lease = it->second;
  expiries_.erase({lease.expires_at, *seq});
  lease.expires_at = now + options_.lease_ttl;
  expiries_.insert({lease.expires_at, *seq});
  if (options_.observer != nullptr) {
    options_.observer->OnRenewed(lease_id, lease.expires_at);
  }
  return lease.expires_at;
}

absl::Status LeaseLedger::Restore(const LeaseRecord& record, absl::Time now) {
  if (record.lease_id.empty() || record.request_id.empty()) {
    return absl::InvalidArgumentError(
        "a restored lease needs a lease_id and a request_id");
  }
  uint64_t bytes = 0;
  if (!CheckedAdd(record.cost.kv_bytes, record.cost.activation_bytes, &bytes) ||
      bytes == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lease ", record.lease_id, ": cost must be > 0 and fit in 64 bits"));
  }
  if (restored_ids_.contains(record.lease_id) ||
      ParseLeaseId(record.lease_id).ok() ||
      by_request_.contains(record.request_id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("lease ", record.lease_id, " (request \"",
                     record.request_id, "\") is already live"));
  }
  uint64_t kv = 0, activation_sum = 0, total = 0;
  if (!CheckedAdd(kv_reserved_, record.cost.kv_bytes, &kv) ||
      !CheckedAdd(activation_sum_, record.cost.activation_bytes,
                  &activation_sum) ||
      !CheckedAdd(kv, std::max(activation_sum, ActivationReserve()), &total)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lease ", record.lease_id, ": the ledger would overflow 64 bits"));
  }
  const uint64_t seq = next_seq_++;
  Lease& lease = leases_[seq];
  lease.seq = seq;
  lease.request_id = record.request_id;
  lease.restored_id = record.lease_id;
  lease.cost = record.cost;
  lease.bytes = bytes;
  lease.granted_at = now;
  lease.expires_at = record.expires_at;
  kv_reserved_ = kv;
  activation_sum_ = activation_sum;
  activations_.insert(lease.cost.activation_bytes);
  expiries_.insert({lease.expires_at, seq});
  by_request_[lease.request_id] = seq;
  restored_ids_[record.lease_id] = seq;
  return absl::OkStatus();
}

absl::Status LeaseLedger::CheckInvariants() const {
  uint64_t kv = 0, activation_sum = 0, activation_max = 0;
  for (const auto& [seq, lease] : leases_) {
    kv += lease.cost.kv_bytes;
    activation_sum += lease.cost.activation_bytes;
    activation_max = std::max(activation_max, lease.cost.activation_bytes);
    if (lease.bytes != lease.cost.kv_bytes + lease.cost.activation_bytes) {
      return absl::InternalError("lease bytes != kv + activation");
    }
    if (lease.seq != seq) return absl::InternalError("lease seq out of step");
  }
  if (kv != kv_reserved_ || activation_sum != activation_sum_ ||
      activations_.size() != leases_.size() ||
      activation_max != (activations_.empty() ? 0 : *activations_.rbegin())) {
    return absl::InternalError(absl::StrCat(
        "ledger drifted: kv ", kv_reserved_, " vs ", kv, ", activation sum ",
        activation_sum_, " vs ", activation_sum));
  }
  const uint64_t reserved =
      kv + (options_.activation_sum ? activation_sum : activation_max);
  if (reserved > options_.capacity_bytes && restored_ids_.empty() && !shrunk_) {
    return absl::InternalError(absl::StrCat(
        "reserved ", reserved, " > capacity ", options_.capacity_bytes));
  }
  if (expiries_.size() != leases_.size() ||
      by_request_.size() > leases_.size()) {
    return absl::InternalError("lease indexes out of step");
  }
  return absl::OkStatus();
}

absl::Duration LeaseLedger::TimeUntilExpiriesFree(uint64_t bytes,
                                                  absl::Time now) const {
  uint64_t freed = 0;
  for (const auto& [expires_at, seq] : expiries_) {
    freed = admission_internal::SaturatingAdd(freed, leases_.at(seq).bytes);
    if (freed >= bytes) return std::max(expires_at - now, absl::ZeroDuration());
  }
  return absl::InfiniteDuration();
}

}  // namespace kvgate
