// MetricsServer: serves a registry at http://<host_port>/metrics in the
// Prometheus text format (prometheus-cpp's civetweb exposer).
//
//   auto server = MetricsServer::Start("0.0.0.0:9464", metrics.registry());
//   if (!server.ok()) return server.status();
//
// The server runs its own threads (civetweb's) and stops when destroyed; it
// keeps the registry alive while it runs.
#ifndef KVGATE_METRICS_METRICS_SERVER_H_
#define KVGATE_METRICS_METRICS_SERVER_H_

#include <memory>
#include <string>

#include "absl/base/attributes.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace kvgate {

// OK when `host_port` is host:port with a port in [0, 65535] (an IPv6 host
// in brackets), as Start and kvgated's TCP listeners take it; else
// InvalidArgument "'<host_port>' is not host:port (e.g. ...)". Lets
// `kvgated --validate` refuse what start-up would.
absl::Status CheckHostPort(absl::string_view host_port);

// An HTTP listener serving one registry's /metrics until destroyed.
class MetricsServer {
 public:
  // Listens on `host_port` ("127.0.0.1:9464", "0.0.0.0:0", "[::1]:0"; port 0
  // picks a free port) and serves `registry` at /metrics.
  // InvalidArgument for an address that is not host:port with a port in
  // [0, 65535] or a null registry; Unavailable when the address cannot be
  // bound (in use, or not an address of this host).
  ABSL_MUST_USE_RESULT static absl::StatusOr<std::unique_ptr<MetricsServer>>
  Start(const std::string& host_port,
        std::shared_ptr<prometheus::Registry> registry);

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  ~MetricsServer();

  // The bound address, host as given and the actual port ("127.0.0.1:40123"
  // when started on "127.0.0.1:0").
  std::string address() const;

 private:
  MetricsServer(std::unique_ptr<prometheus::Exposer> exposer,
                std::shared_ptr<prometheus::Registry> registry,
                std::string address);

  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<prometheus::Registry> registry_;
  const std::string address_;
};

}  // namespace kvgate

#endif  // KVGATE_METRICS_METRICS_SERVER_H_
