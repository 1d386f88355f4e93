#include "plugin/journal/lease_journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "plugin/base/json_log.h"

namespace kvgate {
namespace {

constexpr char kJournalName[] = "leases.journal";
constexpr char kLockName[] = "lock";
constexpr char kVersionPayload[] = "V\t1";

constexpr std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrcTable = MakeCrcTable();

std::string Errno(absl::string_view what, const std::string& path) {
  return absl::StrCat(what, " ", path, ": ", std::strerror(errno));
}

// One line: crc, TAB, payload, LF.
std::string Line(absl::string_view payload) {
  return absl::StrFormat("%08x\t%s\n", Crc32(payload), payload);
}

std::string GrantPayload(const std::string& escaped_model,
                         const LeaseRecord& lease) {
  return absl::StrCat("G\t", escaped_model, "\t", absl::CEscape(lease.lease_id),
                      "\t", absl::CEscape(lease.request_id), "\t",
                      lease.cost.kv_bytes, "\t", lease.cost.activation_bytes,
                      "\t", absl::ToUnixMicros(lease.expires_at));
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

// A parsed record.
struct Record {
  char kind = 0;
  std::string model;
  LeaseRecord lease;
};

bool ParseTime(absl::string_view text, absl::Time* t) {
  int64_t micros = 0;
  if (!absl::SimpleAtoi(text, &micros)) return false;
  *t = absl::FromUnixMicros(micros);
  return true;
}

// Parses one line (without its LF); an error says what is wrong with it.
absl::StatusOr<Record> ParseLine(absl::string_view line) {
  const size_t tab = line.find('\t');
  uint32_t crc = 0;
  if (tab != 8 || !absl::SimpleHexAtoi(line.substr(0, 8), &crc)) {
    return absl::DataLossError("no CRC field");
  }
  const absl::string_view payload = line.substr(9);
  if (Crc32(payload) != crc) return absl::DataLossError("CRC mismatch");
  const std::vector<absl::string_view> f = absl::StrSplit(payload, '\t');
  Record r;
  if (f[0].size() != 1) return absl::DataLossError("unknown record kind");
  r.kind = f[0][0];
  static constexpr struct {
    char kind;
    size_t fields;
  } kFields[] = {{'V', 2}, {'G', 7}, {'N', 4}, {'R', 3}, {'E', 3}};
  bool known = false;
  for (const auto& row : kFields) {
    if (row.kind != r.kind) continue;
    known = true;
    if (f.size() != row.fields) return absl::DataLossError("wrong field count");
  }
  if (!known) return absl::DataLossError("unknown record kind");
  if (r.kind == 'V') {
    if (f[1] != "1") {
      return absl::FailedPreconditionError(
          absl::StrCat("journal format version ", f[1], " is not 1"));
    }
    return r;
  }
  bool ok = absl::CUnescape(f[1], &r.model) &&
            absl::CUnescape(f[2], &r.lease.lease_id);
  if (r.kind == 'G') {
    ok = ok && absl::CUnescape(f[3], &r.lease.request_id) &&
         absl::SimpleAtoi(f[4], &r.lease.cost.kv_bytes) &&
         absl::SimpleAtoi(f[5], &r.lease.cost.activation_bytes) &&
         ParseTime(f[6], &r.lease.expires_at);
  } else if (r.kind == 'N') {
    ok = ok && ParseTime(f[3], &r.lease.expires_at);
  }
  if (!ok) return absl::DataLossError("malformed field");
  return r;
}

}  // namespace

uint32_t Crc32(absl::string_view data) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char byte : data) c = kCrcTable[(c ^ byte) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

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
  std::string escaped_model;
  absl::flat_hash_map<std::string, LeaseRecord> live;
  std::unique_ptr<ModelObserver> observer;
};

class LeaseJournal::ModelObserver final : public LeaseObserver {
 public:
  ModelObserver(LeaseJournal* journal, ModelLeases* leases)
      : journal_(journal), leases_(leases) {}

  void OnGranted(const LeaseRecord& lease) override {
    std::string payload = GrantPayload(leases_->escaped_model, lease);
    absl::MutexLock lock(&journal_->mu_);
    journal_->live_bytes_ += payload.size() + 10;
    leases_->live[lease.lease_id] = lease;
    journal_->AppendLocked(payload);
  }

  void OnRenewed(absl::string_view lease_id, absl::Time expires_at) override {
    const std::string payload = absl::StrCat(
        "N\t", leases_->escaped_model, "\t", absl::CEscape(lease_id), "\t",
        absl::ToUnixMicros(expires_at));
    absl::MutexLock lock(&journal_->mu_);
    if (auto it = leases_->live.find(lease_id); it != leases_->live.end()) {
      it->second.expires_at = expires_at;
    }
    journal_->AppendLocked(payload);
  }

