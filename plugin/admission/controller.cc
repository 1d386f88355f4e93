#include "plugin/admission/controller.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "estimator/byte_size.h"

namespace kvgate {

using admission_internal::CheckedAdd;
using admission_internal::SaturatingAdd;

// What to do once the lock is released.
struct Controller::Completions {
  struct Answer {
    Priority priority;
    AdmitOutcome outcome;
    AdmitCallback done;
  };
  std::vector<Answer> answers;
  std::vector<uint64_t> expired_bytes;
};

absl::StatusOr<std::unique_ptr<Controller>> Controller::Create(
    const Options& options, Clock* clock) {
  if (clock == nullptr) return absl::InvalidArgumentError("clock is null");
  if (options.capacity_bytes == 0) {
    return absl::InvalidArgumentError("capacity_bytes must be > 0");
  }
  if (options.max_queue_wait < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("max_queue_wait must be >= 0");
  }
  if (options.lease_ttl <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("lease_ttl must be > 0");
  }
  if (options.backfill_scan_limit == 0) {
    return absl::InvalidArgumentError("backfill_scan_limit must be > 0");
  }
  if (options.release_rate_window <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("release_rate_window must be > 0");
  }
  if (options.assumed_lease_hold <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("assumed_lease_hold must be > 0");
  }
  for (const auto& [tenant, weight] : options.tenant_weights) {
    if (!(weight > 0) || !std::isfinite(weight)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "tenant_weights[\"%s\"] = %g: weights must be finite and > 0", tenant,
          weight));
    }
  }
  absl::BitGen bitgen;
  const uint64_t prefix = absl::Uniform<uint64_t>(bitgen);
  return std::unique_ptr<Controller>(new Controller(options, clock, prefix));
}

namespace {

Controller::Options Resolved(Controller::Options options) {
  if (options.max_queue_bytes == 0) {
    options.max_queue_bytes = options.capacity_bytes;
  }
  return options;
}

LeaseLedger::Options LedgerOptions(const Controller::Options& options) {
  LeaseLedger::Options ledger;
  ledger.capacity_bytes = options.capacity_bytes;
  ledger.activation_sum = options.activation_sum;
  ledger.lease_ttl = options.lease_ttl;
  ledger.observer = options.lease_observer;
  return ledger;
}

FairQueue::Options QueueOptions(const Controller::Options& options) {
  FairQueue::Options queue;
  queue.max_requests = options.max_queue_requests;
  queue.max_bytes = options.max_queue_bytes;
  queue.backfill_scan_limit = options.backfill_scan_limit;
  queue.tenant_weights = options.tenant_weights;
  return queue;
}

RetryEstimate::Options RetryOptions(const Controller::Options& options) {
  RetryEstimate::Options retry;
  retry.capacity_bytes = options.capacity_bytes;
  retry.window = options.release_rate_window;
  retry.assumed_lease_hold = options.assumed_lease_hold;
  return retry;
}

}  // namespace

Controller::Controller(const Options& options, Clock* clock,
                       uint64_t lease_prefix)
    : options_(Resolved(options)),
      queue_bytes_follow_capacity_(options.max_queue_bytes == 0),
      clock_(clock),
      capacity_bytes_(options_.capacity_bytes),
      max_queue_bytes_(options_.max_queue_bytes),
      pressure_message_("device free memory is low"),
      ledger_(LedgerOptions(options_), lease_prefix),
      queue_(QueueOptions(options_)),
      retry_(RetryOptions(options_), clock->Now()) {}

Controller::~Controller() { Drain(); }

// ---------------------------------------------------------------- Admit ---

