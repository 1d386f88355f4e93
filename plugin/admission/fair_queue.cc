#include "plugin/admission/fair_queue.h"

#include <algorithm>

namespace kvgate {

struct FairQueue::TenantQueue {
  std::string name;
  double weight = 1.0;
  double served = 0;  // bytes served / weight, on the level's virtual clock
  uint64_t seq = 0;   // activation order: breaks ties in `served`
  std::list<Entry*> fifo;
};

namespace {
struct ByServed {
  template <typename T>
  bool operator()(const T* a, const T* b) const {
    if (a->served != b->served) return a->served < b->served;
    return a->seq < b->seq;
  }
};
}  // namespace

// One priority's share of the queue: the tenants with queued requests,
// ordered by weighted bytes served.
struct FairQueue::PriorityLevel {
  absl::flat_hash_map<std::string, std::unique_ptr<TenantQueue>> active;
  std::set<TenantQueue*, ByServed> order;
  // Fairness position of tenants that emptied their queue; a returning tenant
  // resumes at max(its position, vclock).
  absl::flat_hash_map<std::string, double> idle_served;
  // The lowest `served` among active tenants at the last dispatch; never
  // decreases. A newly active tenant starts here.
  double vclock = 0;
  std::list<Entry*> arrivals;  // arrival order (newest last)
  uint64_t bytes = 0;
  size_t count = 0;
};

FairQueue::FairQueue(Options options) : options_(std::move(options)) {
  for (auto& level : levels_) level = std::make_unique<PriorityLevel>();
}

FairQueue::~FairQueue() = default;

double FairQueue::TenantWeight(const std::string& tenant) const {
  auto it = options_.tenant_weights.find(tenant);
  return it == options_.tenant_weights.end() ? 1.0 : it->second;
}

FairQueue::TenantQueue* FairQueue::Activate(PriorityLevel& level,
                                            const std::string& name) {
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
  return it->second.get();
}

void FairQueue::Deactivate(PriorityLevel& level, TenantQueue* tenant) {
  level.order.erase(tenant);
  if (level.idle_served.size() >= kMaxIdleTenants) {
    // Positions at or behind the virtual clock carry no information.
    for (auto it = level.idle_served.begin(); it != level.idle_served.end();) {
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

uint64_t FairQueue::Push(std::unique_ptr<Entry> entry) {
  Entry* raw = entry.get();
  raw->handle = next_handle_++;
  raw->bypassed = 0;

  PriorityLevel& level = LevelOf(*raw);
  TenantQueue* tenant = Activate(level, raw->ticket.tenant);
  raw->tenant = tenant;
  raw->in_tenant = tenant->fifo.insert(tenant->fifo.end(), raw);
  raw->in_arrivals = level.arrivals.insert(level.arrivals.end(), raw);
  level.bytes += raw->bytes;
  ++level.count;
  bytes_ += raw->bytes;
  deadlines_.insert({raw->deadline, raw->handle});
  by_request_[raw->ticket.request_id] = raw->handle;
  const uint64_t handle = raw->handle;
  entries_[handle] = std::move(entry);
  return handle;
}

FairQueue::Entry* FairQueue::Head() const {
  for (const auto& level : levels_) {
    if (!level->order.empty()) return (*level->order.begin())->fifo.front();
  }
  return nullptr;
}

FairQueue::Entry* FairQueue::FindBackfill(
    const Entry& head, absl::FunctionRef<bool(const AdmitCost&)> fits) const {
  // Walks the queue in dispatch order, examining at most backfill_scan_limit
  // entries, so a dispatch stays cheap however long the queue is.
  size_t examined = 0;
  for (const auto& level : levels_) {
    for (const TenantQueue* tenant : level->order) {
      for (Entry* entry : tenant->fifo) {
        if (entry == &head) continue;
        if (++examined > options_.backfill_scan_limit) return nullptr;
        if (entry->bytes < head.bytes && fits(entry->ticket.cost)) {
          return entry;
        }
      }
    }
  }
  return nullptr;
}

std::unique_ptr<FairQueue::Entry> FairQueue::TakeForDispatch(Entry* entry) {
  // Charge the tenant for the bytes served before it leaves the queue.
  PriorityLevel& level = LevelOf(*entry);
  level.vclock = std::max(level.vclock, (*level.order.begin())->served);
  TenantQueue* tenant = entry->tenant;
  level.order.erase(tenant);
  tenant->served += static_cast<double>(entry->bytes) / tenant->weight;
  level.order.insert(tenant);
  return Remove(entry);
}

std::unique_ptr<FairQueue::Entry> FairQueue::Remove(Entry* entry) {
  PriorityLevel& level = LevelOf(*entry);
  TenantQueue* tenant = entry->tenant;
  tenant->fifo.erase(entry->in_tenant);
  if (tenant->fifo.empty()) Deactivate(level, tenant);
  entry->tenant = nullptr;
  level.arrivals.erase(entry->in_arrivals);
  level.bytes -= entry->bytes;
  --level.count;
  bytes_ -= entry->bytes;
  deadlines_.erase({entry->deadline, entry->handle});
  by_request_.erase(entry->ticket.request_id);
  auto it = entries_.find(entry->handle);
  std::unique_ptr<Entry> owned = std::move(it->second);
  entries_.erase(it);
  return owned;
}

FairQueue::Entry* FairQueue::Expired(absl::Time now) const {
  if (deadlines_.empty() || deadlines_.begin()->first > now) return nullptr;
  return entries_.at(deadlines_.begin()->second).get();
}

bool FairQueue::CanShedFor(Priority priority, uint64_t bytes) const {
  if (priority == Priority::kSheddable) return false;
  const PriorityLevel& shed = *levels_[static_cast<int>(Priority::kSheddable)];
  return HasRoom(entries_.size() - shed.count, bytes_ - shed.bytes, bytes);
}

FairQueue::Entry* FairQueue::ShedCandidate() const {
  const PriorityLevel& shed = *levels_[static_cast<int>(Priority::kSheddable)];
  return shed.arrivals.empty() ? nullptr : shed.arrivals.back();
}

size_t FairQueue::count(Priority priority) const {
  return levels_[static_cast<int>(priority)]->count;
}

uint64_t FairQueue::bytes(Priority priority) const {
  return levels_[static_cast<int>(priority)]->bytes;
}

uint64_t FairQueue::BytesAtOrAbove(Priority priority) const {
  uint64_t sum = 0;
  for (int i = 0; i <= static_cast<int>(priority); ++i) {
    sum = admission_internal::SaturatingAdd(sum, levels_[i]->bytes);
  }
  return sum;
}

size_t FairQueue::idle_tenants(Priority priority) const {
  return levels_[static_cast<int>(priority)]->idle_served.size();
}

absl::Status FairQueue::CheckInvariants() const {
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
      for (const Entry* entry : tenant->fifo) {
        ++level_count;
        level_bytes += entry->bytes;
      }
    }
    if (level_count != level->count || level_bytes != level->bytes ||
        level->arrivals.size() != level->count) {
      return absl::InternalError("priority level counters drifted");
    }
    count += level_count;
    bytes += level_bytes;
  }
  if (count != entries_.size() || bytes != bytes_ ||
      deadlines_.size() != count || by_request_.size() != count) {
    return absl::InternalError("queue counters drifted");
  }
  if (count > options_.max_requests ||
      (bytes > options_.max_bytes && !lowered_)) {
    return absl::InternalError("queue over its bounds");
  }
  return absl::OkStatus();
}

}  // namespace kvgate
