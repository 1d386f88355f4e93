#include "plugin/journal/lease_journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "plugin/base/json_log.h"

namespace kvgate {
namespace {

constexpr char kJournalName[] = "leases.journal";
constexpr char kLockName[] = "lock";

std::string Errno(absl::string_view what, const std::string& path) {
  return absl::StrCat(what, " ", path, ": ", std::strerror(errno));
}

bool WriteAll(int fd, absl::string_view data) {
  while (!data.empty()) {
    const ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

absl::Status FsyncPath(const std::string& path, int flags) {
  const int fd = open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return absl::FailedPreconditionError(Errno("cannot open", path));
  const int rc = fsync(fd);
  close(fd);
  if (rc != 0)
    return absl::FailedPreconditionError(Errno("cannot fsync", path));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::string();
    return absl::FailedPreconditionError(Errno("cannot read", path));
  }
  std::string text;
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      close(fd);
      return absl::FailedPreconditionError(Errno("cannot read", path));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return text;
}

// Creates `dir` (mode 0700) if missing and takes its flock; the lock's fd.
absl::StatusOr<int> LockStateDirectory(const std::string& dir) {
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        Errno("cannot create the state directory", dir));
  }
  const std::string lock_path = absl::StrCat(dir, "/", kLockName);
  const int lock_fd =
      open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) {
    return absl::FailedPreconditionError(Errno("cannot open", lock_path));
  }
  if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    close(lock_fd);
    return absl::FailedPreconditionError(absl::StrCat(
        "state directory ", dir,
        " is locked by another process (is another kvgated using it?)"));
  }
  return lock_fd;
}

}  // namespace