absl::StatusOr<uint64_t> Controller::ValidateTicket(const AdmitTicket& ticket,
                                                    const AdmitCallback& done) {
  if (ticket.request_id.empty()) {
    return absl::InvalidArgumentError("request_id is empty");
  }
  if (!done) return absl::InvalidArgumentError("callback is null");
  const int index = static_cast<int>(ticket.priority);
  if (index < 0 || index >= kNumPriorities) {
    return absl::InvalidArgumentError(
        absl::StrCat("priority ", index, " is not a known priority"));
  }
  uint64_t bytes = 0;
  if (!CheckedAdd(ticket.cost.kv_bytes, ticket.cost.activation_bytes, &bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cost overflows: kv_bytes ", ticket.cost.kv_bytes,
        " + activation_bytes ", ticket.cost.activation_bytes, " > 2^64-1"));
  }
  if (bytes == 0) {
    return absl::InvalidArgumentError(
        "cost is zero: kv_bytes + activation_bytes must be > 0");
  }
  return bytes;
}

absl::StatusOr<uint64_t> Controller::Admit(AdmitTicket ticket,
                                           AdmitCallback done) {
  absl::StatusOr<uint64_t> valid = ValidateTicket(ticket, done);
  if (!valid.ok()) return valid.status();
  const uint64_t bytes = *valid;
  if (ticket.tenant.empty()) ticket.tenant = "default";
  const Priority priority = ticket.priority;

  Completions out;
  uint64_t handle = 0;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    if (queue_.ContainsRequest(ticket.request_id)) {
      return absl::AlreadyExistsError(absl::StrCat(
          "request_id \"", ticket.request_id, "\" is already queued"));
    }
    if (!AnswerRetryLocked(ticket, now, done, out)) {
      std::optional<AdmitOutcome> answer =
          DecideLocked(ticket, bytes, now, done, &handle, out);
      if (answer.has_value()) {
        out.answers.push_back({priority, *std::move(answer), std::move(done)});
      }
    }
  }
  Run(out);
  return handle;
}

bool Controller::AnswerRetryLocked(const AdmitTicket& ticket, absl::Time now,
                                   AdmitCallback& done, Completions& out) {
  const LeaseLedger::Lease* lease = ledger_.FindByRequest(ticket.request_id);
  if (lease == nullptr) return false;
  if (lease->expires_at <= now) {
    out.expired_bytes.push_back(
        FreeLeaseLocked(lease->seq, now, LeaseEnd::kExpired));
    DispatchLocked(now, out);
    return false;
  }
  // A retry of an admitted request gets its lease back.
  AdmitOutcome outcome;
  outcome.admitted = true;
  outcome.lease_id = ledger_.LeaseId(*lease);
  outcome.reserved_bytes = lease->bytes;
  outcome.message = "already admitted: same lease";
  out.answers.push_back({ticket.priority, std::move(outcome), std::move(done)});
  return true;
}

std::optional<AdmitOutcome> Controller::DecideLocked(
    AdmitTicket& ticket, uint64_t bytes, absl::Time now, AdmitCallback& done,
    uint64_t* handle, Completions& out) {
  const Priority priority = ticket.priority;
  if (bytes > capacity_bytes_ || bytes > max_queue_bytes_) {
    return RejectionLocked(
        RejectReason::kNeverFits, priority, bytes, 0,
        absl::StrCat("needs ", ByteSize(bytes), "; capacity is ",
                     ByteSize(capacity_bytes_), ", queue holds at most ",
                     ByteSize(max_queue_bytes_)),
        now);
  }
  if (draining_) {
    return RejectionLocked(RejectReason::kDraining, priority, bytes, 0,
                           "kvgate is draining", now);
  }
  if (memory_pressure_) {
    return RejectionLocked(RejectReason::kMemoryPressure, priority, bytes, 0,
                           pressure_message_, now);
  }
  if (ledger_.Fits(ticket.cost)) {
    FairQueue::Entry* head = queue_.Head();
    if (head == nullptr || priority < head->ticket.priority) {
      // Nothing queued at this priority or above: no one to overtake.
      return GrantLocked(ticket, now);
    }
    if (head->bypassed < options_.backfill_limit && bytes < head->bytes) {
      // Backfill past a head that does not fit.
      ++head->bypassed;
      return GrantLocked(ticket, now);
    }
  }
  return QueueLocked(ticket, bytes, now, done, handle, out);
}

