#include "plugin/server/lease_restore.h"

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "plugin/base/json_log.h"

namespace kvgate {

absl::StatusOr<LeaseJournal::Opened> OpenLeaseJournal(
    LeaseJournal::Options options,
    const std::vector<ModelPoolSettings>& models) {
  for (const ModelPoolSettings& m : models) options.models.insert(m.name);
  return LeaseJournal::Open(options, absl::Now());
}

void RestoreLeases(const LeaseJournal::Replay& replay,
                   const ModelRegistry& registry, LeaseJournal& journal) {
  if (replay.dropped_bytes > 0) {
    LogWarning("lease journal: dropped a torn or corrupt tail",
               {{"path", journal.path()},
                {"offset", absl::StrCat(replay.dropped_offset)},
                {"dropped_bytes", absl::StrCat(replay.dropped_bytes)},
                {"reason", replay.dropped_reason}});
  }
  uint64_t restored = 0;
  for (const LeaseJournal::JournaledLease& l : replay.live) {
    ModelPool* pool = registry.Find(l.model);
    const absl::Status s = pool == nullptr
                               ? absl::NotFoundError("model not served")
                               : pool->controller().RestoreLease(l.lease);
    if (s.ok()) {
      ++restored;
      continue;
    }
    LogWarning("lease journal: lease not restored",
               {{"model", l.model},
                {"lease_id", l.lease.lease_id},
                {"error", std::string(s.message())}});
    journal.ObserverFor(l.model)->OnEnded(l.lease.lease_id, LeaseEnd::kExpired);
  }
  LogInfo("lease journal replayed",
          {{"path", journal.path()},
           {"records", absl::StrCat(replay.records)},
           {"restored_leases", absl::StrCat(restored)},
           {"expired_leases", absl::StrCat(replay.expired)},
           {"unknown_model_leases", absl::StrCat(replay.unknown_model)}});
}

}  // namespace kvgate
