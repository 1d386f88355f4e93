// kvgated: the kvgate admission sidecar.
//
// Wiring, in order: flags -> config -> model registry -> memory source ->
// metrics -> controllers -> service -> server. With no flags it serves the
// built-in llama-3-8b preset on a simulated H100 80GB over
// unix:/tmp/kvgate.sock, so it runs on any machine.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "metrics/metrics.h"
#include "metrics/metrics_server.h"
#include "plugin/admission/clock.h"
#include "plugin/admission/model_pool.h"
#include "plugin/base/json_log.h"
#include "plugin/ext_proc/ext_proc_service.h"
#include "plugin/journal/lease_journal.h"
#include "plugin/memory/memory_guard.h"
#include "plugin/memory/nvml_memory_source.h"
#include "plugin/memory/static_memory_source.h"
#include "plugin/security/auth.h"
#include "plugin/security/tls.h"
#include "plugin/server/config.h"
#include "plugin/server/kvgate_service.h"

ABSL_FLAG(std::string, config, "",
          "ServerConfig file (text format, or JSON when it ends in .json); "
          "empty: the embedded default");
ABSL_FLAG(std::string, grpc_address, "",
          "listen address, unix:/path or host:port (overrides the file; "
          "default unix:/tmp/kvgate.sock)");
ABSL_FLAG(std::string, metrics_address, "",
          "host:port for Prometheus /metrics (overrides the file)");
ABSL_FLAG(bool, validate, false, "check the configuration and exit");
ABSL_FLAG(std::string, ext_proc_address, "",
          "separate listener for Envoy's ext_proc filter, unix:/path or "
          "host:port (overrides ext_proc.listen_address; default: served on "
          "the main listener)");
ABSL_FLAG(uint32_t, max_concurrent_streams, 4096,
          "most concurrent calls (queued Admits included) per connection");
ABSL_FLAG(std::string, socket_mode, "",
          "permissions of the unix socket, in octal (overrides the file; "
          "default 0660)");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM server certificate (chain) for TLS on a TCP grpc_address "
          "(overrides the file's tls.cert_file)");
ABSL_FLAG(std::string, tls_key, "",
          "PEM private key of --tls_cert (overrides tls.key_file)");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle for mutual TLS: clients must present a certificate "
          "it signed (sets tls.client_ca_file and tls.require_client_cert)");
ABSL_FLAG(std::string, health_address, "",
          "host:port of a second listener that serves only "
          "grpc.health.v1.Health (for Kubernetes gRPC probes, which dial the "
          "pod IP while Admission stays on the unix socket); empty: none");
ABSL_FLAG(std::string, state_dir, "",
          "directory of the lease journal, for crash recovery (overrides "
          "lease_journal.state_dir); empty: leases in memory only");

namespace kvgate {
namespace {

constexpr char kServiceName[] = "kvgate.v1.Admission";
constexpr char kVersion[] = "0.1.0";
#ifndef KVGATE_REVISION
#define KVGATE_REVISION "unknown"
#endif

std::string UnixPath(const std::string& address) {
  if (absl::StartsWith(address, "unix:")) return address.substr(5);
  return "";
}

// gRPC unlinks an existing unix socket before binding, which would silently
// steal the address from a running kvgated. Refuse if the socket answers;
// remove it if it is stale.
absl::Status CheckUnixSocketFree(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return absl::OkStatus();
  if (!S_ISSOCK(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " exists and is not a socket"));
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unix socket path too long: ", path));
  }
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  const bool live = fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&addr),
                                       sizeof(addr)) == 0;
  if (fd >= 0) close(fd);
  if (live) {
    return absl::FailedPreconditionError(absl::StrCat(
        "unix:", path, " is in use by another process (is kvgated running?)"));
  }
  unlink(path.c_str());
  return absl::OkStatus();
}

