// Controller: kvgate's admission decision — a byte ledger of leases and a
// bounded priority queue in front of it.
//
// The controller knows nothing of protobuf, gRPC or the estimator: callers
// translate a request into an `AdmitTicket` (bytes of KV cache and of
// activation peak) and get an `AdmitOutcome` back through a callback.
//
// Ledger (plugin/admission/lease_ledger.h). Every admitted request holds a
// lease until it is released or its TTL passes. The reserved bytes are
//   sum(kv of live leases) + max(activation of live leases)
// (or + sum(activation) with Options::activation_sum), because one engine step
// runs at a time and only the largest activation peak is live at once. A
// request fits when the reserved bytes after adding it are <= capacity. The
// check and the reservation happen under one lock, so two requests can never
// both take the last free bytes.
//
// Queue (plugin/admission/fair_queue.h). A request that does not fit at once
// waits, bounded by count and bytes. Order: priority (CRITICAL > STANDARD >
// SHEDDABLE); within a priority, the tenant with the lowest bytes served /
// weight goes first (a tenant that becomes active starts at the current
// minimum, so a newcomer cannot monopolise); FIFO within a tenant. When the
// head of the queue does not fit, up to Options::backfill_limit strictly
// smaller requests that fit may pass it (found by a scan of at most
// Options::backfill_scan_limit entries, so the cost of a dispatch does not
// grow with the queue length); after that the head blocks until it fits, so
// it is never starved. A higher-priority arrival on a full queue sheds the
// newest SHEDDABLE entries to take their place.
//
// Answers. Every ticket accepted by Admit (status OK) is answered exactly once
// through its callback: ADMITTED, or rejected with a RejectReason and a
// computed retry_after (plugin/admission/retry_estimate.h: the bytes that
// must be freed over the observed release rate). Callbacks and listener hooks
// are collected under the lock and run after it is released, on the thread of
// whichever call produced them (Admit, Cancel, Release, Tick,
// SetMemoryPressure, Drain). They may call back into the controller.
//
// One mutex guards the ledger, the queue and the estimate together: the
// Controller holds the decision order and the answers; its three parts are
// not thread-safe on their own.
//
// Time comes from the injected Clock; nothing runs in the background: the
// owner calls Tick() at the time it returns (or periodically) to expire leases
// and time out queued requests.

#ifndef KVGATE_PLUGIN_ADMISSION_CONTROLLER_H_
#define KVGATE_PLUGIN_ADMISSION_CONTROLLER_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "plugin/admission/admission_types.h"
#include "plugin/admission/clock.h"
#include "plugin/admission/fair_queue.h"
#include "plugin/admission/lease_ledger.h"
#include "plugin/admission/retry_estimate.h"

