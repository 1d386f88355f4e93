// LeaseLedger: the controller's byte ledger of live leases.
//
// Every admitted request holds a lease until it is released or its TTL
// passes. The reserved bytes are
//   sum(kv of live leases) + max(activation of live leases)
// (or + sum(activation) with Options::activation_sum), because one engine step
// runs at a time and only the largest activation peak is live at once. A
// request fits when the reserved bytes after adding it are <= capacity.
//
// Lease ids are "<16 hex digits>-<seq>": a random prefix per ledger (so that
// an id issued by an earlier kvgated is not taken for one of ours) and a
// sequence number in canonical decimal. A restored lease keeps the id that an
// earlier kvgated gave it.

#ifndef KVGATE_PLUGIN_ADMISSION_LEASE_LEDGER_H_
#define KVGATE_PLUGIN_ADMISSION_LEASE_LEDGER_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "plugin/admission/admission_types.h"

namespace kvgate {

// The live leases and their running totals.
//
// Invariants (checked by CheckInvariants):
//   * kv_reserved() is the sum of the live leases' kv bytes, and the
//     activation reserve is the max (or, with Options::activation_sum, the
//     sum) of their activation bytes;
//   * Reserved() <= capacity_bytes, unless a lease was restored (an earlier
//     kvgated may have granted it under a larger capacity) or SetCapacity
//     shrank the capacity below what was reserved;
//   * every live lease is in the expiry index once; a request_id maps to at
//     most one live lease.
//
// The ledger tells Options::observer of every grant, renewal and end, in the
// order they happen (Restore is not told: the journal has it already).
//
// Not thread-safe: the controller's mutex guards it.
class LeaseLedger {
 public:
  struct Options {
    uint64_t capacity_bytes = 0;  // > 0
    // Reserve the sum of activation peaks instead of the max.
    bool activation_sum = false;
    // Lifetime of a granted or renewed lease (> 0).
    absl::Duration lease_ttl = absl::Minutes(10);
    LeaseObserver* observer = nullptr;  // not owned; may be null
  };

  // A live lease.
  struct Lease {
    uint64_t seq = 0;         // this ledger's number for it
    std::string request_id;   // the request it was granted to
    std::string restored_id;  // the old lease id of a restored lease, else ""
    AdmitCost cost;
    uint64_t bytes = 0;  // kv + activation
    absl::Time granted_at;
    absl::Time expires_at;
  };

  // What Free tells of the lease it removed.
  struct Freed {
    uint64_t bytes = 0;           // the lease's kv + activation bytes
    uint64_t reserved_freed = 0;  // how much Reserved() fell (max ledger: less)
    absl::Duration held;          // now - granted_at
  };

  // `lease_prefix` is the random part of every lease id this ledger issues.
  LeaseLedger(const Options& options, uint64_t lease_prefix);

  LeaseLedger(const LeaseLedger&) = delete;
  LeaseLedger& operator=(const LeaseLedger&) = delete;

  // The budget, which a preallocating engine's pool may change while
  // serving (> 0). Leases granted under a larger capacity stay; the ledger
  // then admits nothing until enough is released.
  void SetCapacity(uint64_t capacity_bytes) {
    options_.capacity_bytes = capacity_bytes;
    shrunk_ = shrunk_ || Reserved() > capacity_bytes;
  }
  // What the engine reports in use (its usage x its pool), traffic that
  // bypassed the gate included. Admission counts max(Reserved(), this):
  // reality wins over the ledger when it is higher. 0 (default): the ledger
  // alone.
  void SetEngineUsedBytes(uint64_t bytes) { engine_used_bytes_ = bytes; }
  uint64_t engine_used_bytes() const { return engine_used_bytes_; }

  // Totals.
  uint64_t capacity_bytes() const { return options_.capacity_bytes; }
  uint64_t kv_reserved() const { return kv_reserved_; }
  // Max (or sum) of the live leases' activation bytes.
  uint64_t ActivationReserve() const {
    if (options_.activation_sum) return activation_sum_;
    return activations_.empty() ? 0 : *activations_.rbegin();
  }
  // kv_reserved() + ActivationReserve(). Never overflows: every lease was
  // granted with the total <= capacity, and Restore checks the sum.
  uint64_t Reserved() const { return kv_reserved_ + ActivationReserve(); }
  // What admission counts as taken: max(Reserved(), engine_used_bytes()).
  uint64_t AdmissionReserved() const {
    return std::max(Reserved(), engine_used_bytes_);
  }
  // capacity - AdmissionReserved(), or 0 when restored leases (or the
  // engine) hold more than a capacity that has since shrunk.
  uint64_t FreeBytes() const {
    const uint64_t reserved = AdmissionReserved();
    return reserved < options_.capacity_bytes
               ? options_.capacity_bytes - reserved
               : 0;
  }
  size_t size() const { return leases_.size(); }