// The devices of `pool` among those read, matched by index or UUID.
std::vector<const DeviceMemory*> PoolDevices(
    const ModelPool& pool, const std::vector<DeviceMemory>& devices) {
  std::vector<const DeviceMemory*> out;
  for (const std::string& gpu : pool.settings().gpus) {
    uint32_t index = 0;
    const bool by_index = absl::SimpleAtoi(gpu, &index);
    for (const DeviceMemory& d : devices) {
      if (by_index ? d.index == index : d.uuid == gpu) out.push_back(&d);
    }
  }
  return out;
}

// Runs each controller's Tick every few milliseconds and polls the memory
// source on its interval, on one thread for the whole server.
class Ticker {
 public:
  Ticker(const ModelRegistry* registry, MemoryGuard* guard,
         const MemorySourceSettings* source, KvgateMetrics* metrics)
      : registry_(registry),
        guard_(guard),
        source_(source),
        metrics_(metrics) {}

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    stop_.Notify();
    if (thread_.joinable()) thread_.join();
  }

  // One poll of the memory source; also used once before serving.
  void Poll() {
    const MemoryGuard::Reading r = guard_->Poll();
    if (!r.ok) {
      metrics_->IncMemorySourceError(
          source_->kind == MemorySourceSettings::Kind::kNvml ? "nvml"
                                                             : "static");
      if (!last_error_) {
        LogError("memory source read failed",
                 {{"error", r.error.ToString()},
                  {"action", guard_->options().fail_open
                                 ? "admitting on the ledger (fail_open)"
                                 : "admission paused (fail closed)"}});
      }
      last_error_ = true;
    } else if (last_error_) {
      LogInfo("memory source recovered");
      last_error_ = false;
    }
    metrics_->SetDevices(r.devices);
    for (const auto& pool : registry_->pools()) {
      const BudgetSnapshot s = pool->controller().Snapshot();
      bool pressure = r.pressure;
      if (r.ok && source_->kind == MemorySourceSettings::Kind::kNvml) {
        uint64_t min_free = UINT64_MAX;
        for (const DeviceMemory* d : PoolDevices(*pool, r.devices)) {
          min_free = std::min(min_free, d->free_bytes);
        }
        if (min_free == UINT64_MAX) min_free = r.min_free_bytes;
        pressure = min_free < guard_->options().free_margin_bytes;
        pool->set_device_free_bytes(min_free);
      } else if (r.ok) {
        // Simulated device: what the ledger leaves of it.
        const uint64_t used = pool->model().weights_bytes() + s.reserved_bytes;
        const uint64_t total = source_->static_device_bytes;
        pool->set_device_free_bytes(total > used ? total - used : 0);
      }
      if (pressure != s.memory_pressure) {
        (pressure ? LogWarning : LogInfo)(
            pressure ? "memory pressure: admission paused"
                     : "memory pressure cleared",
            {{"model", pool->name()}});
        pool->controller().SetMemoryPressure(pressure);
      }
      metrics_->SetMemoryPressure(pool->name(), pressure);
      metrics_->SetBudget(pool->name(), pool->controller().Snapshot(),
                          pool->model().weights_bytes());
    }
  }

 private:
  void Run() {
    absl::Time next_poll = absl::Now() + source_->poll_interval;
    while (!stop_.WaitForNotificationWithTimeout(absl::Milliseconds(5))) {
      for (const auto& pool : registry_->pools()) pool->controller().Tick();
      if (absl::Now() >= next_poll) {
        Poll();
        next_poll = absl::Now() + source_->poll_interval;
      }
    }
  }

  const ModelRegistry* registry_;
  MemoryGuard* guard_;
  const MemorySourceSettings* source_;
  KvgateMetrics* metrics_;
  absl::Notification stop_;
  std::thread thread_;
  bool last_error_ = false;
};

// The Envoy ext_proc service alone on its own listener, so that Envoy never
// reaches Admission and request bodies up to `max_body_bytes` fit in one
// message.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartExtProcServer(
    const std::string& address, grpc::Service* service, uint64_t max_body_bytes,
    int max_concurrent_streams) {
  const std::string path = UnixPath(address);
  if (!path.empty()) {
    if (absl::Status s = CheckUnixSocketFree(path); !s.ok()) return s;
  }
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(service);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             max_concurrent_streams);
  // A whole BUFFERED body plus the message around it.
  builder.AddChannelArgument(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                             static_cast<int>(max_body_bytes + (64 << 10)));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || (path.empty() && port == 0)) {
    return absl::UnavailableError(
        absl::StrCat("could not bind the ext_proc address ", address,
                     " (address in use or not permitted)"));
  }
  return server;
}