namespace kvgate {

// Priority, RejectReason, AdmitCost, AdmitTicket, AdmitOutcome, AdmitCallback,
// LeaseRecord, LeaseEnd and LeaseObserver: plugin/admission/admission_types.h.

// Optional hooks (for metrics). Called outside the controller lock, on the
// thread that produced the event. Default no-ops.
class ControllerListener {
 public:
  virtual ~ControllerListener() = default;
  // Every final answer, exactly once per ticket accepted by Admit, just
  // before its callback runs.
  virtual void OnDecision(Priority /*priority*/,
                          const AdmitOutcome& /*outcome*/) {}
  // A lease reached its TTL in Tick; `bytes` is its reserved_bytes.
  virtual void OnLeaseExpired(uint64_t /*bytes*/) {}
  // The budget after a call that may have changed it (Admit, Release,
  // Cancel, Tick, SetEngineBudget, ...): the capacity, what admission counts
  // as taken (max(reserved, the engine's reported use)) and the requests
  // queued at all priorities. Calls from concurrent threads may arrive out
  // of order; the next call corrects the figure.
  virtual void OnBudget(uint64_t /*capacity_bytes*/, uint64_t /*used_bytes*/,
                        uint32_t /*queued_requests*/) {}
};

struct BudgetSnapshot {
  uint64_t capacity_bytes = 0;
  uint64_t reserved_bytes = 0;  // kv_reserved_bytes + activation_reserve_bytes
  uint64_t kv_reserved_bytes = 0;
  uint64_t activation_reserve_bytes = 0;  // max (or sum) of live activations
  // capacity_bytes - max(reserved_bytes, engine_used_bytes), or 0.
  uint64_t free_bytes = 0;
  // What a preallocating engine reports in use (0: none, or a dynamic one).
  uint64_t engine_used_bytes = 0;
  uint32_t active_leases = 0;
  uint32_t queued_requests = 0;
  std::array<uint32_t, kNumPriorities> queued_by_priority{};
  uint64_t queued_bytes = 0;
  bool memory_pressure = false;
  bool draining = false;
};

// The admission decision: a LeaseLedger, a FairQueue in front of it and a
// RetryEstimate for the answers that say no, under one mutex.
//
// Invariants (checked by CheckInvariants): those of the ledger and of the
// queue. After every call that frees bytes or changes the queue, the queue is
// dispatched: its head is admitted while it fits (and memory pressure and
// draining are off), so a head left waiting does not fit.
//
// Thread-safe. Callbacks, ControllerListener hooks and LeaseObserver::Commit
// run outside the mutex and may call back in; LeaseObserver's other hooks run
// under it.
class Controller {
 public:
  struct Options {
    // Budget for KV + activations (must be > 0).
    uint64_t capacity_bytes = 0;
    // Reserve the sum of activation peaks instead of the max among live
    // leases (for engines that run several forward passes at once).
    bool activation_sum = false;
    // Queue bounds; a request beyond them is rejected QUEUE_FULL (or sheds
    // SHEDDABLE entries when it has a higher priority). 0 requests = no queue.
    size_t max_queue_requests = 1024;
    uint64_t max_queue_bytes = 0;  // 0 = capacity_bytes
    // Longest wait in the queue; the ticket's own deadline may be earlier.
    absl::Duration max_queue_wait = absl::Seconds(30);
    // A lease not released nor renewed within this time is reclaimed by Tick.
    absl::Duration lease_ttl = absl::Minutes(10);
    // How many smaller requests may pass a queue head that does not fit.
    size_t backfill_limit = 8;
    // How many queued entries one backfill search examines at most (> 0).
    size_t backfill_scan_limit = 64;
    // Time constant of the exponentially weighted release rate (bytes/s)
    // behind retry_after (> 0).
    absl::Duration release_rate_window = absl::Seconds(10);
    // Assumed mean lease hold time until one has been observed: retry_after
    // then assumes the whole capacity turns over once per this time. 5 s is
    // our assumption for a chat completion of a few hundred tokens at tens of
    // tokens per second; it only matters before the first release (> 0).
    absl::Duration assumed_lease_hold = absl::Seconds(5);
    // Fairness weights per tenant; a tenant not listed weighs 1.0. Each > 0.
    absl::flat_hash_map<std::string, double> tenant_weights;
    ControllerListener* listener = nullptr;   // not owned; may be null
    LeaseObserver* lease_observer = nullptr;  // not owned; may be null
  };

  // Bounds of every computed retry_after.
  static constexpr absl::Duration kMinRetryAfter =
      RetryEstimate::kMinRetryAfter;
  static constexpr absl::Duration kMaxRetryAfter =
      RetryEstimate::kMaxRetryAfter;

  // Fails with InvalidArgument when an option is out of range or `clock` is
  // null. `clock` (and Options::listener) must outlive the controller.
  static absl::StatusOr<std::unique_ptr<Controller>> Create(
      const Options& options, Clock* clock);

  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;
  // Answers whatever is still queued DRAINING (on the destroying thread).
  ~Controller();

