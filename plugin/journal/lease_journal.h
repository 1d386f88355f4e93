// LeaseJournal: an append-only record of kvgated's leases in a state
// directory, so that a kvgated killed without warning (kill -9, OOM killer,
// a node agent) comes back knowing which leases the engine still holds and
// never admits past memory that is still in use.
//
// Each model pool's Controller gets ObserverFor(model) as its
// Options::lease_observer; every grant, renewal, release and expiry is then
// appended, under the controller's lock and so in ledger order, with one
// write(2) per record. At start-up Open() replays the journal, returns the
// leases still live (those whose expiry wall time has not passed) for
// Controller::RestoreLease, and compacts: it writes a fresh journal of the
// live leases to a temporary file, fsyncs it, renames it over the old one
// and fsyncs the directory. The same compaction runs online once
// Options::compact_min_bytes have been appended and the file is more than
// twice the size of its live records, so the file stays bounded.
//
// Format (state_dir/leases.journal): a text file of one record per line,
//   <crc32 of payload, 8 lower-case hex digits> TAB <payload> LF
// whose payload is TAB-separated fields, strings C-escaped:
//   V 1                                                  format version
//   G <model> <lease_id> <request_id> <kv_bytes> <activation_bytes> <expires>
//   N <model> <lease_id> <expires>                       renewed
//   R <model> <lease_id>                                 released
//   E <model> <lease_id>                                 expired
// The file starts with the version record; a compacted file is the version
// record and one G record per live lease. The codec of one record (the exact
// bytes, the CRC, every field and every decoding error) is journal_record.h.
// Replay applies the records in order and stops at the first one that does
// not decode (a write torn by the crash, or damage); what follows is
// reported in Replay, logged by the caller and cut away by the compaction.
// A journal of another format version is refused, not cut. The design is in
// docs/design.md, section "Lease journal".
//
// Durability (Options::fsync). Each record is written with write(2) before
// the controller's lock is released, so it is in the kernel's page cache and
// survives the death of the process under every policy; the policy decides
// what survives a crash of the machine (power loss, kernel panic):
//   kAlways   (default) fdatasync before the answer of the call that changed
//             a lease goes out: no admitted lease is ever lost. Costs one
//             fdatasync per Admit, Release and Renew (concurrent calls share
//             one: group commit); on a local NVMe disk that is tens of
//             microseconds, on network storage it may be milliseconds.
//   kInterval a background thread fdatasyncs every fsync_interval: a machine
//             crash loses at most that much.
//   kNever    the kernel writes back when it likes (about 30 s on Linux).
// A kvgated on a machine that crashed usually comes back with a fresh GPU
// and engine, where lost leases do not matter; the policy exists for the case
// where the engine's pod outlives kvgated's node-local state.
//
// A state directory serves one kvgated at a time (an flock on
// state_dir/lock); a second one fails to open it. When a write fails (disk
// full) the journal logs it once and stops recording; admission goes on.
#ifndef KVGATE_PLUGIN_JOURNAL_LEASE_JOURNAL_H_
#define KVGATE_PLUGIN_JOURNAL_LEASE_JOURNAL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "plugin/admission/controller.h"
#include "plugin/journal/journal_record.h"

namespace kvgate {

// The lease journal of one state directory: records the leases of every
// model's Controller (through ObserverFor) and, at Open, replays them. It is
// thread-safe; the file comment above covers format, durability and locking.
class LeaseJournal {
 public:
  // When appended records are fdatasync'ed (see Durability above).
  enum class FsyncPolicy { kAlways, kInterval, kNever };

  // "always", "interval", "never"; InvalidArgument otherwise.
  static absl::StatusOr<FsyncPolicy> ParseFsyncPolicy(absl::string_view name);