  // Whether a lease of `cost` would keep Reserved() <= capacity, and the
  // engine's reported use plus the lease's bytes too. Inline: asked on every
  // Admit and for every queue head a dispatch looks at.
  bool Fits(const AdmitCost& cost) const {
    uint64_t kv, activation, total;
    if (engine_used_bytes_ != 0) {
      uint64_t with_engine;
      if (!admission_internal::CheckedAdd(engine_used_bytes_, cost.kv_bytes,
                                          &with_engine) ||
          !admission_internal::CheckedAdd(with_engine, cost.activation_bytes,
                                          &with_engine) ||
          with_engine > options_.capacity_bytes) {
        return false;
      }
    }
    if (!admission_internal::CheckedAdd(kv_reserved_, cost.kv_bytes, &kv)) {
      return false;
    }
    if (options_.activation_sum) {
      if (!admission_internal::CheckedAdd(activation_sum_,
                                          cost.activation_bytes, &activation)) {
        return false;
      }
    } else {
      activation = std::max(ActivationReserve(), cost.activation_bytes);
    }
    if (!admission_internal::CheckedAdd(kv, activation, &total)) return false;
    return total <= options_.capacity_bytes;
  }

  // The earliest expiry of a live lease; InfiniteFuture if none.
  absl::Time NextExpiry() const {
    return expiries_.empty() ? absl::InfiniteFuture()
                             : expiries_.begin()->first;
  }

  // How long from `now` until enough live leases expire by TTL to free
  // `bytes` (their kv + activation bytes, earliest expiry first): zero when
  // they are past due, InfiniteDuration when all of them together hold less.
  // O(leases walked).
  absl::Duration TimeUntilExpiriesFree(uint64_t bytes, absl::Time now) const;

  // The live lease numbered `seq`, or null.
  const Lease* Find(uint64_t seq) const {
    auto it = leases_.find(seq);
    return it == leases_.end() ? nullptr : &it->second;
  }
  // The live lease granted to `request_id` (possibly past its TTL, until
  // Expire or Free reclaims it), or null.
  const Lease* FindByRequest(absl::string_view request_id) const {
    auto it = by_request_.find(request_id);
    return it == by_request_.end() ? nullptr : &leases_.at(it->second);
  }

  // The id of a live lease: its restored id, or "<prefix>-<seq>".
  std::string LeaseId(const Lease& lease) const;
  // The seq of a lease id this ledger issued (live or not) or restored.
  // NotFound for any other id, including non-canonical spellings of ours
  // ("007", "+7") and ids under another prefix.
  absl::StatusOr<uint64_t> ParseLeaseId(absl::string_view lease_id) const;

  // Adds a lease for `request_id` expiring at now + lease_ttl and returns its
  // id. The caller has checked Fits(cost); cost is > 0.
  std::string Grant(const std::string& request_id, const AdmitCost& cost,
                    absl::Time now);

  // Removes the live lease `seq` (which must exist), telling the observer how
  // it ended.
  Freed Free(uint64_t seq, absl::Time now, LeaseEnd end);

  // Frees every lease whose expiry is <= now, earliest first, and calls
  // `on_expired` with each.
  void Expire(absl::Time now, absl::FunctionRef<void(const Freed&)> on_expired);

  // Extends a live lease to now + lease_ttl and returns that expiry. NotFound
  // if the id is not ours, or the lease was released or is past its TTL.
  absl::StatusOr<absl::Time> Renew(absl::string_view lease_id, absl::Time now);

  // Puts back a lease granted by an earlier kvgated under its old id, without
  // a capacity check; granted_at is `now`. InvalidArgument for an empty id, a
  // zero or overflowing cost, or a ledger that would overflow 64 bits;
  // AlreadyExists for a lease_id or request_id already live.
  absl::Status Restore(const LeaseRecord& record, absl::Time now);

  // Recomputes the totals from the leases and compares. O(n).
  absl::Status CheckInvariants() const;

 private:
  std::string LeaseIdFor(uint64_t seq) const;

  Options options_;
  // The lease prefix as 16 hex digits, formatted once: lease ids are made and
  // parsed on every Admit and Release.
  const std::string prefix_text_;

  absl::flat_hash_map<uint64_t, Lease> leases_;
  absl::flat_hash_map<std::string, uint64_t> by_request_;
  std::set<std::pair<absl::Time, uint64_t>> expiries_;
  std::multiset<uint64_t> activations_;
  uint64_t kv_reserved_ = 0;
  uint64_t activation_sum_ = 0;
  uint64_t next_seq_ = 1;
  uint64_t engine_used_bytes_ = 0;
  // Set once the capacity fell below what was reserved: from then on the
  // ledger may hold more than its capacity (as with restored leases).
  bool shrunk_ = false;
  // Lease ids of restored leases (issued by an earlier kvgated, under another
  // prefix) -> their seq here. Kept after release, so that a second Release
  // of one is OK(0) rather than NotFound; bounded by what was restored.
  absl::flat_hash_map<std::string, uint64_t> restored_ids_;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_ADMISSION_LEASE_LEDGER_H_