std::optional<AdmitOutcome> Controller::QueueLocked(
    AdmitTicket& ticket, uint64_t bytes, absl::Time now, AdmitCallback& done,
    uint64_t* handle, Completions& out) {
  const Priority priority = ticket.priority;
  const absl::Time deadline =
      std::min(ticket.deadline, now + options_.max_queue_wait);
  if (deadline <= now) {
    return RejectionLocked(RejectReason::kQueueTimeout, priority, bytes, 0,
                           "deadline passed before it could fit", now);
  }
  if (!MakeRoomLocked(priority, bytes, now, out)) {
    return RejectionLocked(
        RejectReason::kQueueFull, priority, bytes, 0,
        absl::StrCat("queue is full (", queue_.size(), " requests, ",
                     queue_.bytes(), " bytes)"),
        now);
  }
  auto entry = std::make_unique<FairQueue::Entry>();
  entry->ticket = std::move(ticket);
  entry->bytes = bytes;
  entry->enqueued_at = now;
  entry->deadline = deadline;
  entry->done = std::move(done);
  *handle = queue_.Push(std::move(entry));
  DispatchLocked(now, out);
  if (queue_.Find(*handle) == nullptr) *handle = 0;
  return std::nullopt;
}

void Controller::Cancel(uint64_t handle) {
  Completions out;
  {
    absl::MutexLock lock(&mu_);
    FairQueue::Entry* entry = queue_.Find(handle);
    if (entry == nullptr) return;
    const absl::Time now = clock_->Now();
    RejectQueuedLocked(entry, RejectReason::kCancelled,
                       "cancelled by the client", now, out);
    // The cancelled request may have been the head that blocked others.
    DispatchLocked(now, out);
  }
  Run(out);
}

// --------------------------------------------------------------- Leases ---

absl::StatusOr<uint64_t> Controller::Release(absl::string_view lease_id) {
  Completions out;
  uint64_t bytes = 0;
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<uint64_t> seq = ledger_.ParseLeaseId(lease_id);
    if (!seq.ok()) return seq.status();
    if (ledger_.Find(*seq) == nullptr) return 0;  // released or expired
    const absl::Time now = clock_->Now();
    bytes = FreeLeaseLocked(*seq, now, LeaseEnd::kReleased);
    DispatchLocked(now, out);
  }
  Run(out);
  return bytes;
}

absl::StatusOr<absl::Duration> Controller::Renew(absl::string_view lease_id) {
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<absl::Time> renewed = ledger_.Renew(lease_id, clock_->Now());
    if (!renewed.ok()) return renewed.status();
  }
  if (options_.lease_observer != nullptr) options_.lease_observer->Commit();
  return options_.lease_ttl;
}

absl::Status Controller::RestoreLease(const LeaseRecord& record) {
  absl::MutexLock lock(&mu_);
  return ledger_.Restore(record, clock_->Now());
}

absl::Time Controller::Tick() {
  Completions out;
  absl::Time next = absl::InfiniteFuture();
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    ExpireLeasesLocked(now, out);
    DispatchLocked(now, out);
    next = std::min(ledger_.NextExpiry(), queue_.NextDeadline());
  }
  Run(out);
  return next;
}

void Controller::SetMemoryPressure(bool under_pressure, absl::string_view why) {
  Completions out;
  {
    absl::MutexLock lock(&mu_);
    memory_pressure_ = under_pressure;
    if (under_pressure) pressure_message_ = std::string(why);
    DispatchLocked(clock_->Now(), out);
  }
  Run(out);
}

void Controller::SetEngineBudget(uint64_t capacity_bytes,
                                 uint64_t engine_used_bytes) {
  Completions out;
  {
    absl::MutexLock lock(&mu_);
    if (capacity_bytes > 0) {
      capacity_bytes_ = capacity_bytes;
      ledger_.SetCapacity(capacity_bytes);
      if (queue_bytes_follow_capacity_) {
        max_queue_bytes_ = capacity_bytes;
        queue_.set_max_bytes(capacity_bytes);
      }
    }
    ledger_.SetEngineUsedBytes(engine_used_bytes);
    DispatchLocked(clock_->Now(), out);
  }
  Run(out);
}