  // How Open sets the journal up.
  struct Options {
    // Directory of the journal; created (mode 0700) if missing, its parent
    // must exist. Required.
    std::string state_dir;
    FsyncPolicy fsync = FsyncPolicy::kAlways;
    // For kInterval (> 0).
    absl::Duration fsync_interval = absl::Milliseconds(100);
    // Online compaction runs once this many bytes were appended since the
    // last one and the file is more than twice its live records.
    uint64_t compact_min_bytes = uint64_t{4} << 20;
    // Models served; leases of other models are dropped at replay (counted
    // in Replay::unknown_model). Empty: keep every model.
    absl::flat_hash_set<std::string> models;
  };

  // A lease found live by the replay, with its model.
  struct JournaledLease {
    std::string model;
    LeaseRecord lease;  // expires_at is wall time
  };

  // What Open found.
  struct Replay {
    std::vector<JournaledLease> live;  // to restore, in journal order
    uint64_t records = 0;              // good records read
    uint64_t expired = 0;        // live at the crash, past their expiry by now
    uint64_t unknown_model = 0;  // live, of a model not in Options::models
    // The torn or corrupt tail cut away: its offset, size and why.
    uint64_t dropped_offset = 0;
    uint64_t dropped_bytes = 0;
    std::string dropped_reason;
  };

  // What Open returns: the journal, open for appending, and its replay.
  struct Opened {
    std::unique_ptr<LeaseJournal> journal;
    Replay replay;
  };

  // Locks the state directory, replays its journal (if any) as of wall time
  // `now`, compacts, and opens the journal for appending. InvalidArgument for
  // bad options; FailedPrecondition when the directory cannot be created or
  // written, is locked by another process, or holds a journal of an unknown
  // version.
  static absl::StatusOr<Opened> Open(const Options& options, absl::Time now);

  LeaseJournal(const LeaseJournal&) = delete;
  LeaseJournal& operator=(const LeaseJournal&) = delete;
  // Syncs (unless kNever), stops the interval thread, unlocks the directory.
  // The controllers that use its observers must be gone or idle.
  ~LeaseJournal();

  // The observer for `model`'s controller; the same one on every call. Owned
  // by the journal and valid for its lifetime.
  LeaseObserver* ObserverFor(const std::string& model);

  // Rewrites the journal as its live leases (temp file, fsync, rename, fsync
  // of the directory).
  absl::Status Compact();

  const std::string& path() const { return path_; }
  // Number of compactions since Open (the one in Open included).
  uint64_t compactions() const;
  // Number of leases live in the journal now.
  size_t live_leases() const;

 private:
  // The observer ObserverFor returns: records one model's lease changes.
  class ModelObserver;
  // One model's live leases and its observer.
  struct ModelLeases;

  LeaseJournal(const Options& options, std::string path, int lock_fd);

  // Replays `text` (the journal file) into models_ and keeps there only the
  // leases live at `now`, of models served; FailedPrecondition for a journal
  // of another format version.
  absl::StatusOr<Replay> ReplayLocked(absl::string_view text, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies one decoded record to models_.
  void ApplyLocked(JournalRecord record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The leases of `model`, created empty if new.
  ModelLeases& LeasesLocked(const std::string& model)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Appends one encoded record; compacts when due.
  void AppendLocked(const std::string& record)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CompactLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // fdatasync of everything appended so far (group commit).
  void Sync();
  void RunInterval();

  const Options options_;
  const std::string path_;
  const int lock_fd_;

  mutable absl::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_) = -1;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t file_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t appended_since_compaction_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t live_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // size of their G records
  uint64_t compactions_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t written_ ABSL_GUARDED_BY(mu_) = 0;  // records appended, ever
  absl::flat_hash_map<std::string, std::unique_ptr<ModelLeases>> models_
      ABSL_GUARDED_BY(mu_);

  absl::Mutex sync_mu_;  // one fdatasync at a time; taken before mu_
  std::atomic<uint64_t> synced_{0};  // records known durable

  absl::Notification stop_;
  std::thread interval_thread_;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_JOURNAL_LEASE_JOURNAL_H_
