// kvgated's configuration: the ServerConfig proto (proto/kvgate/v1/
// config.proto) read from a file, defaults filled in, and every value checked
// before anything starts, so a bad file is one clear error at start-up (and
// from `kvgated --validate`).
#ifndef KVGATE_PLUGIN_SERVER_CONFIG_H_
#define KVGATE_PLUGIN_SERVER_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "estimator/serving.h"
#include "kvgate/v1/config.pb.h"
#include "plugin/admission/controller.h"
#include "plugin/admission/model_pool.h"
#include "plugin/journal/lease_journal.h"
#include "plugin/memory/memory_guard.h"
#include "plugin/memory/nvml_memory_source.h"
#include "plugin/security/auth.h"
#include "plugin/security/tls.h"

namespace kvgate {

inline constexpr char kDefaultGrpcAddress[] = "unix:/tmp/kvgate.sock";
inline constexpr char kDefaultPreset[] = "llama-3-8b";
inline constexpr char kDefaultStaticGpu[] = "H100-80GB";

struct MemorySourceSettings {
  enum class Kind { kStatic, kNvml };
  Kind kind = Kind::kStatic;
  // kStatic: bytes of one simulated device.
  uint64_t static_device_bytes = 0;
  std::string static_device_name;
  // kNvml.
  std::string nvml_library = "libnvidia-ml.so.1";
  absl::Duration poll_interval = absl::Milliseconds(500);
  MemoryGuard::Options guard;
};

struct ServerSettings {
  std::string grpc_address = kDefaultGrpcAddress;
  std::string metrics_address;
  std::vector<ModelPoolSettings> models;
  MemorySourceSettings memory_source;
  // Template for each pool's controller (capacity filled in per pool).
  Controller::Options controller;
  // Permissions of a unix grpc_address socket.
  uint32_t socket_mode = 0660;
  // TLS on a TCP grpc_address; !tls.enabled(): plaintext.
  TlsSettings tls;
  // Caller identities; empty (no tokens, no certificates): auth is off.
  Authenticator::Options auth;
  // Largest gRPC message and most sequences per request.
  uint64_t max_message_bytes = 1 << 20;
  uint32_t max_sequences = 4096;
  // The lease journal; an empty state_dir: none (leases in memory only).
  LeaseJournal::Options lease_journal;
};

// Parses an octal permission mode such as "0660" or "660".
// InvalidArgument for anything else or a value above 0777.
absl::StatusOr<uint32_t> ParseSocketMode(absl::string_view text);

// Reads a ServerConfig from `path`: JSON when the name ends in .json, text
// format otherwise. NotFound for a missing file; InvalidArgument with the
// parser's line and column for a malformed one.
absl::StatusOr<kvgate::v1::ServerConfig> ReadServerConfig(
    const std::string& path);

// Fills defaults, loads each model (preset or config.json) and checks every
// value. InvalidArgument names the offending field, e.g.
// "models[1].block_size: must be between 1 and 1024".
absl::StatusOr<ServerSettings> ResolveServerConfig(
    const kvgate::v1::ServerConfig& config);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_SERVER_CONFIG_H_
