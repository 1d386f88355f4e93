#include "plugin/admission/controller.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <optional>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvgate {
namespace {

constexpr std::array<absl::string_view, kNumPriorities> kPriorityNames = {
    "CRITICAL", "STANDARD", "SHEDDABLE"};

struct ReasonRow {
  RejectReason reason;
  absl::string_view name;
};
constexpr ReasonRow kReasonNames[] = {
    {RejectReason::kNone, ""},
    {RejectReason::kQueueTimeout, "QUEUE_TIMEOUT"},
    {RejectReason::kQueueFull, "QUEUE_FULL"},
    {RejectReason::kNeverFits, "NEVER_FITS"},
    {RejectReason::kMemoryPressure, "MEMORY_PRESSURE"},
    {RejectReason::kShed, "SHED"},
    {RejectReason::kDraining, "DRAINING"},
    {RejectReason::kCancelled, "CANCELLED"},
};

// Idle tenants whose fairness position is remembered, per priority, before
// the memory is pruned (tenant names come from clients, so it must be bounded).
constexpr size_t kMaxIdleTenants = 4096;

bool CheckedAdd(uint64_t a, uint64_t b, uint64_t* sum) {
  return !__builtin_add_overflow(a, b, sum);
}

uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  uint64_t sum;
  return CheckedAdd(a, b, &sum) ? sum : std::numeric_limits<uint64_t>::max();
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

absl::string_view PriorityName(Priority priority) {
  const int index = static_cast<int>(priority);
  if (index < 0 || index >= kNumPriorities) return "";
  return kPriorityNames[index];
}

absl::string_view RejectReasonName(RejectReason reason) {
  for (const ReasonRow& row : kReasonNames) {
    if (row.reason == reason) return row.name;
  }
  return "";
}

struct Controller::Lease {
  std::string request_id;
  std::string restored_id;  // the old lease id of a restored lease, else""