  // Validates the ticket, then decides at once or queues it.
  // Errors (the callback is then never run): InvalidArgument for an empty
  // request_id, a zero cost, a cost whose sum overflows uint64, a priority
  // outside the enum or a null callback; AlreadyExists while a request with
  // the same request_id is queued.
  // On OK, `done` runs exactly once: possibly before Admit returns (on the
  // caller's thread), or later on the thread of a call that frees bytes or
  // ends the wait. A retry with the request_id of a live lease is answered
  // ADMITTED with that same lease (nothing reserved twice), even while
  // draining or under memory pressure; once that lease's TTL has passed the
  // retry is a new request.
  // Decisions, in order: NEVER_FITS when kv + activation exceeds the capacity
  // or max_queue_bytes (it could never wait in the queue); DRAINING;
  // MEMORY_PRESSURE; ADMITTED when it fits and no queued request of its
  // priority or above would be overtaken (or as a backfill, see above);
  // QUEUE_TIMEOUT when its deadline has already passed; QUEUE_FULL (after
  // shedding SHEDDABLE entries if that makes room); otherwise queued.
  // Returns a handle for Cancel, or 0 when the ticket is already answered.
  absl::StatusOr<uint64_t> Admit(AdmitTicket ticket, AdmitCallback done);

  // Puts back a lease granted by an earlier kvgated (replayed from the lease
  // journal after a restart), before serving: its bytes are reserved without
  // queue or capacity checks (the engine still holds that memory, so the
  // ledger may end up above a capacity that has since shrunk, and then admits
  // nothing until enough is released), under its old lease_id, so that the
  // engine's Release and Renew of it still work, and under its request_id,
  // so that a retry gets it back. It expires at lease.expires_at. The
  // observer is not told (the journal has it already).
  // InvalidArgument for an empty lease_id or request_id or a zero or
  // overflowing cost; AlreadyExists for a lease_id or request_id already
  // live.
  absl::Status RestoreLease(const LeaseRecord& lease);

  // A queued request leaves the queue and is answered CANCELLED. No-op for a
  // handle that is unknown or already answered.
  void Cancel(uint64_t handle);

  // Frees a lease (even one past its TTL that Tick has not reclaimed yet).
  // Returns the lease's reserved_bytes; OK(0) if it was already released or
  // expired; NotFound for an id this controller never issued nor restored.
  absl::StatusOr<uint64_t> Release(absl::string_view lease_id);

  // Extends a live lease to now + lease_ttl and returns that remaining TTL.
  // NotFound if the lease is unknown, released, or past its TTL.
  absl::StatusOr<absl::Duration> Renew(absl::string_view lease_id);

  // Expires leases past their TTL and answers queued requests past their
  // deadline (QUEUE_TIMEOUT), then dispatches the queue. Returns the next time
  // at which Tick has work (InfiniteFuture if none).
  absl::Time Tick();

  // The live memory guard. While true, new admits are rejected
  // MEMORY_PRESSURE (with `why` as the message) and the queue does not
  // dispatch: queued requests keep waiting, and one whose deadline passes
  // meanwhile is answered MEMORY_PRESSURE. Turning it off dispatches the
  // queue.
  void SetMemoryPressure(bool under_pressure,
                         absl::string_view why = "device free memory is low");

  // A preallocating engine's view (docs/design.md, "Engines"): its KV pool
  // as the capacity (> 0; 0 keeps the capacity), and what it reports in use,
  // which admission counts when it is above the ledger (0: the ledger
  // alone). A capacity below what is reserved keeps the leases and admits
  // nothing until enough is released. The queue's byte bound follows the
  // capacity unless Options::max_queue_bytes was set. Dispatches the queue.
  void SetEngineBudget(uint64_t capacity_bytes, uint64_t engine_used_bytes);

  // Answers every queued request DRAINING; from now on new admits are
  // rejected DRAINING. Leases stay valid until released or expired.
  // Irreversible.
  void Drain();

  BudgetSnapshot Snapshot() const;

  // The retry_after that a request of `priority` needing `bytes` would be
  // told now if it were rejected while nothing of its own is queued.
  absl::Duration EstimateRetryAfter(Priority priority, uint64_t bytes) const;

