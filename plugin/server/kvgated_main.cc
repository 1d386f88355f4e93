// kvgated: the kvgate admission sidecar.
//
// The command line around plugin/server/server.h: flags -> config (the file,
// or the embedded default, then flag overrides) -> Server::Start, and SIGTERM
// or SIGINT -> Server::Drain. With no flags it serves the built-in llama-3-8b
// preset on a simulated H100 80GB over unix:/tmp/kvgate.sock, so it runs on
// any machine.
#include <signal.h>

#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "plugin/base/json_log.h"
#include "plugin/ext_proc/ext_proc_options.h"
#include "plugin/server/config.h"
#include "plugin/server/server.h"

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

constexpr char kVersion[] = "0.1.0";
#ifndef KVGATE_REVISION
#define KVGATE_REVISION "unknown"
#endif

int Fail(absl::string_view what, const absl::Status& status) {
  LogError(what, {{"error", std::string(status.message())}});
  return 1;
}

// `config` with the flags that override it applied.
kvgate::v1::ServerConfig WithFlagOverrides(kvgate::v1::ServerConfig config) {
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
  return config;
}

// The Server's options from the config file (or the embedded default) and
// the flags. InvalidArgument/NotFound as ReadServerConfig and the resolvers
// return them.
absl::StatusOr<Server::Options> OptionsFromFlags() {
  kvgate::v1::ServerConfig config;
  if (const std::string path = absl::GetFlag(FLAGS_config); !path.empty()) {
    absl::StatusOr<kvgate::v1::ServerConfig> read = ReadServerConfig(path);
    if (!read.ok()) return read.status();
    config = *std::move(read);
  }
  config = WithFlagOverrides(std::move(config));
  absl::StatusOr<ServerSettings> settings = ResolveServerConfig(config);
  if (!settings.ok()) return settings.status();
  absl::StatusOr<ExtProcOptions> ext_proc = ResolveExtProcConfig(
      config.ext_proc(), settings->controller.max_queue_wait);
  if (!ext_proc.ok()) return ext_proc.status();
  Server::Options options;
  options.settings = *std::move(settings);
  options.ext_proc = *std::move(ext_proc);
  options.health_address = absl::GetFlag(FLAGS_health_address);
  options.max_concurrent_streams =
      static_cast<int>(absl::GetFlag(FLAGS_max_concurrent_streams));
  options.build_info = KvgateMetrics::Options{kVersion, KVGATE_REVISION};
  return options;
}

// --validate: checks `options` and prints one line on stdout (exit code 0),
// or logs why not (exit code 1).
int Validate(Server::Options options) {
  const std::string address = options.settings.grpc_address;
  absl::StatusOr<Server::Validation> valid =
      Server::Validate(std::move(options));
  if (!valid.ok()) return Fail(StartupStage(valid.status()), valid.status());
  std::cout << "kvgated: configuration is valid: models "
            << absl::StrJoin(valid->models, ", ") << "; memory source "
            << valid->memory_source << "; listen " << address << std::endl;
  return 0;
}

int Run() {
  // Block the shutdown signals in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<Server::Options> options = OptionsFromFlags();
  if (!options.ok()) return Fail("invalid configuration", options.status());
  if (absl::GetFlag(FLAGS_validate)) return Validate(*std::move(options));
  absl::StatusOr<std::unique_ptr<Server>> server =
      Server::Start(*std::move(options));
  if (!server.ok()) return Fail(StartupStage(server.status()), server.status());

  // Wait for SIGTERM/SIGINT, then drain: no new admits, every queued
  // request answered, then the server stops.
  std::thread signal_thread([&signals, s = server->get()] {
    int sig = 0;
    sigwait(&signals, &sig);
    LogInfo("draining", {{"signal", strsignal(sig)}});
    s->Drain();
  });
  (*server)->Wait();
  signal_thread.join();
  return 0;
}

}  // namespace
}  // namespace kvgate

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kvgated: admission sidecar that checks each request batch's KV-cache "
      "and activation bytes against GPU memory.\n"
      "Usage: kvgated [--config=FILE] [--grpc_address=unix:/path|host:port] "
      "[--metrics_address=host:port] [--validate] [--version]");
  // --version: the release and the source revision it was built from.
  absl::FlagsUsageConfig usage_config;
  usage_config.version_string = [] {
    return absl::StrCat("kvgated ", kvgate::kVersion, " (revision ",
                        KVGATE_REVISION, ")\n");
  };
  absl::SetFlagsUsageConfig(usage_config);
  absl::ParseCommandLine(argc, argv);
  // Debian's Abseil is built without NDEBUG, so by default every Mutex::Lock
  // (gRPC's included) also updates a process-wide lock-order graph under a
  // global lock: 3.7% of kvgated's CPU under load (bench/RESULTS.md). The
  // unit tests keep the check on, and TSan checks lock order.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return kvgate::Run();
}