  AdmitCost cost;
  uint64_t bytes = 0;  // kv + activation
  absl::Time granted_at;
  absl::Time expires_at;
};

struct Controller::QueuedRequest {
  uint64_t handle = 0;
  AdmitTicket ticket;
  uint64_t bytes = 0;
  absl::Time enqueued_at;
  absl::Time deadline;
  AdmitCallback done;
  size_t bypassed = 0;  // requests backfilled past this one while it was head
  TenantQueue* tenant = nullptr;
  std::list<QueuedRequest*>::iterator in_tenant;
  std::list<QueuedRequest*>::iterator in_arrivals;
};

struct Controller::TenantQueue {
  std::string name;
  double weight = 1.0;
  double served = 0;  // bytes served / weight, on the level's virtual clock
  uint64_t seq = 0;   // activation order: breaks ties in `served`
  std::list<QueuedRequest*> fifo;
};

namespace {
template <typename T>
struct ByServed {
  bool operator()(const T* a, const T* b) const {
    if (a->served != b->served) return a->served < b->served;
    return a->seq < b->seq;
  }
};
}  // namespace

// One priority's share of the queue: the tenants with queued requests,
// ordered by weighted bytes served.
struct Controller::PriorityLevel {
  absl::flat_hash_map<std::string, std::unique_ptr<TenantQueue>> active;
  std::set<TenantQueue*, ByServed<TenantQueue>> order;
  // Fairness position of tenants that emptied their queue; a returning tenant
  // resumes at max(its position, vclock).
  absl::flat_hash_map<std::string, double> idle_served;
  // The lowest `served` among active tenants at the last dispatch; never
  // decreases. A newly active tenant starts here.
  double vclock = 0;
  std::list<QueuedRequest*> arrivals;  // arrival order (newest last)
  uint64_t bytes = 0;
  size_t count = 0;
};

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

Controller::Controller(const Options& options, Clock* clock,
                       uint64_t lease_prefix)
    : options_([&] {
        Options o = options;
        if (o.max_queue_bytes == 0) o.max_queue_bytes = o.capacity_bytes;
        return o;
      }()),
      clock_(clock),
      lease_prefix_(lease_prefix),
      lease_prefix_text_(absl::StrFormat("%016x", lease_prefix)),
      created_at_(clock->Now()) {
  for (auto& level : levels_) level = std::make_unique<PriorityLevel>();
  absl::MutexLock lock(&mu_);
  release_rate_at_ = created_at_;
  mean_hold_ = options_.assumed_lease_hold;
}

Controller::~Controller() { Drain(); }

// ---------------------------------------------------------------- Admit ---

absl::StatusOr<uint64_t> Controller::Admit(AdmitTicket ticket,
                                           AdmitCallback done) {
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
  if (ticket.tenant.empty()) ticket.tenant = "default";
  const Priority priority = ticket.priority;

  Completions out;
  uint64_t handle = 0;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    if (queued_by_request_.contains(ticket.request_id)) {
      return absl::AlreadyExistsError(absl::StrCat(
          "request_id \"", ticket.request_id, "\" is already queued"));
    }
    // A retry of an admitted request gets its lease back.
    bool answered = false;
    if (auto it = lease_by_request_.find(ticket.request_id);
        it != lease_by_request_.end()) {
      const uint64_t seq = it->second;
      const Lease& lease = leases_.at(seq);
      if (lease.expires_at > now) {
        AdmitOutcome outcome;
        outcome.admitted = true;
        outcome.lease_id = LeaseIdLocked(seq, lease);
        outcome.reserved_bytes = lease.bytes;
        outcome.message = "already admitted: same lease";
        out.answers.push_back({priority, std::move(outcome), std::move(done)});
        answered = true;
      } else {
        out.expired_bytes.push_back(
            FreeLeaseLocked(seq, now, LeaseEnd::kExpired));
        DispatchLocked(now, out);
      }
    }

    if (!answered) {
      const AdmitCost& cost = ticket.cost;
      QueuedRequest* head = HeadLocked();
      std::optional<AdmitOutcome> answer;
      if (bytes > options_.capacity_bytes || bytes > options_.max_queue_bytes) {
        answer = RejectionLocked(
            RejectReason::kNeverFits, priority, bytes, 0,
            absl::StrCat("needs ", bytes, " bytes; capacity is ",
                         options_.capacity_bytes, ", queue holds at most ",
                         options_.max_queue_bytes),
            now);
      } else if (draining_) {
        answer = RejectionLocked(RejectReason::kDraining, priority, bytes, 0,
                                 "kvgate is draining", now);
      } else if (memory_pressure_) {
        answer = RejectionLocked(RejectReason::kMemoryPressure, priority, bytes,
                                 0, "device free memory is low", now);
      } else if (FitsLocked(cost) &&
                 (head == nullptr || priority < head->ticket.priority)) {
        // Nothing queued at this priority or above: no one to overtake.
        answer = GrantLocked(ticket, now);
      } else if (FitsLocked(cost) && head != nullptr &&
                 head->bypassed < options_.backfill_limit &&
                 bytes < head->bytes) {
        // Backfill past a head that does not fit.
        ++head->bypassed;
        answer = GrantLocked(ticket, now);
      } else {
        const absl::Time deadline =
            std::min(ticket.deadline, now + options_.max_queue_wait);
        if (deadline <= now) {
          answer =
              RejectionLocked(RejectReason::kQueueTimeout, priority, bytes, 0,
                              "deadline passed before it could fit", now);
        } else if (!MakeRoomLocked(priority, bytes, now, out)) {
          answer = RejectionLocked(
              RejectReason::kQueueFull, priority, bytes, 0,
              absl::StrCat("queue is full (", queued_.size(), " requests, ",
                           queued_bytes_, " bytes)"),
              now);
        } else {
          auto request = std::make_unique<QueuedRequest>();
          handle = next_handle_++;
          request->handle = handle;
          request->ticket = std::move(ticket);
          request->bytes = bytes;
          request->enqueued_at = now;
          request->deadline = deadline;
          request->done = std::move(done);
          EnqueueLocked(std::move(request));
          DispatchLocked(now, out);
          if (!queued_.contains(handle)) handle = 0;
        }
      }
      if (answer.has_value()) {
        out.answers.push_back({priority, *std::move(answer), std::move(done)});
      }
    }
  }
  Run(out);
  return handle;
}