void Controller::Drain() {
  Completions out;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    const absl::Time now = clock_->Now();
    while (FairQueue::Entry* head = queue_.Head()) {
      RejectQueuedLocked(head, RejectReason::kDraining, "kvgate is draining",
                         now, out);
    }
  }
  Run(out);
}

BudgetSnapshot Controller::Snapshot() const {
  absl::MutexLock lock(&mu_);
  BudgetSnapshot s;
  s.capacity_bytes = capacity_bytes_;
  s.engine_used_bytes = ledger_.engine_used_bytes();
  s.kv_reserved_bytes = ledger_.kv_reserved();
  s.activation_reserve_bytes = ledger_.ActivationReserve();
  s.reserved_bytes = ledger_.Reserved();
  s.free_bytes = ledger_.FreeBytes();
  s.active_leases = static_cast<uint32_t>(ledger_.size());
  s.queued_requests = static_cast<uint32_t>(queue_.size());
  for (int i = 0; i < kNumPriorities; ++i) {
    s.queued_by_priority[i] =
        static_cast<uint32_t>(queue_.count(static_cast<Priority>(i)));
  }
  s.queued_bytes = queue_.bytes();
  s.memory_pressure = memory_pressure_;
  s.draining = draining_;
  return s;
}

absl::Duration Controller::EstimateRetryAfter(Priority priority,
                                              uint64_t bytes) const {
  absl::MutexLock lock(&mu_);
  return RetryAfterLocked(priority, bytes, 0, clock_->Now());
}

// --------------------------------------------------------------- Ledger ---

AdmitOutcome Controller::GrantLocked(const AdmitTicket& ticket,
                                     absl::Time now) {
  AdmitOutcome outcome;
  outcome.admitted = true;
  outcome.lease_id = ledger_.Grant(ticket.request_id, ticket.cost, now);
  outcome.reserved_bytes = ticket.cost.kv_bytes + ticket.cost.activation_bytes;
  return outcome;
}

uint64_t Controller::FreeLeaseLocked(uint64_t seq, absl::Time now,
                                     LeaseEnd end) {
  const LeaseLedger::Freed freed = ledger_.Free(seq, now, end);
  retry_.ObserveRelease(freed.reserved_freed, freed.held, now);
  return freed.bytes;
}

void Controller::ExpireLeasesLocked(absl::Time now, Completions& out) {
  ledger_.Expire(now, [&](const LeaseLedger::Freed& freed) {
    retry_.ObserveRelease(freed.reserved_freed, freed.held, now);
    out.expired_bytes.push_back(freed.bytes);
  });
}

// ---------------------------------------------------------------- Queue ---

void Controller::AnswerQueuedLocked(std::unique_ptr<FairQueue::Entry> entry,
                                    AdmitOutcome outcome, absl::Time now,
                                    Completions& out) {
  outcome.queued_for = now - entry->enqueued_at;
  out.answers.push_back(
      {entry->ticket.priority, std::move(outcome), std::move(entry->done)});
}

void Controller::RejectQueuedLocked(FairQueue::Entry* entry,
                                    RejectReason reason,
                                    absl::string_view message, absl::Time now,
                                    Completions& out) {
  // The estimate counts the entry as still queued (own_queued_bytes).
  AdmitOutcome outcome =
      RejectionLocked(reason, entry->ticket.priority, entry->bytes,
                      entry->bytes, std::string(message), now);
  AnswerQueuedLocked(queue_.Remove(entry), std::move(outcome), now, out);
}

bool Controller::MakeRoomLocked(Priority priority, uint64_t bytes,
                                absl::Time now, Completions& out) {
  if (queue_.HasRoom(bytes)) return true;
  if (!queue_.CanShedFor(priority, bytes)) return false;
  while (!queue_.HasRoom(bytes)) {
    RejectQueuedLocked(queue_.ShedCandidate(), RejectReason::kShed,
                       absl::StrCat("shed for a ", PriorityName(priority),
                                    " request on a full queue"),
                       now, out);
  }
  return true;
}