  void OnEnded(absl::string_view lease_id, LeaseEnd end) override {
    const std::string payload =
        absl::StrCat(end == LeaseEnd::kReleased ? "R\t" : "E\t",
                     leases_->escaped_model, "\t", absl::CEscape(lease_id));
    absl::MutexLock lock(&journal_->mu_);
    if (auto it = leases_->live.find(lease_id); it != leases_->live.end()) {
      const uint64_t size =
          GrantPayload(leases_->escaped_model, it->second).size() + 10;
      journal_->live_bytes_ -= std::min(journal_->live_bytes_, size);
      leases_->live.erase(it);
    }
    journal_->AppendLocked(payload);
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

absl::StatusOr<std::unique_ptr<LeaseJournal>> LeaseJournal::Open(
    const Options& options, absl::Time now, Replay* replay) {
  const std::string& dir = options.state_dir;
  if (dir.empty()) return absl::InvalidArgumentError("state_dir is empty");
  if (options.fsync == FsyncPolicy::kInterval &&
      options.fsync_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("fsync_interval must be > 0");
  }
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
  std::unique_ptr<LeaseJournal> journal(
      new LeaseJournal(options, absl::StrCat(dir, "/", kJournalName), lock_fd));

  absl::StatusOr<std::string> text = ReadFile(journal->path_);
  if (!text.ok()) return text.status();
  *replay = Replay();
  {
    absl::MutexLock lock(&journal->mu_);
    size_t offset = 0;
    while (offset < text->size()) {
      const size_t end = text->find('\n', offset);
      absl::StatusOr<Record> record =
          end == std::string::npos
              ? absl::DataLossError("incomplete last record (no newline)")
              : ParseLine(
                    absl::string_view(*text).substr(offset, end - offset));
      if (record.ok() && offset == 0 && record->kind != 'V') {
        record = absl::DataLossError("no version record");
      }
      if (!record.ok()) {
        if (record.status().code() == absl::StatusCode::kFailedPrecondition) {
          return absl::FailedPreconditionError(
              absl::StrCat(journal->path_, ": ", record.status().message(),
                           "; move it away to start afresh"));
        }
        replay->dropped_offset = offset;
        replay->dropped_bytes = text->size() - offset;
        replay->dropped_reason = std::string(record.status().message());
        break;
      }
      ++replay->records;
      offset = end + 1;
      if (record->kind == 'V') continue;
      ModelLeases* leases = nullptr;
      if (auto it = journal->models_.find(record->model);
          it != journal->models_.end()) {
        leases = it->second.get();
      } else {
        auto made = std::make_unique<ModelLeases>();
        made->model = record->model;
        made->escaped_model = absl::CEscape(record->model);
        leases = made.get();
        journal->models_[record->model] = std::move(made);
      }
      auto live = leases->live.find(record->lease.lease_id);
      switch (record->kind) {
        case 'G':
          leases->live[record->lease.lease_id] = record->lease;
          break;
        case 'N':
          if (live != leases->live.end()) {
            live->second.expires_at = record->lease.expires_at;
          }
          break;
        default:  // R, E
          if (live != leases->live.end()) leases->live.erase(live);
      }
    }
    // What is still live now, in a stable order (by lease id).
    for (auto& [model, leases] : journal->models_) {
      const bool known =
          options.models.empty() || options.models.contains(model);
      for (auto it = leases->live.begin(); it != leases->live.end();) {
        if (!known) {
          ++replay->unknown_model;
        } else if (it->second.expires_at <= now) {
          ++replay->expired;
        } else {
          replay->live.push_back({model, it->second});
          journal->live_bytes_ +=
              GrantPayload(leases->escaped_model, it->second).size() + 10;
          ++it;
          continue;
        }
        leases->live.erase(it++);
      }
    }
    if (absl::Status s = journal->CompactLocked(); !s.ok()) return s;
  }
  if (options.fsync == FsyncPolicy::kInterval) {
    journal->interval_thread_ =
        std::thread([j = journal.get()] { j->RunInterval(); });
  }
  return journal;
}

LeaseObserver* LeaseJournal::ObserverFor(const std::string& model) {
  absl::MutexLock lock(&mu_);
  std::unique_ptr<ModelLeases>& leases = models_[model];
  if (leases == nullptr) {
    leases = std::make_unique<ModelLeases>();
    leases->model = model;
    leases->escaped_model = absl::CEscape(model);
  }
  if (leases->observer == nullptr) {
    leases->observer = std::make_unique<ModelObserver>(this, leases.get());
  }
  return leases->observer.get();
}

void LeaseJournal::AppendLocked(const std::string& payload) {
  ++written_;
  if (failed_ || fd_ < 0) return;
  const std::string line = Line(payload);
  if (!WriteAll(fd_, line)) {
    failed_ = true;
    LogError("lease journal write failed; leases are no longer recorded",
             {{"path", path_}, {"error", std::strerror(errno)}});
    return;
  }
  file_bytes_ += line.size();
  appended_since_compaction_ += line.size();
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
  std::string text = Line(kVersionPayload);
  uint64_t live_bytes = 0;
  for (const auto& [model, leases] : models_) {
    for (const auto& [id, lease] : leases->live) {
      const std::string line = Line(GrantPayload(leases->escaped_model, lease));
      live_bytes += line.size();
      text += line;
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
