// Crash recovery at start-up: the lease journal opened and replayed before
// any controller exists, then its live leases put back into their pools'
// controllers before the server accepts a call.
#ifndef KVGATE_PLUGIN_SERVER_LEASE_RESTORE_H_
#define KVGATE_PLUGIN_SERVER_LEASE_RESTORE_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "plugin/admission/model_pool.h"
#include "plugin/journal/lease_journal.h"

namespace kvgate {

// Opens the journal in `options.state_dir` as of now, keeping the leases of
// the models in `models` only (options.models is replaced by their names).
// The errors of LeaseJournal::Open.
absl::StatusOr<LeaseJournal::Opened> OpenLeaseJournal(
    LeaseJournal::Options options,
    const std::vector<ModelPoolSettings>& models);

// Puts the replay's live leases back into their controllers in `registry`
// and logs what the replay found (a torn or corrupt tail included). A lease
// that cannot be restored (its model is no longer served, or it no longer
// fits) is logged and journaled as expired.
void RestoreLeases(const LeaseJournal::Replay& replay,
                   const ModelRegistry& registry, LeaseJournal& journal);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_SERVER_LEASE_RESTORE_H_