void Controller::TimeOutQueuedLocked(absl::Time now, Completions& out) {
  while (FairQueue::Entry* entry = queue_.Expired(now)) {
    if (memory_pressure_) {
      // The wait ended while admission was paused: say why.
      RejectQueuedLocked(entry, RejectReason::kMemoryPressure,
                         pressure_message_, now, out);
    } else {
      RejectQueuedLocked(entry, RejectReason::kQueueTimeout,
                         "no room before the deadline", now, out);
    }
  }
}

void Controller::DispatchLocked(absl::Time now, Completions& out) {
  TimeOutQueuedLocked(now, out);
  if (memory_pressure_ || draining_) return;
  const auto fits = [this](const AdmitCost& cost) {
    return ledger_.Fits(cost);
  };
  while (FairQueue::Entry* head = queue_.Head()) {
    FairQueue::Entry* pick = nullptr;
    if (ledger_.Fits(head->ticket.cost)) {
      pick = head;
    } else if (head->bypassed < options_.backfill_limit) {
      pick = queue_.FindBackfill(*head, fits);
      if (pick != nullptr) ++head->bypassed;
    }
    if (pick == nullptr) return;  // the head waits for bytes to be freed
    std::unique_ptr<FairQueue::Entry> entry = queue_.TakeForDispatch(pick);
    AdmitOutcome outcome = GrantLocked(entry->ticket, now);
    AnswerQueuedLocked(std::move(entry), std::move(outcome), now, out);
  }
}

// ---------------------------------------------------------- retry_after ---

absl::Duration Controller::RetryAfterLocked(Priority priority,
                                            uint64_t own_bytes,
                                            uint64_t own_queued_bytes,
                                            absl::Time now) const {
  // Bytes that must be freed before this request fits: everything queued at
  // its priority or above (ahead of it, roughly), plus its own, minus free.
  uint64_t needed = SaturatingAdd(own_bytes, queue_.BytesAtOrAbove(priority));
  needed -= std::min(needed, own_queued_bytes);
  const uint64_t free = ledger_.FreeBytes();
  if (needed <= free) return retry_.RetryAfter(needed, free, now);
  // Never longer than the leases' remaining lifetimes explain: the missing
  // bytes are free once enough live leases expire by TTL.
  return retry_.RetryAfter(needed, free, now,
                           ledger_.TimeUntilExpiriesFree(needed - free, now));
}

AdmitOutcome Controller::RejectionLocked(RejectReason reason, Priority priority,
                                         uint64_t bytes,
                                         uint64_t own_queued_bytes,
                                         std::string message,
                                         absl::Time now) const {
  AdmitOutcome outcome;
  outcome.reason = reason;
  outcome.message = std::move(message);
  if (reason != RejectReason::kNeverFits &&
      reason != RejectReason::kCancelled) {
    outcome.retry_after =
        RetryAfterLocked(priority, bytes, own_queued_bytes, now);
  }
  return outcome;
}

// ------------------------------------------------------------ Utilities ---

void Controller::Run(Completions& completions) {
  // Records of this call's ledger changes are durable before it answers.
  if (options_.lease_observer != nullptr) options_.lease_observer->Commit();
  ControllerListener* listener = options_.listener;
  if (listener != nullptr) {
    for (uint64_t bytes : completions.expired_bytes) {
      listener->OnLeaseExpired(bytes);
    }
  }
  if (listener != nullptr) {
    uint64_t capacity, used;
    uint32_t queued;
    {
      absl::MutexLock lock(&mu_);
      capacity = capacity_bytes_;
      used = ledger_.AdmissionReserved();
      queued = static_cast<uint32_t>(queue_.size());
    }
    listener->OnBudget(capacity, used, queued);
  }
  for (Completions::Answer& answer : completions.answers) {
    if (listener != nullptr) {
      listener->OnDecision(answer.priority, answer.outcome);
    }
    std::move(answer.done)(std::move(answer.outcome));
  }
}

absl::Status Controller::CheckInvariants() const {
  absl::MutexLock lock(&mu_);
  if (absl::Status ledger = ledger_.CheckInvariants(); !ledger.ok()) {
    return ledger;
  }
  return queue_.CheckInvariants();
}

}  // namespace kvgate