int Fail(absl::string_view what, const absl::Status& status) {
  LogError(what, {{"error", std::string(status.message())}});
  return 1;
}

// Puts the journal's live leases back into their controllers, before
// serving, and logs what the replay found (a torn or corrupt tail included).
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

// The --validate answer: one line on stdout, exit code 0.
int PrintValid(const std::vector<std::string>& models,
               absl::string_view memory_source, absl::string_view address) {
  std::cout << "kvgated: configuration is valid: models "
            << absl::StrJoin(models, ", ") << "; memory source "
            << memory_source << "; listen " << address << std::endl;
  return 0;
}

// A server with no service but grpc.health.v1.Health (gRPC also adds
// reflection to every server), whose statuses the caller mirrors from the
// main server. Call grpc::EnableDefaultHealthCheckService(true) first.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartHealthServer(
    const std::string& address) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("could not bind the health address ", address,
                     " (address in use or not permitted; host:port only)"));
  }
  return server;
}

int Run() {
  // Block the shutdown signals in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // Config: the file (or the embedded default), then flag overrides.
  kvgate::v1::ServerConfig config;
  if (const std::string path = absl::GetFlag(FLAGS_config); !path.empty()) {
    absl::StatusOr<kvgate::v1::ServerConfig> read = ReadServerConfig(path);
    if (!read.ok()) return Fail("invalid configuration", read.status());
    config = *std::move(read);
  }
  if (const std::string a = absl::GetFlag(FLAGS_grpc_address); !a.empty()) {
    config.set_grpc_address(a);
  }
  if (const std::string a = absl::GetFlag(FLAGS_metrics_address); !a.empty()) {
    config.set_metrics_address(a);
  }
  if (const std::string m = absl::GetFlag(FLAGS_socket_mode); !m.empty()) {
    config.set_socket_mode(m);
  }
  if (const std::string f = absl::GetFlag(FLAGS_tls_cert); !f.empty()) {
    config.mutable_tls()->set_cert_file(f);
  }
  if (const std::string f = absl::GetFlag(FLAGS_tls_key); !f.empty()) {
    config.mutable_tls()->set_key_file(f);
  }
  if (const std::string f = absl::GetFlag(FLAGS_tls_client_ca); !f.empty()) {
    config.mutable_tls()->set_client_ca_file(f);
    config.mutable_tls()->set_require_client_cert(true);
  }
  if (const std::string d = absl::GetFlag(FLAGS_state_dir); !d.empty()) {
    config.mutable_lease_journal()->set_state_dir(d);
  }
  if (const std::string a = absl::GetFlag(FLAGS_ext_proc_address); !a.empty()) {
    config.mutable_ext_proc()->set_listen_address(a);
  }
  absl::StatusOr<ServerSettings> settings = ResolveServerConfig(config);
  if (!settings.ok()) return Fail("invalid configuration", settings.status());
  absl::StatusOr<ExtProcOptions> ext_proc_options = ResolveExtProcConfig(
      config.ext_proc(), settings->controller.max_queue_wait);
  if (!ext_proc_options.ok()) {
    return Fail("invalid configuration", ext_proc_options.status());
  }

  // Transport security and caller authentication, checked before anything
  // starts (and by --validate).
  std::shared_ptr<grpc::ServerCredentials> credentials =
      grpc::InsecureServerCredentials();
  if (settings->tls.enabled()) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> made =
        MakeServerCredentials(settings->tls);
    if (!made.ok()) return Fail("invalid configuration", made.status());
    credentials = *std::move(made);
  }
  std::unique_ptr<Authenticator> authenticator;
  if (!settings->auth.tokens.empty() || !settings->auth.certificates.empty()) {
    absl::StatusOr<std::unique_ptr<Authenticator>> made =
        Authenticator::Create(settings->auth);
    if (!made.ok()) return Fail("invalid configuration", made.status());
    authenticator = *std::move(made);
  }
  // Logged with "listening", so that a start-up failure stays one line.
  const std::string tls_mode =
      !settings->tls.enabled()            ? "off"
      : settings->tls.require_client_cert ? "mutual"
      : !settings->tls.client_ca_file.empty()
          ? "on (client certificates verified when sent)"
          : "on";
  const std::string auth_mode =
      authenticator == nullptr
          ? "off (tenant and priority trusted as sent)"
          : absl::StrCat(settings->auth.tokens.size(), " tokens, ",
                         settings->auth.certificates.size(),
                         " certificate identities");

  // Memory source.
  std::unique_ptr<MemorySource> source;
  const MemorySourceSettings& src = settings->memory_source;
  if (absl::GetFlag(FLAGS_validate) &&
      src.kind == MemorySourceSettings::Kind::kNvml) {
    // NVML is not opened, so that a config can be checked where there is no
    // GPU (CI, an image build); the weights are checked against the real
    // devices at start-up.
    std::vector<std::string> names;
    for (const ModelPoolSettings& m : settings->models) names.push_back(m.name);
    return PrintValid(names,
                      "nvml (not opened by --validate: device capacity is "
                      "checked at start-up)",
                      settings->grpc_address);
  }
  if (src.kind == MemorySourceSettings::Kind::kNvml) {
    NvmlOptions nvml;
    nvml.library_path = src.nvml_library;
    for (const ModelPoolSettings& m : settings->models) {
      for (const std::string& gpu : m.gpus) {
        if (std::find(nvml.devices.begin(), nvml.devices.end(), gpu) ==
            nvml.devices.end()) {
          nvml.devices.push_back(gpu);
        }
      }
    }
    absl::StatusOr<std::unique_ptr<MemorySource>> made =
        MakeNvmlMemorySource(nvml);
    if (!made.ok()) return Fail("memory source failed", made.status());
    source = *std::move(made);
  } else {
    uint32_t devices = 1;
    for (const ModelPoolSettings& m : settings->models) {
      devices = std::max(devices, m.model.options().tensor_parallel);
    }
    source = MakeStaticMemorySource(src.static_device_bytes, devices);
  }
  absl::StatusOr<std::vector<DeviceMemory>> first_read = source->Read();
  if (!first_read.ok())
    return Fail("memory source failed", first_read.status());

  // The lease journal (crash recovery), replayed before any controller
  // exists; --validate leaves it alone.
  std::unique_ptr<LeaseJournal> journal;
  LeaseJournal::Replay replay;
  if (!settings->lease_journal.state_dir.empty() &&
      !absl::GetFlag(FLAGS_validate)) {
    LeaseJournal::Options journal_options = settings->lease_journal;
    for (const ModelPoolSettings& m : settings->models) {
      journal_options.models.insert(m.name);
    }
    absl::StatusOr<LeaseJournal::Opened> opened =
        LeaseJournal::Open(journal_options, absl::Now());
    if (!opened.ok()) return Fail("lease journal failed", opened.status());
    journal = std::move(opened->journal);
    replay = std::move(opened->replay);
  }

  // Pools: capacity from the tightest device each model runs on.
  // Metrics first: the controllers report to them until destroyed.
  KvgateMetrics metrics(KvgateMetrics::Options{kVersion, KVGATE_REVISION});
  ModelRegistry registry;
  std::vector<ModelPoolSettings> pools = std::move(settings->models);
  for (ModelPoolSettings& m : pools) {
    uint64_t device_bytes = src.static_device_bytes;
    if (src.kind == MemorySourceSettings::Kind::kNvml) {
      device_bytes = UINT64_MAX;
      for (const DeviceMemory& d : *first_read) {
        for (const std::string& gpu : m.gpus) {
          uint32_t index = 0;
          const bool match =
              absl::SimpleAtoi(gpu, &index) ? d.index == index : d.uuid == gpu;
          // What CUDA can allocate: the driver's reservation is not usable.
          if (match)
            device_bytes =
                std::min(device_bytes, d.total_bytes - d.reserved_bytes);
        }
      }
    }
    absl::StatusOr<uint64_t> capacity = PoolCapacity(m, device_bytes);
    if (!capacity.ok()) return Fail("invalid configuration", capacity.status());
    Controller::Options options = settings->controller;
    options.capacity_bytes = *capacity;
    options.activation_sum = m.activation_sum;
    options.listener = metrics.ListenerFor(m.name);
    if (journal != nullptr)
      options.lease_observer = journal->ObserverFor(m.name);
    absl::StatusOr<std::unique_ptr<Controller>> controller =
        Controller::Create(options, RealClock());
    if (!controller.ok())
      return Fail("invalid configuration", controller.status());
    LogInfo("model loaded",
            {{"model", m.name},
             {"model_type", m.model.spec().model_type},
             {"weights_bytes", absl::StrCat(m.model.weights_bytes())},
             {"kv_cache_bytes_per_token",
              absl::StrCat(m.model.kv_cache_bytes_per_token())},
             {"capacity_bytes", absl::StrCat(*capacity)},
             {"device_bytes", absl::StrCat(device_bytes)}});
    registry.Add(std::make_unique<ModelPool>(std::move(m), *capacity,
                                             *std::move(controller)));
  }
  if (absl::GetFlag(FLAGS_validate)) {
    std::vector<std::string> names;
    for (const auto& p : registry.pools()) names.push_back(p->name());
    return PrintValid(names, "static", settings->grpc_address);
  }
  if (journal != nullptr) RestoreLeases(replay, registry, *journal);

  // Metrics endpoint.
  std::unique_ptr<MetricsServer> metrics_server;
  if (!settings->metrics_address.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> started =
        MetricsServer::Start(settings->metrics_address, metrics.registry());
    if (!started.ok()) return Fail("metrics endpoint failed", started.status());
    metrics_server = *std::move(started);
    LogInfo("metrics listening", {{"address", metrics_server->address()}});
  }

  MemoryGuard guard(source.get(), src.guard);
  Ticker ticker(&registry, &guard, &src, &metrics);
  ticker.Poll();

  // gRPC server.
  AdmissionService::Options service_options;
  service_options.max_sequences = static_cast<int>(settings->max_sequences);
  service_options.authenticator = authenticator.get();
  AdmissionService service(&registry, RealClock(), &metrics, service_options);
  ExtProcService ext_proc(&registry, RealClock(), *ext_proc_options);
  const std::string& ext_proc_address = ext_proc_options->listen_address;
  const std::string socket_path = UnixPath(settings->grpc_address);
  if (!socket_path.empty()) {
    if (absl::Status s = CheckUnixSocketFree(socket_path); !s.ok()) {
      return Fail("cannot listen", s);
    }
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(settings->grpc_address, credentials, &port);
  builder.RegisterService(&service);
  if (ext_proc_address.empty()) builder.RegisterService(&ext_proc);
  // A second kvgated on the same TCP port must fail, not share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(
      GRPC_ARG_MAX_CONCURRENT_STREAMS,
      static_cast<int>(absl::GetFlag(FLAGS_max_concurrent_streams)));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                             static_cast<int>(settings->max_message_bytes));
  // bind() creates the socket with 0777 & ~umask: with this umask it is
  // born with socket_mode, leaving no moment at which others may connect.
  const mode_t old_umask =
      socket_path.empty() ? 0 : umask(0777 & ~settings->socket_mode);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!socket_path.empty()) umask(old_umask);
  if (server == nullptr || (socket_path.empty() && port == 0)) {
    return Fail("cannot listen", absl::UnavailableError(absl::StrCat(
                                     "could not bind ", settings->grpc_address,
                                     " (address in use or not permitted)")));
  }
  if (!socket_path.empty() &&
      chmod(socket_path.c_str(), static_cast<mode_t>(settings->socket_mode)) !=
          0) {
    return Fail("cannot listen", absl::PermissionDeniedError(absl::StrCat(
                                     "cannot set the mode of ", socket_path,
                                     ": ", strerror(errno))));
  }
  std::unique_ptr<grpc::Server> health_server;
  if (const std::string a = absl::GetFlag(FLAGS_health_address); !a.empty()) {
    absl::StatusOr<std::unique_ptr<grpc::Server>> started =
        StartHealthServer(a);
    if (!started.ok()) return Fail("cannot listen", started.status());
    health_server = *std::move(started);
  }
  // Every health service this process answers, with the same statuses.
  std::vector<grpc::HealthCheckServiceInterface*> healths = {
      server->GetHealthCheckService()};
  if (health_server != nullptr) {
    healths.push_back(health_server->GetHealthCheckService());
  }
  const auto set_serving = [&healths](bool serving) {
    for (grpc::HealthCheckServiceInterface* health : healths) {
      health->SetServingStatus(kServiceName, serving);
      health->SetServingStatus(serving);
    }
  };
  std::unique_ptr<grpc::Server> ext_proc_server;
  if (!ext_proc_address.empty()) {
    absl::StatusOr<std::unique_ptr<grpc::Server>> started = StartExtProcServer(
        ext_proc_address, &ext_proc, ext_proc_options->max_body_bytes,
        static_cast<int>(absl::GetFlag(FLAGS_max_concurrent_streams)));
    if (!started.ok()) return Fail("cannot listen", started.status());
    ext_proc_server = *std::move(started);
    LogInfo("ext_proc listening", {{"address", ext_proc_address}});
  }
  ext_proc.SetReady(true);
  service.SetReady(true);
  set_serving(true);
  ticker.Start();
  LogInfo("listening", {{"address", settings->grpc_address},
                        {"port", absl::StrCat(port)},
                        {"models", absl::StrCat(registry.pools().size())},
                        {"health_address", absl::GetFlag(FLAGS_health_address)},
                        {"tls", tls_mode},
                        {"auth", auth_mode}});

  // Wait for SIGTERM/SIGINT, then drain: no new admits, every queued
  // request answered, then the server stops.
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    LogInfo("draining", {{"signal", strsignal(sig)}});
    set_serving(false);
    service.StartDraining();
    ext_proc.StartDraining();
    for (const auto& pool : registry.pools()) pool->controller().Drain();
    server->Shutdown(std::chrono::system_clock::now() +
                     std::chrono::seconds(5));
    if (ext_proc_server != nullptr) {
      ext_proc_server->Shutdown(std::chrono::system_clock::now() +
                                std::chrono::seconds(5));
    }
    if (health_server != nullptr) health_server->Shutdown();
  });
  server->Wait();
  signal_thread.join();
  if (ext_proc_server != nullptr) {
    ext_proc_server->Wait();
    if (const std::string p = UnixPath(ext_proc_address); !p.empty()) {
      unlink(p.c_str());
    }
  }
  if (health_server != nullptr) health_server->Wait();
  // The servers are stopped, but a reactor's last callbacks (OnCancel,
  // OnDone) may still run on gRPC's executor: wait for them before the
  // controllers and metrics they use go away.
  if (!service.WaitForCalls(absl::Seconds(5)) ||
      !ext_proc.WaitForCalls(absl::Seconds(5))) {
    LogWarning("calls still open after shutdown");
  }
  ticker.Stop();
  if (!socket_path.empty()) unlink(socket_path.c_str());
  LogInfo("stopped");
  return 0;
}

}  // namespace
}  // namespace kvgate

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kvgated: admission sidecar that checks each request batch's KV-cache "
      "and activation bytes against GPU memory.\n"
      "Usage: kvgated [--config=FILE] [--grpc_address=unix:/path|host:port] "
      "[--metrics_address=host:port] [--validate]");
  absl::ParseCommandLine(argc, argv);
  // Debian's Abseil is built without NDEBUG, so by default every Mutex::Lock
  // (gRPC's included) also updates a process-wide lock-order graph under a
  // global lock: 3.7% of kvgated's CPU under load (bench/RESULTS.md). The
  // unit tests keep the check on, and TSan checks lock order.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return kvgate::Run();
}