void Controller::Cancel(uint64_t handle) {
  Completions out;
  {
    absl::MutexLock lock(&mu_);
    auto it = queued_.find(handle);
    if (it == queued_.end()) return;
    const absl::Time now = clock_->Now();
    RejectQueuedLocked(it->second.get(), RejectReason::kCancelled,
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
    absl::StatusOr<uint64_t> seq = ParseLeaseId(lease_id);
    if (!seq.ok()) return seq.status();
    if (!leases_.contains(*seq)) return 0;  // already released or expired
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
    absl::StatusOr<uint64_t> seq = ParseLeaseId(lease_id);
    if (!seq.ok()) return seq.status();
    auto it = leases_.find(*seq);
    const absl::Time now = clock_->Now();
    if (it == leases_.end() || it->second.expires_at <= now) {
      return absl::NotFoundError(absl::StrCat(
          "lease ", lease_id, " was released or expired; admit again"));
    }
    Lease& lease = it->second;
    lease_expiries_.erase({lease.expires_at, *seq});
    lease.expires_at = now + options_.lease_ttl;
    lease_expiries_.insert({lease.expires_at, *seq});
    if (options_.lease_observer != nullptr) {
      options_.lease_observer->OnRenewed(lease_id, lease.expires_at);
    }
  }
  if (options_.lease_observer != nullptr) options_.lease_observer->Commit();
  return options_.lease_ttl;
}

absl::Status Controller::RestoreLease(const LeaseRecord& record) {
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
  absl::MutexLock lock(&mu_);
  if (restored_ids_.contains(record.lease_id) ||
      ParseLeaseId(record.lease_id).ok() ||
      lease_by_request_.contains(record.request_id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("lease ", record.lease_id, " (request \"",
                     record.request_id, "\") is already live"));
  }
  uint64_t kv = 0, activation_sum = 0;
  if (!CheckedAdd(kv_reserved_, record.cost.kv_bytes, &kv) ||
      !CheckedAdd(activation_sum_, record.cost.activation_bytes,
                  &activation_sum) ||
      !CheckedAdd(kv, std::max(activation_sum, ActivationReserveLocked()),
                  &bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lease ", record.lease_id, ": the ledger would overflow 64 bits"));
  }
  const uint64_t seq = next_lease_seq_++;
  Lease& lease = leases_[seq];
  lease.request_id = record.request_id;
  lease.restored_id = record.lease_id;
  lease.cost = record.cost;
  lease.bytes = record.cost.kv_bytes + record.cost.activation_bytes;
  lease.granted_at = clock_->Now();
  lease.expires_at = record.expires_at;
  kv_reserved_ = kv;
  activation_sum_ = activation_sum;
  activations_.insert(lease.cost.activation_bytes);
  lease_expiries_.insert({lease.expires_at, seq});
  lease_by_request_[lease.request_id] = seq;
  restored_ids_[record.lease_id] = seq;
  return absl::OkStatus();
}

absl::Time Controller::Tick() {
  Completions out;
  absl::Time next = absl::InfiniteFuture();
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    ExpireLeasesLocked(now, out);
    DispatchLocked(now, out);
    if (!lease_expiries_.empty()) next = lease_expiries_.begin()->first;
    if (!deadlines_.empty()) next = std::min(next, deadlines_.begin()->first);
  }
  Run(out);
  return next;
}

void Controller::SetMemoryPressure(bool under_pressure) {
  Completions out;
  {
    absl::MutexLock lock(&mu_);
    memory_pressure_ = under_pressure;
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
    while (QueuedRequest* head = HeadLocked()) {
      RejectQueuedLocked(head, RejectReason::kDraining, "kvgate is draining",
                         now, out);
    }
  }
  Run(out);
}

BudgetSnapshot Controller::Snapshot() const {
  absl::MutexLock lock(&mu_);
  BudgetSnapshot s;
  s.capacity_bytes = options_.capacity_bytes;
  s.kv_reserved_bytes = kv_reserved_;
  s.activation_reserve_bytes = ActivationReserveLocked();
  s.reserved_bytes = ReservedLocked();
  s.free_bytes = FreeBytesLocked();
  s.active_leases = static_cast<uint32_t>(leases_.size());
  s.queued_requests = static_cast<uint32_t>(queued_.size());
  for (int i = 0; i < kNumPriorities; ++i) {
    s.queued_by_priority[i] = static_cast<uint32_t>(levels_[i]->count);
  }
  s.queued_bytes = queued_bytes_;
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

uint64_t Controller::ActivationReserveLocked() const {
  if (options_.activation_sum) return activation_sum_;
  return activations_.empty() ? 0 : *activations_.rbegin();
}

uint64_t Controller::ReservedLocked() const {
  // Never overflows: every lease was admitted with the total <= capacity,
  // and RestoreLease checks the sum.
  return kv_reserved_ + ActivationReserveLocked();
}

uint64_t Controller::FreeBytesLocked() const {
  // Restored leases may hold more than a capacity that has since shrunk.
  const uint64_t reserved = ReservedLocked();
  return reserved < options_.capacity_bytes ? options_.capacity_bytes - reserved
                                            : 0;
}

bool Controller::FitsLocked(const AdmitCost& cost) const {
  uint64_t kv, activation, total;
  if (!CheckedAdd(kv_reserved_, cost.kv_bytes, &kv)) return false;
  if (options_.activation_sum) {
    if (!CheckedAdd(activation_sum_, cost.activation_bytes, &activation)) {
      return false;
    }
  } else {
    activation = std::max(ActivationReserveLocked(), cost.activation_bytes);
  }
  if (!CheckedAdd(kv, activation, &total)) return false;
  return total <= options_.capacity_bytes;
}

AdmitOutcome Controller::GrantLocked(const AdmitTicket& ticket,
                                     absl::Time now) {
  const uint64_t seq = next_lease_seq_++;
  Lease& lease = leases_[seq];
  lease.request_id = ticket.request_id;
  lease.cost = ticket.cost;
  lease.bytes = ticket.cost.kv_bytes + ticket.cost.activation_bytes;
  lease.granted_at = now;
  lease.expires_at = now + options_.lease_ttl;
  kv_reserved_ += lease.cost.kv_bytes;
  activation_sum_ += lease.cost.activation_bytes;
  activations_.insert(lease.cost.activation_bytes);
  lease_expiries_.insert({lease.expires_at, seq});
  lease_by_request_[lease.request_id] = seq;

  AdmitOutcome outcome;
  outcome.admitted = true;
  outcome.lease_id = LeaseIdFor(seq);
  outcome.reserved_bytes = lease.bytes;
  if (options_.lease_observer != nullptr) {
    options_.lease_observer->OnGranted(
        {outcome.lease_id, lease.request_id, lease.cost, lease.expires_at});
  }
  return outcome;
}

uint64_t Controller::FreeLeaseLocked(uint64_t seq, absl::Time now,
                                     LeaseEnd end) {
  auto it = leases_.find(seq);
  const Lease& lease = it->second;
  if (options_.lease_observer != nullptr) {
    options_.lease_observer->OnEnded(LeaseIdLocked(seq, lease), end);
  }
  const uint64_t reserved_before = ReservedLocked();
  kv_reserved_ -= lease.cost.kv_bytes;
  activation_sum_ -= lease.cost.activation_bytes;
  activations_.erase(activations_.find(lease.cost.activation_bytes));
  lease_expiries_.erase({lease.expires_at, seq});
  if (auto r = lease_by_request_.find(lease.request_id);
      r != lease_by_request_.end() && r->second == seq) {
    lease_by_request_.erase(r);
  }
  ObserveReleaseLocked(reserved_before - ReservedLocked(),
                       now - lease.granted_at, now);
  const uint64_t bytes = lease.bytes;
  leases_.erase(it);
  return bytes;
}

void Controller::ExpireLeasesLocked(absl::Time now, Completions& out) {
  while (!lease_expiries_.empty() && lease_expiries_.begin()->first <= now) {
    out.expired_bytes.push_back(FreeLeaseLocked(lease_expiries_.begin()->second,
                                                now, LeaseEnd::kExpired));
  }
}

std::string Controller::LeaseIdFor(uint64_t seq) const {
  return absl::StrCat(lease_prefix_text_, "-", seq);
}

std::string Controller::LeaseIdLocked(uint64_t seq, const Lease& lease) const {
  return lease.restored_id.empty() ? LeaseIdFor(seq) : lease.restored_id;
}

absl::StatusOr<uint64_t> Controller::ParseLeaseId(
    absl::string_view lease_id) const {
  constexpr size_t kPrefixLength = 16;
  uint64_t seq = 0;
  if (lease_id.size() > kPrefixLength + 1 && lease_id[kPrefixLength] == '-' &&
      lease_id.substr(0, kPrefixLength) == lease_prefix_text_) {
    const absl::string_view digits = lease_id.substr(kPrefixLength + 1);
    // Digits only, no leading zero, so that "+7" or "007" are not taken
    // for lease 7.
    const bool canonical =
        !digits.empty() && digits.size() <= 20 && digits[0] != '0' &&
        std::all_of(digits.begin(), digits.end(),
                    [](char c) { return c >= '0' && c <= '9'; });
    if (canonical && absl::SimpleAtoi(digits, &seq) && seq > 0 &&
        seq < next_lease_seq_) {
      return seq;
    }
  }
  if (auto it = restored_ids_.find(lease_id); it != restored_ids_.end()) {
    return it->second;
  }
  return absl::NotFoundError(
      absl::StrCat("lease \"", lease_id, "\" was not issued by this kvgate"));
}

// ---------------------------------------------------------------- Queue ---

double Controller::TenantWeight(const std::string& tenant) const {
  auto it = options_.tenant_weights.find(tenant);
  return it == options_.tenant_weights.end() ? 1.0 : it->second;
}

Controller::QueuedRequest* Controller::HeadLocked() const {
  for (const auto& level : levels_) {
    if (!level->order.empty()) return (*level->order.begin())->fifo.front();
  }
  return nullptr;
}

Controller::QueuedRequest* Controller::FindBackfillLocked(
    const QueuedRequest& head) const {
  // Walks the queue in dispatch order, examining at most backfill_scan_limit
  // entries, so a dispatch stays cheap however long the queue is.
  size_t examined = 0;
  for (const auto& level : levels_) {
    for (const TenantQueue* tenant : level->order) {
      for (QueuedRequest* request : tenant->fifo) {
        if (request == &head) continue;
        if (++examined > options_.backfill_scan_limit) return nullptr;
        if (request->bytes < head.bytes && FitsLocked(request->ticket.cost)) {
          return request;
        }
      }
    }
  }
  return nullptr;
}

void Controller::EnqueueLocked(std::unique_ptr<QueuedRequest> request) {
  PriorityLevel& level = *levels_[static_cast<int>(request->ticket.priority)];
  const std::string& name = request->ticket.tenant;
  auto [it, inserted] = level.active.try_emplace(name);
  if (inserted) {
    auto tenant = std::make_unique<TenantQueue>();
    tenant->name = name;
    tenant->weight = TenantWeight(name);
    tenant->served = level.vclock;
    if (auto idle = level.idle_served.find(name);
        idle != level.idle_served.end()) {
      tenant->served = std::max(idle->second, level.vclock);
      level.idle_served.erase(idle);
    }
    tenant->seq = next_tenant_seq_++;
    level.order.insert(tenant.get());
    it->second = std::move(tenant);
  }
  TenantQueue* tenant = it->second.get();
  QueuedRequest* raw = request.get();
  raw->tenant = tenant;
  raw->in_tenant = tenant->fifo.insert(tenant->fifo.end(), raw);
  raw->in_arrivals = level.arrivals.insert(level.arrivals.end(), raw);
  level.bytes += raw->bytes;
  ++level.count;
  queued_bytes_ += raw->bytes;
  deadlines_.insert({raw->deadline, raw->handle});
  queued_by_request_[raw->ticket.request_id] = raw->handle;
  queued_[raw->handle] = std::move(request);
}

std::unique_ptr<Controller::QueuedRequest> Controller::UnlinkLocked(
    QueuedRequest* request) {
  PriorityLevel& level = *levels_[static_cast<int>(request->ticket.priority)];
  TenantQueue* tenant = request->tenant;
  tenant->fifo.erase(request->in_tenant);
  if (tenant->fifo.empty()) {
    level.order.erase(tenant);
    if (level.idle_served.size() >= kMaxIdleTenants) {
      // Positions at or behind the virtual clock carry no information.
      for (auto it = level.idle_served.begin();
           it != level.idle_served.end();) {
        if (it->second <= level.vclock) {
          level.idle_served.erase(it++);
        } else {
          ++it;
        }
      }
      if (level.idle_served.size() >= kMaxIdleTenants / 2) {
        level.idle_served.clear();
      }
    }
    level.idle_served[tenant->name] = tenant->served;
    level.active.erase(tenant->name);  // destroys `tenant`
  }
  request->tenant = nullptr;
  level.arrivals.erase(request->in_arrivals);
  level.bytes -= request->bytes;
  --level.count;
  queued_bytes_ -= request->bytes;
  deadlines_.erase({request->deadline, request->handle});
  queued_by_request_.erase(request->ticket.request_id);
  auto it = queued_.find(request->handle);
  std::unique_ptr<QueuedRequest> owned = std::move(it->second);
  queued_.erase(it);
  return owned;
}

void Controller::AnswerQueuedLocked(QueuedRequest* request,
                                    AdmitOutcome outcome, absl::Time now,
                                    Completions& out) {
  outcome.queued_for = now - request->enqueued_at;
  std::unique_ptr<QueuedRequest> owned = UnlinkLocked(request);
  out.answers.push_back(
      {owned->ticket.priority, std::move(outcome), std::move(owned->done)});
}

void Controller::RejectQueuedLocked(QueuedRequest* request, RejectReason reason,
                                    absl::string_view message, absl::Time now,
                                    Completions& out) {
  AdmitOutcome outcome =
      RejectionLocked(reason, request->ticket.priority, request->bytes,
                      request->bytes, std::string(message), now);
  AnswerQueuedLocked(request, std::move(outcome), now, out);
}

bool Controller::MakeRoomLocked(Priority priority, uint64_t bytes,
                                absl::Time now, Completions& out) {
  auto room_for = [&](size_t count, uint64_t queued_bytes) {
    return count < options_.max_queue_requests &&
           SaturatingAdd(queued_bytes, bytes) <= options_.max_queue_bytes;
  };
  if (room_for(queued_.size(), queued_bytes_)) return true;
  if (priority == Priority::kSheddable) return false;
  // Only SHEDDABLE entries give way, newest first, and only when shedding
  // them all would be enough (never shed for nothing).
  PriorityLevel& shed = *levels_[static_cast<int>(Priority::kSheddable)];
  if (!room_for(queued_.size() - shed.count, queued_bytes_ - shed.bytes)) {
    return false;
  }
  while (!room_for(queued_.size(), queued_bytes_)) {
    RejectQueuedLocked(shed.arrivals.back(), RejectReason::kShed,
                       absl::StrCat("shed for a ", PriorityName(priority),
                                    " request on a full queue"),
                       now, out);
  }
  return true;
}

void Controller::TimeOutQueuedLocked(absl::Time now, Completions& out) {
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    QueuedRequest* request = queued_.at(deadlines_.begin()->second).get();
    RejectQueuedLocked(request, RejectReason::kQueueTimeout,
                       "no room before the deadline", now, out);
  }
}

void Controller::DispatchLocked(absl::Time now, Completions& out) {
  TimeOutQueuedLocked(now, out);
  if (memory_pressure_ || draining_) return;
  while (QueuedRequest* head = HeadLocked()) {
    QueuedRequest* pick = nullptr;
    if (FitsLocked(head->ticket.cost)) {
      pick = head;
    } else if (head->bypassed < options_.backfill_limit) {
      pick = FindBackfillLocked(*head);
      if (pick != nullptr) ++head->bypassed;
    }
    if (pick == nullptr) return;  // the head waits for bytes to be freed

    // Charge the tenant for the bytes served before it leaves the queue.
    PriorityLevel& level = *levels_[static_cast<int>(pick->ticket.priority)];
    level.vclock = std::max(level.vclock, (*level.order.begin())->served);
    TenantQueue* tenant = pick->tenant;
    level.order.erase(tenant);
    tenant->served += static_cast<double>(pick->bytes) / tenant->weight;
    level.order.insert(tenant);

    AdmitOutcome outcome = GrantLocked(pick->ticket, now);
    AnswerQueuedLocked(pick, std::move(outcome), now, out);
  }
}

// ---------------------------------------------------------- retry_after ---

void Controller::ObserveReleaseLocked(uint64_t freed_bytes, absl::Duration held,
                                      absl::Time now) {
  const double window = Seconds(options_.release_rate_window);
  const double elapsed = std::max(0.0, Seconds(now - release_rate_at_));
  release_rate_ = release_rate_ * std::exp(-elapsed / window) +
                  static_cast<double>(freed_bytes) / window;
  release_rate_at_ = std::max(release_rate_at_, now);
  held = std::max(held, absl::ZeroDuration());
  // EWMA weight 0.2: recent leases dominate after a handful of releases.
  mean_hold_ = release_seen_ ? mean_hold_ * 0.8 + held * 0.2 : held;
  release_seen_ = true;
}

absl::Duration Controller::RetryAfterLocked(Priority priority,
                                            uint64_t own_bytes,
                                            uint64_t own_queued_bytes,
                                            absl::Time now) const {
  // Bytes that must be freed before this request fits: everything queued at
  // its priority or above (ahead of it, roughly), plus its own, minus free.
  uint64_t needed = own_bytes;
  for (int i = 0; i <= static_cast<int>(priority); ++i) {
    needed = SaturatingAdd(needed, levels_[i]->bytes);
  }
  needed -= std::min(needed, own_queued_bytes);
  const uint64_t free_bytes = FreeBytesLocked();
  if (needed <= free_bytes) return kMinRetryAfter;
  needed -= free_bytes;

  // Release rate: decayed sum of freed bytes over the window, corrected for
  // the controller having observed for less than a few windows.
  const double window = Seconds(options_.release_rate_window);
  double rate = 0;
  if (release_seen_) {
    const double since = std::max(0.0, Seconds(now - release_rate_at_));
    const double observed = std::max(1.0, Seconds(now - created_at_));
    rate = release_rate_ * std::exp(-since / window) /
           (1 - std::exp(-observed / window));
  }
  if (rate < 1.0) {
    // No usable rate: assume the whole budget turns over once per mean lease
    // hold time (observed, or Options::assumed_lease_hold before any).
    rate = static_cast<double>(options_.capacity_bytes) /
           std::max(Seconds(mean_hold_), 1e-3);
  }
  const double seconds = static_cast<double>(needed) / rate;
  if (!(seconds < Seconds(kMaxRetryAfter))) return kMaxRetryAfter;
  return std::clamp(absl::Seconds(seconds), kMinRetryAfter, kMaxRetryAfter);
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
  for (Completions::Answer& answer : completions.answers) {
    if (listener != nullptr)
      listener->OnDecision(answer.priority, answer.outcome);
    std::move(answer.done)(std::move(answer.outcome));
  }
}

absl::Status Controller::CheckInvariants() const {
  absl::MutexLock lock(&mu_);
  uint64_t kv = 0, activation_sum = 0, activation_max = 0;
  for (const auto& [seq, lease] : leases_) {
    kv += lease.cost.kv_bytes;
    activation_sum += lease.cost.activation_bytes;
    activation_max = std::max(activation_max, lease.cost.activation_bytes);
    if (lease.bytes != lease.cost.kv_bytes + lease.cost.activation_bytes) {
      return absl::InternalError("lease bytes != kv + activation");
    }
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
  if (reserved > options_.capacity_bytes && restored_ids_.empty()) {
    return absl::InternalError(absl::StrCat(
        "reserved ", reserved, " > capacity ", options_.capacity_bytes));
  }
  if (lease_expiries_.size() != leases_.size() ||
      lease_by_request_.size() > leases_.size()) {
    return absl::InternalError("lease indexes out of step");
  }
  size_t count = 0;
  uint64_t bytes = 0;
  for (const auto& level : levels_) {
    size_t level_count = 0;
    uint64_t level_bytes = 0;
    if (level->order.size() != level->active.size()) {
      return absl::InternalError("tenant order out of step");
    }
    for (const TenantQueue* tenant : level->order) {
      if (tenant->fifo.empty()) return absl::InternalError("idle tenant");
      for (const QueuedRequest* request : tenant->fifo) {
        ++level_count;
        level_bytes += request->bytes;
      }
    }
    if (level_count != level->count || level_bytes != level->bytes ||
        level->arrivals.size() != level->count) {
      return absl::InternalError("priority level counters drifted");
    }
    count += level_count;
    bytes += level_bytes;
  }
  if (count != queued_.size() || bytes != queued_bytes_ ||
      deadlines_.size() != count || queued_by_request_.size() != count) {
    return absl::InternalError("queue counters drifted");
  }
  if (count > options_.max_queue_requests || bytes > options_.max_queue_bytes) {
    return absl::InternalError("queue over its bounds");
  }
  return absl::OkStatus();
}

}  // namespace kvgate
