// kvgated's gRPC listeners: the main one (Admission, and ext_proc unless it
// has its own), a separate ext_proc one for Envoy and a health-only one for
// Kubernetes probes. Each builder binds or fails with one status that says
// which address and why; none of them logs.
#ifndef KVGATE_PLUGIN_SERVER_LISTENERS_H_
#define KVGATE_PLUGIN_SERVER_LISTENERS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"

namespace kvgate {

// The path of a "unix:/path" address; empty for any other address.
std::string UnixPath(const std::string& address);

// gRPC unlinks an existing unix socket before binding, which would silently
// steal the address from a running kvgated. FailedPrecondition if the socket
// at `path` answers (or `path` is not a socket); a stale socket is removed.
// OK when nothing is at `path`.
absl::Status CheckUnixSocketFree(const std::string& path);

// What the main listener serves and how.
struct MainListenerOptions {
  // unix:/path or host:port.
  std::string address;
  // Transport security; null means plaintext.
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // Registered in order; not owned, and must outlive the server.
  std::vector<grpc::Service*> services;
  // Most concurrent calls (queued Admits included) per connection.
  int max_concurrent_streams = 4096;
  // Largest message received.
  uint64_t max_message_bytes = 1 << 20;
  // Permissions of a unix socket, set from its creation on.
  uint32_t socket_mode = 0660;
};

// A started gRPC server and the port it bound, as gRPC reports it (1 for a
// unix socket).
struct BoundServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

// Starts the main listener: refuses a unix socket another process serves
// (CheckUnixSocketFree), never shares a TCP port (SO_REUSEPORT off), keeps
// idle connections alive, and creates a unix socket with `socket_mode`.
// Unavailable when the address cannot be bound; PermissionDenied when the
// socket's mode cannot be set. Call grpc::EnableDefaultHealthCheckService
// first for the server to answer grpc.health.v1.Health.
absl::StatusOr<BoundServer> StartMainServer(const MainListenerOptions& options);

// The Envoy ext_proc `service` alone on its own listener at `address`, so
// that Envoy never reaches Admission and request bodies up to
// `max_body_bytes` fit in one message. Unavailable when it cannot bind.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartExtProcServer(
    const std::string& address, grpc::Service* service, uint64_t max_body_bytes,
    int max_concurrent_streams);

// A server at `address` (host:port) with no service but
// grpc.health.v1.Health (gRPC also adds reflection to every server), whose
// statuses the caller mirrors from the main server. Call
// grpc::EnableDefaultHealthCheckService(true) first. Unavailable when it
// cannot bind.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartHealthServer(
    const std::string& address);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_SERVER_LISTENERS_H_
