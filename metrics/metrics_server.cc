#include "metrics/metrics_server.h"

#include <exception>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"

namespace kvgate {
namespace {

struct HostPort {
  std::string host;  // as given, brackets of an IPv6 literal kept
  int port = 0;
};

absl::StatusOr<HostPort> ParseHostPort(absl::string_view host_port,
                                       absl::string_view what) {
  const size_t colon = host_port.rfind(':');
  const auto invalid = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        what, "'", host_port,
        "' is not host:port (e.g. 0.0.0.0:9464, 127.0.0.1:0, [::1]:9464)"));
  };
  if (colon == absl::string_view::npos || colon == 0) return invalid();
  HostPort out;
  out.host = std::string(host_port.substr(0, colon));
  if (out.host.front() == '[' ? out.host.back() != ']'
                              : out.host.find(':') != std::string::npos) {
    return invalid();  // an IPv6 literal needs brackets
  }
  if (!absl::SimpleAtoi(host_port.substr(colon + 1), &out.port) ||
      out.port < 0 || out.port > 65535) {
    return invalid();
  }
  return out;
}

}  // namespace

absl::Status CheckHostPort(absl::string_view host_port) {
  return ParseHostPort(host_port, "").status();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host_port,
    std::shared_ptr<prometheus::Registry> registry) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("metrics server needs a registry");
  }
  absl::StatusOr<HostPort> parsed =
      ParseHostPort(host_port, "metrics address ");
  if (!parsed.ok()) return parsed.status();

  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // civetweb reports a bind failure by throwing from the constructor.
    exposer = std::make_unique<prometheus::Exposer>(host_port);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", host_port, ": ", e.what(),
                     " (is the port in use or the host not local?)"));
  }
  const std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.empty()) {
    return absl::UnavailableError(
        absl::StrCat("metrics server on ", host_port, " bound no port"));
  }
  exposer->RegisterCollectable(registry);
  return std::unique_ptr<MetricsServer>(
      new MetricsServer(std::move(exposer), std::move(registry),
                        absl::StrCat(parsed->host, ":", ports.front())));
}

MetricsServer::MetricsServer(std::unique_ptr<prometheus::Exposer> exposer,
                             std::shared_ptr<prometheus::Registry> registry,
                             std::string address)
    : exposer_(std::move(exposer)),
      registry_(std::move(registry)),
      address_(std::move(address)) {}

MetricsServer::~MetricsServer() = default;

std::string MetricsServer::address() const { return address_; }

}  // namespace kvgate
