// FairQueue: the controller's bounded queue of requests that did not fit at
// once.
//
// Order: priority (CRITICAL > STANDARD > SHEDDABLE); within a priority, the
// tenant with the lowest bytes served / weight goes first (a tenant that
// becomes active starts at the level's virtual clock, the lowest position
// among active tenants at the last dispatch, so a newcomer cannot monopolise;
// a tenant that returns soon after emptying its queue resumes at its old
// position if that is later); FIFO within a tenant.
//
// The queue decides order, bounds and who gives way; it knows nothing of the
// ledger. Whether an entry fits is asked of a predicate passed in (see
// FindBackfill), and answering an entry is the caller's job once it has taken
// it out of the queue (Remove, TakeForDispatch).

#ifndef KVGATE_PLUGIN_ADMISSION_FAIR_QUEUE_H_
#define KVGATE_PLUGIN_ADMISSION_FAIR_QUEUE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "plugin/admission/admission_types.h"

namespace kvgate {

// Queued requests by priority, tenant share and arrival, bounded by count
// and bytes.
//
// Invariants (checked by CheckInvariants):
//   * size() and bytes() are the count and bytes of all entries, and each
//     priority level's counters those of its entries;
//   * every entry is in exactly one tenant FIFO, its level's arrival list,
//     the deadline index and the handle and request_id indexes;
//   * a tenant is active (in its level's order) iff its FIFO is non-empty;
//   * size() <= max_requests and bytes() <= max_bytes (Push does not check:
//     the caller makes room first, see HasRoom and ShedCandidate).
//
// Not thread-safe: the controller's mutex guards it.
class FairQueue {
 public:
  // Idle tenants whose fairness position is remembered, per priority, before
  // that memory is pruned (tenant names come from clients, so it must be
  // bounded).
  static constexpr size_t kMaxIdleTenants = 4096;

  struct Options {
    // Bounds: at most this many entries and bytes.
    size_t max_requests = 1024;
    uint64_t max_bytes = 0;
    // How many entries one FindBackfill examines at most (> 0).
    size_t backfill_scan_limit = 64;
    // Fairness weights per tenant; a tenant not listed weighs 1.0. Each > 0.
    absl::flat_hash_map<std::string, double> tenant_weights;
  };

  struct TenantQueue;  // defined in fair_queue.cc

  // A queued request. The queue owns it until Remove or TakeForDispatch hands
  // it back; the caller may change `bypassed`, nothing else.
  struct Entry {
    uint64_t handle = 0;  // > 0, unique per queue
    AdmitTicket ticket;
    uint64_t bytes = 0;  // kv + activation
    absl::Time enqueued_at;
    absl::Time deadline;
    AdmitCallback done;
    size_t bypassed = 0;  // entries backfilled past this one while it was head

   private:
    friend class FairQueue;
    TenantQueue* tenant = nullptr;
    std::list<Entry*>::iterator in_tenant;
    std::list<Entry*>::iterator in_arrivals;
  };

  explicit FairQueue(Options options);
  // Changes the byte bound (the default bound follows a pool whose
  // capacity changes); entries already queued stay even above it.
  void set_max_bytes(uint64_t max_bytes) {
    lowered_ = lowered_ || max_bytes < options_.max_bytes;
    options_.max_bytes = max_bytes;
  }
  ~FairQueue();

  FairQueue(const FairQueue&) = delete;
  FairQueue& operator=(const FairQueue&) = delete;

  // Appends `entry` (its ticket, bytes, enqueued_at, deadline and done filled
  // in; handle and bypassed are set here) to the FIFO of its ticket's tenant
  // at its ticket's priority and returns its handle. Its request_id must not
  // be queued already.
  uint64_t Push(std::unique_ptr<Entry> entry);

  // The entry that goes next (null when empty).
  Entry* Head() const;

  // Of the entries after `head` in dispatch order, the first strictly smaller
  // than it for which `fits(cost)` holds, examining at most
  // backfill_scan_limit entries (so the cost does not grow with the queue);
  // null if none.
  Entry* FindBackfill(const Entry& head,
                      absl::FunctionRef<bool(const AdmitCost&)> fits) const;

  // Removes `entry` for dispatch: its tenant is charged entry->bytes / weight
  // on its level's virtual clock, then it leaves the queue.
  std::unique_ptr<Entry> TakeForDispatch(Entry* entry);

  // Removes `entry` without charging its tenant.
  std::unique_ptr<Entry> Remove(Entry* entry);

  Entry* Find(uint64_t handle) const {
    auto it = entries_.find(handle);
    return it == entries_.end() ? nullptr : it->second.get();
  }
  bool ContainsRequest(absl::string_view request_id) const {
    return by_request_.contains(request_id);
  }

  // The entry with the earliest deadline if that is <= now, else null.
  Entry* Expired(absl::Time now) const;
  // The earliest deadline; InfiniteFuture when empty.
  absl::Time NextDeadline() const {
    return deadlines_.empty() ? absl::InfiniteFuture()
                              : deadlines_.begin()->first;
  }

  // Whether one more entry of `bytes` fits the bounds.
  bool HasRoom(uint64_t bytes) const {
    return HasRoom(entries_.size(), bytes_, bytes);
  }
  // Whether shedding SHEDDABLE entries would make room for an entry of
  // `bytes` at `priority`: never for a SHEDDABLE one, and only when shedding
  // them all would be enough (never shed for nothing).
  bool CanShedFor(Priority priority, uint64_t bytes) const;
  // The entry to shed next: the newest SHEDDABLE one (null if none).
  Entry* ShedCandidate() const;

  // Counters.
  size_t size() const { return entries_.size(); }
  uint64_t bytes() const { return bytes_; }
  size_t count(Priority priority) const;
  uint64_t bytes(Priority priority) const;
  // Bytes queued at `priority` and above (saturating).
  uint64_t BytesAtOrAbove(Priority priority) const;
  // Idle tenants whose position at `priority` is remembered.
  size_t idle_tenants(Priority priority) const;

  // Recomputes the counters from the entries and compares. O(n).
  absl::Status CheckInvariants() const;

 private:
  struct PriorityLevel;

  bool HasRoom(size_t count, uint64_t queued_bytes, uint64_t bytes) const {
    return count < options_.max_requests &&
           admission_internal::SaturatingAdd(queued_bytes, bytes) <=
               options_.max_bytes;
  }
  PriorityLevel& LevelOf(const Entry& entry) const {
    return *levels_[static_cast<int>(entry.ticket.priority)];
  }
  double TenantWeight(const std::string& tenant) const;
  TenantQueue* Activate(PriorityLevel& level, const std::string& name);
  void Deactivate(PriorityLevel& level, TenantQueue* tenant);

  Options options_;
  // Set once set_max_bytes lowered the bound: bytes() may exceed it since.
  bool lowered_ = false;
  std::array<std::unique_ptr<PriorityLevel>, kNumPriorities> levels_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Entry>> entries_;
  absl::flat_hash_map<std::string, uint64_t> by_request_;
  std::set<std::pair<absl::Time, uint64_t>> deadlines_;
  uint64_t bytes_ = 0;
  uint64_t next_handle_ = 1;
  uint64_t next_tenant_seq_ = 0;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_ADMISSION_FAIR_QUEUE_H_
