// Server: kvgated as a whole, without its command line. Start() builds every
// layer in order (transport security -> memory source -> lease journal ->
// metrics -> model pools -> ticker -> services -> listeners) and serves;
// Drain() is what SIGTERM does; Wait() returns once the server has drained
// and stopped.
//
//   Server::Options options;
//   options.settings = *ResolveServerConfig(config);
//   absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(options);
//   if (!server.ok()) { LogError(StartupStage(server.status()), ...); }
//   ... (*server)->Drain() from a signal thread ...
//   (*server)->Wait();
//
// Logs as kvgated does ("model loaded", "listening", "stopped", ...), except
// the start-up failure itself, which the caller reports.
#ifndef KVGATE_PLUGIN_SERVER_SERVER_H_
#define KVGATE_PLUGIN_SERVER_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/grpcpp.h"
#include "metrics/metrics.h"
#include "metrics/metrics_server.h"
#include "plugin/admission/model_pool.h"
#include "plugin/ext_proc/ext_proc_options.h"
#include "plugin/ext_proc/ext_proc_service.h"
#include "plugin/journal/lease_journal.h"
#include "plugin/memory/memory_guard.h"
#include "plugin/memory/memory_source.h"
#include "plugin/security/auth.h"
#include "plugin/server/config.h"
#include "plugin/server/engine_poller.h"
#include "plugin/server/kvgate_service.h"
#include "plugin/server/ticker.h"

namespace kvgate {

// The part of start-up that `status` (from Server::Start or
// Server::Validate) failed in, as kvgated's one error line names it:
// "invalid configuration", "memory source failed", "lease journal failed",
// "metrics endpoint failed" or "cannot listen"; "start-up failed" for a
// status that names none.
std::string StartupStage(const absl::Status& status);

// kvgated's admission server: the model pools, the Admission and ext_proc
// services, the metrics endpoint and up to three gRPC listeners. Thread-safe
// where noted; Start, Wait and the destructor are for one owning thread.
class Server {
 public:
  struct Options {
    // The resolved configuration (ResolveServerConfig). Defaults: the
    // ServerSettings defaults (unix:/tmp/kvgate.sock, no metrics endpoint,
    // no models: set at least one).
    ServerSettings settings;
    // The ext_proc service (ResolveExtProcConfig). An empty listen_address
    // (the default) serves it on the main listener.
    ExtProcOptions ext_proc;
    // host:port of a second listener that serves only grpc.health.v1.Health
    // (for Kubernetes gRPC probes); empty (the default): none.
    std::string health_address;
    // Most concurrent calls (queued Admits included) per connection, on the
    // main and ext_proc listeners.
    int max_concurrent_streams = 4096;
    // Version and revision for the build-info metric.
    KvgateMetrics::Options build_info;
  };

  // What Validate checked.
  struct Validation {
    // The models, in configuration order.
    std::vector<std::string> models;
    // How the memory source was checked, e.g. "static".
    std::string memory_source;
  };

  // Builds everything and starts serving: health SERVING, the ticker
  // running, "listening" logged. On failure nothing is left running and the
  // status names its stage (StartupStage).
  static absl::StatusOr<std::unique_ptr<Server>> Start(Options options);

  // What `kvgated --validate` checks, starting nothing: credentials and
  // authenticator, and for a static memory source each pool's capacity and
  // controller ("model loaded" is logged). An nvml source is not opened, so
  // that a config can be checked where there is no GPU; the lease journal
  // is left alone. Errors as Start's.
  static absl::StatusOr<Validation> Validate(Options options);

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  // Drains and waits, unless Wait() has returned.
  ~Server();

  // Stops admitting and stops the listeners: health NOT_SERVING, both
  // services draining (Admit answers DRAINING), every controller drains its
  // queue, then each listener shuts down with a 5 s deadline. Thread-safe;
  // calls after the first return at once.
  void Drain();

  // Blocks until Drain() has stopped every listener, waits for the last
  // calls, stops the ticker, removes unix sockets and logs "stopped". Call
  // once.
  void Wait();

  // The port the main listener bound, as gRPC reports it (for a unix socket
  // that is not a TCP port: 1).
  int port() const { return port_; }
  // The address of the metrics endpoint with its bound port; empty when
  // there is none.
  std::string metrics_address() const;
  const ModelRegistry& registry() const { return registry_; }

 private:
  explicit Server(Options options);

  // The start-up steps, in order; each returns a status naming its stage.
  absl::Status InitSecurity();
  absl::Status InitPools();
  absl::Status InitMetricsEndpoint();
  // One EnginePoller per vllm or sglang pool, each polled once.
  absl::Status InitEnginePollers();
  absl::Status StartListeners();
  void SetServing(bool serving);

  Options options_;
  std::string tls_mode_;
  std::string auth_mode_;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
  std::unique_ptr<Authenticator> authenticator_;
  std::unique_ptr<MemorySource> source_;
  std::vector<DeviceMemory> first_read_;
  std::unique_ptr<LeaseJournal> journal_;
  // Before the registry: the controllers report to it until destroyed.
  std::unique_ptr<KvgateMetrics> metrics_;
  ModelRegistry registry_;
  std::unique_ptr<MetricsServer> metrics_server_;
  std::unique_ptr<MemoryGuard> guard_;
  std::unique_ptr<Ticker> ticker_;
  std::vector<std::unique_ptr<EnginePoller>> engine_pollers_;
  std::unique_ptr<AdmissionService> service_;
  std::unique_ptr<ExtProcService> ext_proc_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_server_;
  std::unique_ptr<grpc::Server> ext_proc_server_;
  int port_ = 0;
  bool serving_ = false;  // Start() completed
  bool waited_ = false;   // Wait() returned
  std::atomic<bool> draining_{false};
  absl::Notification drained_;
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_SERVER_SERVER_H_
