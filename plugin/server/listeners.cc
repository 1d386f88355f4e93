#include "plugin/server/listeners.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace kvgate {

std::string UnixPath(const std::string& address) {
  if (absl::StartsWith(address, "unix:")) return address.substr(5);
  return "";
}

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

absl::StatusOr<BoundServer> StartMainServer(
    const MainListenerOptions& options) {
  const std::string socket_path = UnixPath(options.address);
  if (!socket_path.empty()) {
    if (absl::Status s = CheckUnixSocketFree(socket_path); !s.ok()) return s;
  }
  grpc::ServerBuilder builder;
  BoundServer bound;
  builder.AddListeningPort(options.address,
                           options.credentials != nullptr
                               ? options.credentials
                               : grpc::InsecureServerCredentials(),
                           &bound.port);
  for (grpc::Service* service : options.services) {
    builder.RegisterService(service);
  }
  // A second kvgated on the same TCP port must fail, not share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             options.max_concurrent_streams);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                             static_cast<int>(options.max_message_bytes));
  // bind() creates the socket with 0777 & ~umask: with this umask it is
  // born with socket_mode, leaving no moment at which others may connect.
  const mode_t old_umask =
      socket_path.empty() ? 0 : umask(0777 & ~options.socket_mode);
  bound.server = builder.BuildAndStart();
  if (!socket_path.empty()) umask(old_umask);
  if (bound.server == nullptr || (socket_path.empty() && bound.port == 0)) {
    return absl::UnavailableError(
        absl::StrCat("could not bind ", options.address,
                     " (address in use or not permitted)"));
  }
  if (!socket_path.empty() &&
      chmod(socket_path.c_str(), static_cast<mode_t>(options.socket_mode)) !=
          0) {
    return absl::PermissionDeniedError(absl::StrCat(
        "cannot set the mode of ", socket_path, ": ", strerror(errno)));
  }
  return bound;
}

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

}  // namespace kvgate