  // Recomputes the ledger and the queue counters from the leases and entries
  // held and compares them with the running totals. For tests; O(n).
  absl::Status CheckInvariants() const;

 private:
  struct Completions;

  Controller(const Options& options, Clock* clock, uint64_t lease_prefix);

  // Admit, step by step. The checks that need no lock; returns the
  // ticket's bytes (kv + activation).
  static absl::StatusOr<uint64_t> ValidateTicket(const AdmitTicket& ticket,
                                                 const AdmitCallback& done);
  // A retry of the request_id of a live lease: answers it with that lease
  // and returns true. A lease past its TTL is reclaimed first (false).
  bool AnswerRetryLocked(const AdmitTicket& ticket, absl::Time now,
                         AdmitCallback& done, Completions& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The decision for a new request, in the order Admit documents: the
  // answer, or nullopt once queued (then `done` is moved into the queue and
  // *handle is its handle, or 0 if it was dispatched at once).
  std::optional<AdmitOutcome> DecideLocked(AdmitTicket& ticket, uint64_t bytes,
                                           absl::Time now, AdmitCallback& done,
                                           uint64_t* handle, Completions& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The tail of DecideLocked for a request that cannot be admitted now:
  // QUEUE_TIMEOUT, QUEUE_FULL or queued.
  std::optional<AdmitOutcome> QueueLocked(AdmitTicket& ticket, uint64_t bytes,
                                          absl::Time now, AdmitCallback& done,
                                          uint64_t* handle, Completions& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Ledger changes, with what the retry estimate learns from them.
  AdmitOutcome GrantLocked(const AdmitTicket& ticket, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t FreeLeaseLocked(uint64_t seq, absl::Time now, LeaseEnd end)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireLeasesLocked(absl::Time now, Completions& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Queue: answers, shedding, timeouts and dispatch.
  void AnswerQueuedLocked(std::unique_ptr<FairQueue::Entry> entry,
                          AdmitOutcome outcome, absl::Time now,
                          Completions& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RejectQueuedLocked(FairQueue::Entry* entry, RejectReason reason,
                          absl::string_view message, absl::Time now,
                          Completions& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool MakeRoomLocked(Priority priority, uint64_t bytes, absl::Time now,
                      Completions& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TimeOutQueuedLocked(absl::Time now, Completions& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DispatchLocked(absl::Time now, Completions& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // retry_after: bytes queued at `priority` and above plus `own_bytes`,
  // less `own_queued_bytes` (a queued request's own entry), over the
  // estimate.
  absl::Duration RetryAfterLocked(Priority priority, uint64_t own_bytes,
                                  uint64_t own_queued_bytes,
                                  absl::Time now) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  AdmitOutcome RejectionLocked(RejectReason reason, Priority priority,
                               uint64_t bytes, uint64_t own_queued_bytes,
                               std::string message, absl::Time now) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  void Run(Completions& completions);

  // max_queue_bytes resolved (never 0); capacity_bytes and max_queue_bytes
  // as at Create (the live ones are capacity_bytes_ and max_queue_bytes_).
  const Options options_;
  // Whether the queue's byte bound is the capacity (max_queue_bytes was 0),
  // so that it follows SetEngineBudget.
  const bool queue_bytes_follow_capacity_;
  Clock* const clock_;

  mutable absl::Mutex mu_;
  uint64_t capacity_bytes_ ABSL_GUARDED_BY(mu_);
  uint64_t max_queue_bytes_ ABSL_GUARDED_BY(mu_);
  // Why admission is paused while memory_pressure_ is set.
  std::string pressure_message_ ABSL_GUARDED_BY(mu_);
  LeaseLedger ledger_ ABSL_GUARDED_BY(mu_);
  FairQueue queue_ ABSL_GUARDED_BY(mu_);
  RetryEstimate retry_ ABSL_GUARDED_BY(mu_);
  bool memory_pressure_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_ADMISSION_CONTROLLER_H_