absl::StatusOr<LeaseJournal::FsyncPolicy> LeaseJournal::ParseFsyncPolicy(
    absl::string_view name) {
  static constexpr struct {
    absl::string_view name;
    FsyncPolicy policy;
  } kPolicies[] = {{"always", FsyncPolicy::kAlways},
                   {"interval", FsyncPolicy::kInterval},
                   {"never", FsyncPolicy::kNever}};
  for (const auto& row : kPolicies) {
    if (row.name == name) return row.policy;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown fsync policy '", name, "': expected always, interval or never"));
}

// The live leases of one model, as the journal knows them.
struct LeaseJournal::ModelLeases {
  std::string model;
  absl::flat_hash_map<std::string, LeaseRecord> live;
  std::unique_ptr<ModelObserver> observer;
};

// The LeaseObserver of one model's controller: encodes each change before
// taking the journal's lock, then updates the live set and appends under it.
class LeaseJournal::ModelObserver final : public LeaseObserver {
 public:
  ModelObserver(LeaseJournal* journal, ModelLeases* leases)
      : journal_(journal), leases_(leases) {}

  void OnGranted(const LeaseRecord& lease) override {
    const std::string record = EncodeGrantRecord(leases_->model, lease);
    absl::MutexLock lock(&journal_->mu_);
    journal_->live_bytes_ += record.size();
    leases_->live[lease.lease_id] = lease;
    journal_->AppendLocked(record);
  }

  void OnRenewed(absl::string_view lease_id, absl::Time expires_at) override {
    const std::string record =
        EncodeRenewalRecord(leases_->model, lease_id, expires_at);
    absl::MutexLock lock(&journal_->mu_);
    if (auto it = leases_->live.find(lease_id); it != leases_->live.end()) {
      it->second.expires_at = expires_at;
    }
    journal_->AppendLocked(record);
  }

  void OnEnded(absl::string_view lease_id, LeaseEnd end) override {
    const std::string record = EncodeEndRecord(leases_->model, lease_id, end);
    absl::MutexLock lock(&journal_->mu_);
    if (auto it = leases_->live.find(lease_id); it != leases_->live.end()) {
      const uint64_t size =
          EncodeGrantRecord(leases_->model, it->second).size();
      journal_->live_bytes_ -= std::min(journal_->live_bytes_, size);
      leases_->live.erase(it);
    }
    journal_->AppendLocked(record);
  }

  void Commit() override {
    if (journal_->options_.fsync == FsyncPolicy::kAlways) journal_->Sync();
  }

 private:
  LeaseJournal* const journal_;
  ModelLeases* const leases_;
};

LeaseJournal::LeaseJournal(const Options& options, std::string path,
                           int lock_fd)
    : options_(options), path_(std::move(path)), lock_fd_(lock_fd) {}

LeaseJournal::~LeaseJournal() {
  stop_.Notify();
  if (interval_thread_.joinable()) interval_thread_.join();
  if (options_.fsync != FsyncPolicy::kNever) Sync();
  absl::MutexLock lock(&mu_);
  if (fd_ >= 0) close(fd_);
  close(lock_fd_);  // releases the flock
}

absl::StatusOr<LeaseJournal::Opened> LeaseJournal::Open(const Options& options,
                                                        absl::Time now) {
  const std::string& dir = options.state_dir;
  if (dir.empty()) return absl::InvalidArgumentError("state_dir is empty");
  if (options.fsync == FsyncPolicy::kInterval &&
      options.fsync_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("fsync_interval must be > 0");
  }
  absl::StatusOr<int> lock_fd = LockStateDirectory(dir);
  if (!lock_fd.ok()) return lock_fd.status();
  std::unique_ptr<LeaseJournal> journal(new LeaseJournal(
      options, absl::StrCat(dir, "/", kJournalName), *lock_fd));

  absl::StatusOr<std::string> text = ReadFile(journal->path_);
  if (!text.ok()) return text.status();
  Opened opened;
  {
    absl::MutexLock lock(&journal->mu_);
    absl::StatusOr<Replay> replay = journal->ReplayLocked(*text, now);
    if (!replay.ok()) return replay.status();
    opened.replay = *std::move(replay);
    if (absl::Status s = journal->CompactLocked(); !s.ok()) return s;
  }
  if (options.fsync == FsyncPolicy::kInterval) {
    journal->interval_thread_ =
        std::thread([j = journal.get()] { j->RunInterval(); });
  }
  opened.journal = std::move(journal);
  return opened;
}

absl::StatusOr<LeaseJournal::Replay> LeaseJournal::ReplayLocked(
    absl::string_view text, absl::Time now) {
  Replay replay;
  size_t offset = 0;
  while (offset < text.size()) {
    // One record: up to its LF, or the rest of a torn file.
    const size_t end = text.find('\n', offset);
    const size_t size = end == absl::string_view::npos ? text.size() - offset
                                                       : end + 1 - offset;
    absl::StatusOr<JournalRecord> record =
        DecodeJournalRecord(text.substr(offset, size));
    if (record.ok() && offset == 0 &&
        record->kind != JournalRecordKind::kVersion) {
      record = absl::DataLossError("no version record");
    }
    if (!record.ok()) {
      if (record.status().code() == absl::StatusCode::kFailedPrecondition) {
        return absl::FailedPreconditionError(
            absl::StrCat(path_, ": ", record.status().message(),
                         "; move it away to start afresh"));
      }
      replay.dropped_offset = offset;
      replay.dropped_bytes = text.size() - offset;
      replay.dropped_reason = std::string(record.status().message());
      break;
    }
    ++replay.records;
    offset += size;
    ApplyLocked(*std::move(record));
  }
  // What is still live now; the rest leaves models_.
  for (auto& [model, leases] : models_) {
    const bool known =
        options_.models.empty() || options_.models.contains(model);
    for (auto it = leases->live.begin(); it != leases->live.end();) {
      if (!known) {
        ++replay.unknown_model;
      } else if (it->second.expires_at <= now) {
        ++replay.expired;
      } else {
        replay.live.push_back({model, it->second});
        live_bytes_ += EncodeGrantRecord(model, it->second).size();
        ++it;
        continue;
      }
      leases->live.erase(it++);
    }
  }
  return replay;
}

LeaseJournal::ModelLeases& LeaseJournal::LeasesLocked(
    const std::string& model) {
  std::unique_ptr<ModelLeases>& leases = models_[model];
  if (leases == nullptr) {
    leases = std::make_unique<ModelLeases>();
    leases->model = model;
  }
  return *leases;
}

void LeaseJournal::ApplyLocked(JournalRecord record) {
  if (record.kind == JournalRecordKind::kVersion) return;
  ModelLeases& leases = LeasesLocked(record.model);
  auto live = leases.live.find(record.lease.lease_id);
  switch (record.kind) {
    case JournalRecordKind::kGrant:
      leases.live[record.lease.lease_id] = std::move(record.lease);
      break;
    case JournalRecordKind::kRenewal:
      if (live != leases.live.end()) {
        live->second.expires_at = record.lease.expires_at;
      }
      break;
    case JournalRecordKind::kRelease:
    case JournalRecordKind::kExpiry:
      if (live != leases.live.end()) leases.live.erase(live);
      break;
    case JournalRecordKind::kVersion:
      break;
  }
}

LeaseObserver* LeaseJournal::ObserverFor(const std::string& model) {
  absl::MutexLock lock(&mu_);
  ModelLeases& leases = LeasesLocked(model);
  if (leases.observer == nullptr) {
    leases.observer = std::make_unique<ModelObserver>(this, &leases);
  }
  return leases.observer.get();
}

void LeaseJournal::AppendLocked(const std::string& record) {
  ++written_;
  if (failed_ || fd_ < 0) return;
  if (!WriteAll(fd_, record)) {
    failed_ = true;
    LogError("lease journal write failed; leases are no longer recorded",
             {{"path", path_}, {"error", std::strerror(errno)}});
    return;
  }
  file_bytes_ += record.size();
  appended_since_compaction_ += record.size();
  if (appended_since_compaction_ >= options_.compact_min_bytes &&
      file_bytes_ > 2 * live_bytes_) {
    if (absl::Status s = CompactLocked(); !s.ok()) {
      LogWarning("lease journal compaction failed",
                 {{"error", std::string(s.message())}});
      appended_since_compaction_ = 0;  // retry after as many bytes again
    }
  }
}

absl::Status LeaseJournal::Compact() {
  absl::MutexLock lock(&mu_);
  return CompactLocked();
}

absl::Status LeaseJournal::CompactLocked() {
  std::string text = EncodeJournalRecord(JournalRecord::Version());
  uint64_t live_bytes = 0;
  for (const auto& [model, leases] : models_) {
    for (const auto& [id, lease] : leases->live) {
      const std::string record = EncodeGrantRecord(model, lease);
      live_bytes += record.size();
      text += record;
    }
  }
  const std::string tmp = path_ + ".tmp";
  const int fd =
      open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::FailedPreconditionError(Errno("cannot create", tmp));
  if (!WriteAll(fd, text) || fdatasync(fd) != 0) {
    const std::string error = Errno("cannot write", tmp);
    close(fd);
    unlink(tmp.c_str());
    return absl::FailedPreconditionError(error);
  }
  close(fd);
  if (rename(tmp.c_str(), path_.c_str()) != 0) {
    const std::string error = Errno("cannot rename", tmp);
    unlink(tmp.c_str());
    return absl::FailedPreconditionError(error);
  }
  if (absl::Status s = FsyncPath(options_.state_dir, O_RDONLY | O_DIRECTORY);
      !s.ok()) {
    return s;
  }
  const int append_fd = open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (append_fd < 0) {
    return absl::FailedPreconditionError(Errno("cannot open", path_));
  }
  if (fd_ >= 0) close(fd_);
  fd_ = append_fd;
  failed_ = false;
  file_bytes_ = text.size();
  live_bytes_ = live_bytes;
  appended_since_compaction_ = 0;
  ++compactions_;
  // Everything appended so far is in the synced file.
  uint64_t synced = synced_.load();
  while (synced < written_ &&
         !synced_.compare_exchange_weak(synced, written_)) {
  }
  return absl::OkStatus();
}

void LeaseJournal::Sync() {
  uint64_t target = 0;
  {
    absl::MutexLock lock(&mu_);
    target = written_;
  }
  if (synced_.load() >= target) return;
  absl::MutexLock sync_lock(&sync_mu_);
  if (synced_.load() >= target) return;  // another thread's sync covered it
  int fd = -1;
  {
    absl::MutexLock lock(&mu_);
    target = written_;
    // A duplicate, so that a compaction may swap fd_ meanwhile.
    if (fd_ >= 0 && !failed_) fd = dup(fd_);
  }
  if (fd < 0) return;
  const bool synced = fdatasync(fd) == 0;
  close(fd);
  if (!synced) {
    LogError("lease journal fdatasync failed",
             {{"path", path_}, {"error", std::strerror(errno)}});
    return;
  }
  uint64_t now = synced_.load();
  while (now < target && !synced_.compare_exchange_weak(now, target)) {
  }
}

void LeaseJournal::RunInterval() {
  while (!stop_.WaitForNotificationWithTimeout(options_.fsync_interval)) {
    Sync();
  }
}

uint64_t LeaseJournal::compactions() const {
  absl::MutexLock lock(&mu_);
  return compactions_;
}

size_t LeaseJournal::live_leases() const {
  absl::MutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& [model, leases] : models_) n += leases->live.size();
  return n;
}

}  // namespace kvgate
