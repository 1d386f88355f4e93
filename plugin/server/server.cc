#include "plugin/server/server.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <tuple>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "absl/types/optional.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "metrics/metrics_server.h"
#include "plugin/admission/clock.h"
#include "plugin/base/json_log.h"
#include "plugin/security/tls.h"
#include "plugin/server/lease_restore.h"
#include "plugin/server/listeners.h"
#include "plugin/server/model_pools.h"

namespace kvgate {
namespace {

constexpr char kServiceName[] = "kvgate.v1.Admission";

// The status payload that carries the start-up stage.
constexpr char kStageUrl[] = "type.googleapis.com/kvgate.StartupStage";
constexpr char kInvalidConfiguration[] = "invalid configuration";
constexpr char kMemorySourceFailed[] = "memory source failed";
constexpr char kLeaseJournalFailed[] = "lease journal failed";
constexpr char kMetricsEndpointFailed[] = "metrics endpoint failed";
constexpr char kCannotListen[] = "cannot listen";

// `status` (not OK), marked as failed in `stage`.
absl::Status InStage(absl::string_view stage, absl::Status status) {
  status.SetPayload(kStageUrl, absl::Cord(stage));
  return status;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The directory `path` is in: "." for a bare name, "/" at the root.
std::string ParentDirectory(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// How the "listening" line describes transport security.
std::string TlsMode(const TlsSettings& tls) {
  if (!tls.enabled()) return "off";
  if (tls.require_client_cert) return "mutual";
  if (!tls.client_ca_file.empty()) {
    return "on (client certificates verified when sent)";
  }
  return "on";
}

// How the "listening" line describes caller authentication.
std::string AuthMode(const Authenticator::Options& auth, bool enabled) {
  if (!enabled) return "off (tenant and priority trusted as sent)";
  return absl::StrCat(auth.tokens.size(), " tokens, ", auth.certificates.size(),
                      " certificate identities");
}

// Says at start-up which memory source admission rests on; loudly (a
// warning) for the static one, whose devices are simulated: it never sees
// what the engine or anyone else really allocates.
void LogMemorySource(const MemorySourceSettings& source,
                     const std::vector<DeviceMemory>& devices) {
  if (source.kind == MemorySourceSettings::Kind::kNvml) {
    LogInfo(
        "memory source is nvml: live device memory",
        {{"memory_source", "nvml"}, {"devices", absl::StrCat(devices.size())}});
    return;
  }
  LogWarning(
      "memory source is static: SIMULATED devices, real GPU memory is not "
      "read",
      {{"memory_source", "static"},
       {"device", source.static_device_name},
       {"device_bytes", absl::StrCat(source.static_device_bytes)},
       {"hint",
        "admission rests on the ledger alone; configure memory_source.nvml "
        "on a GPU node"},
       {"devices", absl::StrCat(devices.size())}});
}

// `address` (the config field `field`) as start-up would take it:
// host:port, or when `unix_ok` also unix:/path. The socket's directory is
// not checked: it is often a volume that exists only where kvgated runs,
// while --validate runs anywhere.
absl::Status CheckListenAddress(absl::string_view field,
                                const std::string& address, bool unix_ok) {
  if (address.empty()) return absl::OkStatus();
  if (unix_ok && absl::StartsWith(address, "unix:")) return absl::OkStatus();
  if (absl::Status s = CheckHostPort(address); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", s.message()));
  }
  return absl::OkStatus();
}

// What start-up would refuse and --validate does not otherwise reach: the
// listen addresses and the lease journal's state_dir (start-up creates it,
// but not its parent). Certificates and token files are read by
// InitSecurity and ResolveServerConfig.
absl::Status CheckStartupInputs(const Server::Options& options) {
  const ServerSettings& s = options.settings;
  for (const auto& [field, address, unix_ok] :
       {std::tuple<absl::string_view, const std::string&, bool>{
            "grpc_address", s.grpc_address, true},
        {"metrics_address", s.metrics_address, false},
        {"health_address", options.health_address, false},
        {"ext_proc.listen_address", options.ext_proc.listen_address, true}}) {
    if (absl::Status st = CheckListenAddress(field, address, unix_ok);
        !st.ok()) {
      return st;
    }
  }
  const std::string& dir = s.lease_journal.state_dir;
  if (dir.empty() || IsDirectory(dir)) return absl::OkStatus();
  const std::string parent = ParentDirectory(dir);
  if (IsDirectory(parent)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "lease_journal.state_dir: '", dir, "' cannot be created: its parent '",
      parent, "' does not exist"));
}

}  // namespace

std::string StartupStage(const absl::Status& status) {
  const absl::optional<absl::Cord> stage = status.GetPayload(kStageUrl);
  return stage.has_value() ? std::string(*stage) : "start-up failed";
}

Server::Server(Options options) : options_(std::move(options)) {}

Server::~Server() {
  if (serving_ && !waited_) {
    Drain();
    Wait();
  }
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(Options options) {
  std::unique_ptr<Server> server =
      absl::WrapUnique(new Server(std::move(options)));
  if (absl::Status s = server->InitSecurity(); !s.ok()) return s;
  if (absl::Status s = server->InitPools(); !s.ok()) return s;
  if (absl::Status s = server->InitMetricsEndpoint(); !s.ok()) return s;
  const MemorySourceSettings& src = server->options_.settings.memory_source;
  server->guard_ =
      std::make_unique<MemoryGuard>(server->source_.get(), src.guard);
  server->ticker_ = std::make_unique<Ticker>(
      &server->registry_, server->guard_.get(), &src, server->metrics_.get());
  server->ticker_->Poll();
  if (absl::Status s = server->InitEnginePollers(); !s.ok()) return s;
  if (absl::Status s = server->StartListeners(); !s.ok()) return s;
  server->SetServing(true);
  server->ticker_->Start();
  for (auto& poller : server->engine_pollers_) poller->Start();
  server->serving_ = true;
  const ServerSettings& settings = server->options_.settings;
  // Logged once serving, so that a start-up failure stays one line.
  LogMemorySource(src, server->first_read_);
  LogInfo("listening",
          {{"address", settings.grpc_address},
           {"port", absl::StrCat(server->port_)},
           {"models", absl::StrCat(server->registry_.pools().size())},
           {"health_address", server->options_.health_address},
           {"tls", server->tls_mode_},
           {"auth", server->auth_mode_},
           {"memory_source", std::string(server->source_->Name())}});
  return server;
}

absl::StatusOr<Server::Validation> Server::Validate(Options options) {
  Validation validation;
  for (const ModelPoolSettings& m : options.settings.models) {
    validation.models.push_back(m.name);
  }
  if (absl::Status s = CheckStartupInputs(options); !s.ok()) {
    return InStage(kInvalidConfiguration, s);
  }
  Server server(std::move(options));
  if (absl::Status s = server.InitSecurity(); !s.ok()) return s;
  ServerSettings& settings = server.options_.settings;
  if (settings.memory_source.kind == MemorySourceSettings::Kind::kNvml) {
    // The weights are checked against the real devices at start-up.
    validation.memory_source =
        "nvml (not opened by --validate: device capacity is checked at "
        "start-up)";
    return validation;
  }
  absl::StatusOr<OpenedMemorySource> source = OpenMemorySource(settings);
  if (!source.ok()) return InStage(kMemorySourceFailed, source.status());
  KvgateMetrics metrics(server.options_.build_info);
  PoolBuildOptions pools;
  pools.source = &settings.memory_source;
  pools.devices = &source->first_read;
  pools.controller = settings.controller;
  pools.metrics = &metrics;
  absl::StatusOr<ModelRegistry> registry =
      BuildModelRegistry(std::move(settings.models), pools);
  if (!registry.ok()) return InStage(kInvalidConfiguration, registry.status());
  validation.memory_source = "static";
  return validation;
}

absl::Status Server::InitEnginePollers() {
  for (const auto& pool : registry_.pools()) {
    if (!pool->settings().engine.preallocates()) continue;
    absl::StatusOr<std::unique_ptr<EnginePoller>> poller =
        EnginePoller::Create(pool.get(), metrics_.get());
    if (!poller.ok()) return InStage(kInvalidConfiguration, poller.status());
    (*poller)->PollOnce();
    engine_pollers_.push_back(*std::move(poller));
  }
  return absl::OkStatus();
}

absl::Status Server::InitSecurity() {
  const ServerSettings& settings = options_.settings;
  credentials_ = grpc::InsecureServerCredentials();
  if (settings.tls.enabled()) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> made =
        MakeServerCredentials(settings.tls);
    if (!made.ok()) return InStage(kInvalidConfiguration, made.status());
    credentials_ = *std::move(made);
  }
  if (!settings.auth.tokens.empty() || !settings.auth.certificates.empty()) {
    absl::StatusOr<std::unique_ptr<Authenticator>> made =
        Authenticator::Create(settings.auth);
    if (!made.ok()) return InStage(kInvalidConfiguration, made.status());
    authenticator_ = *std::move(made);
  }
  // Logged with "listening", so that a start-up failure stays one line.
  tls_mode_ = TlsMode(settings.tls);
  auth_mode_ = AuthMode(settings.auth, authenticator_ != nullptr);
  return absl::OkStatus();
}

absl::Status Server::InitPools() {
  ServerSettings& settings = options_.settings;
  absl::StatusOr<OpenedMemorySource> source = OpenMemorySource(settings);
  if (!source.ok()) return InStage(kMemorySourceFailed, source.status());
  source_ = std::move(source->source);
  first_read_ = std::move(source->first_read);
  // The lease journal (crash recovery), replayed before any controller
  // exists.
  LeaseJournal::Replay replay;
  if (!settings.lease_journal.state_dir.empty()) {
    absl::StatusOr<LeaseJournal::Opened> opened =
        OpenLeaseJournal(settings.lease_journal, settings.models);
    if (!opened.ok()) return InStage(kLeaseJournalFailed, opened.status());
    journal_ = std::move(opened->journal);
    replay = std::move(opened->replay);
  }
  metrics_ = std::make_unique<KvgateMetrics>(options_.build_info);
  PoolBuildOptions pools;
  pools.source = &settings.memory_source;
  pools.devices = &first_read_;
  pools.controller = settings.controller;
  pools.metrics = metrics_.get();
  pools.journal = journal_.get();
  absl::StatusOr<ModelRegistry> registry =
      BuildModelRegistry(std::move(settings.models), pools);
  if (!registry.ok()) return InStage(kInvalidConfiguration, registry.status());
  registry_ = *std::move(registry);
  if (journal_ != nullptr) RestoreLeases(replay, registry_, *journal_);
  return absl::OkStatus();
}

absl::Status Server::InitMetricsEndpoint() {
  const std::string& address = options_.settings.metrics_address;
  if (address.empty()) return absl::OkStatus();
  absl::StatusOr<std::unique_ptr<MetricsServer>> started =
      MetricsServer::Start(address, metrics_->registry());
  if (!started.ok()) return InStage(kMetricsEndpointFailed, started.status());
  metrics_server_ = *std::move(started);
  LogInfo("metrics listening", {{"address", metrics_server_->address()}});
  return absl::OkStatus();
}

absl::Status Server::StartListeners() {
  const ServerSettings& settings = options_.settings;
  AdmissionService::Options service_options;
  service_options.max_sequences = static_cast<int>(settings.max_sequences);
  service_options.authenticator = authenticator_.get();
  service_ = std::make_unique<AdmissionService>(
      &registry_, RealClock(), metrics_.get(), service_options);
  ext_proc_ = std::make_unique<ExtProcService>(&registry_, RealClock(),
                                               options_.ext_proc);
  // Ready before the listeners open: gRPC's health service answers SERVING
  // from the moment a server starts, so a call that a passing health probe
  // lets through must find the services ready, not UNAVAILABLE.
  service_->SetReady(true);
  ext_proc_->SetReady(true);
  const std::string& ext_proc_address = options_.ext_proc.listen_address;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  MainListenerOptions main;
  main.address = settings.grpc_address;
  main.credentials = credentials_;
  main.services = {service_.get()};
  if (ext_proc_address.empty()) main.services.push_back(ext_proc_.get());
  main.max_concurrent_streams = options_.max_concurrent_streams;
  main.max_message_bytes = settings.max_message_bytes;
  main.socket_mode = settings.socket_mode;
  absl::StatusOr<BoundServer> bound = StartMainServer(main);
  if (!bound.ok()) return InStage(kCannotListen, bound.status());
  server_ = std::move(bound->server);
  port_ = bound->port;
  if (!options_.health_address.empty()) {
    absl::StatusOr<std::unique_ptr<grpc::Server>> started =
        StartHealthServer(options_.health_address);
    if (!started.ok()) return InStage(kCannotListen, started.status());
    health_server_ = *std::move(started);
  }
  if (!ext_proc_address.empty()) {
    absl::StatusOr<std::unique_ptr<grpc::Server>> started = StartExtProcServer(
        ext_proc_address, ext_proc_.get(), options_.ext_proc.max_body_bytes,
        options_.max_concurrent_streams);
    if (!started.ok()) return InStage(kCannotListen, started.status());
    ext_proc_server_ = *std::move(started);
    LogInfo("ext_proc listening", {{"address", ext_proc_address}});
  }
  return absl::OkStatus();
}

// Every health service this process answers, with the same statuses.
void Server::SetServing(bool serving) {
  for (grpc::Server* s : {server_.get(), health_server_.get()}) {
    if (s == nullptr) continue;
    grpc::HealthCheckServiceInterface* health = s->GetHealthCheckService();
    health->SetServingStatus(kServiceName, serving);
    health->SetServingStatus(serving);
  }
}

void Server::Drain() {
  if (!serving_ || draining_.exchange(true)) return;
  SetServing(false);
  service_->StartDraining();
  ext_proc_->StartDraining();
  for (const auto& pool : registry_.pools()) pool->controller().Drain();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (ext_proc_server_ != nullptr) {
    ext_proc_server_->Shutdown(std::chrono::system_clock::now() +
                               std::chrono::seconds(5));
  }
  if (health_server_ != nullptr) health_server_->Shutdown();
  drained_.Notify();
}

void Server::Wait() {
  if (!serving_ || waited_) return;
  server_->Wait();
  drained_.WaitForNotification();
  if (ext_proc_server_ != nullptr) {
    ext_proc_server_->Wait();
    const std::string path = UnixPath(options_.ext_proc.listen_address);
    if (!path.empty()) unlink(path.c_str());
  }
  if (health_server_ != nullptr) health_server_->Wait();
  // The servers are stopped, but a reactor's last callbacks (OnCancel,
  // OnDone) may still run on gRPC's executor: wait for them before the
  // controllers and metrics they use go away.
  if (!service_->WaitForCalls(absl::Seconds(5)) ||
      !ext_proc_->WaitForCalls(absl::Seconds(5))) {
    LogWarning("calls still open after shutdown");
  }
  ticker_->Stop();
  for (auto& poller : engine_pollers_) poller->Stop();
  const std::string socket_path = UnixPath(options_.settings.grpc_address);
  if (!socket_path.empty()) unlink(socket_path.c_str());
  waited_ = true;
  LogInfo("stopped");
}

std::string Server::metrics_address() const {
  return metrics_server_ == nullptr ? "" : metrics_server_->address();
}

}  // namespace kvgate
