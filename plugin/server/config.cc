#include "plugin/server/config.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "estimator/gpu_catalog.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"

namespace kvgate {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

// Collects text-format parse errors into one message.
class ErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (first_.empty()) {
      first_ = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ",
                            message);
    }
  }
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

absl::StatusOr<ServingModel> ResolveModel(const kvgate::v1::ModelConfig& m,
                                          const std::string& field) {
  if (!m.config_path().empty() && !m.preset().empty()) {
    return Invalid(field, "set config_path or preset, not both");
  }
  // A model named without a source must not silently become the default
  // preset (the wrong capacity for whatever the user meant).
  if (m.config_path().empty() && m.preset().empty()) {
    return Invalid(field, "set config_path or preset");
  }
  absl::StatusOr<ModelSpec> spec = !m.config_path().empty()
                                       ? LoadModelConfig(m.config_path())
                                       : LoadPreset(m.preset());
  if (!spec.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", spec.status().message()));
  }
  ServingOptions o;
  if (!m.dtype().empty()) {
    absl::StatusOr<DType> d = ParseDType(m.dtype());
    if (!d.ok()) return Invalid(field + ".dtype", d.status().message());
    o.weight_dtype = *d;
  }
  if (!m.kv_cache_dtype().empty() && m.kv_cache_dtype() != "auto") {
    absl::StatusOr<DType> d = ParseDType(m.kv_cache_dtype());
    if (!d.ok())
      return Invalid(field + ".kv_cache_dtype", d.status().message());
    o.kv_cache_dtype = *d;
  }
  if (m.block_size() > 1024) {
    return Invalid(field + ".block_size", "must be between 1 and 1024");
  }
  // SGLang's pool is paged by single tokens by default (--page-size 1);
  // vLLM's and the dynamic estimate's by blocks of 16.
  const uint32_t default_block = m.engine().kind() == "sglang" ? 1 : 16;
  o.block_size = m.block_size() == 0 ? default_block : m.block_size();
  if (m.tensor_parallel() > 64) {
    return Invalid(field + ".tensor_parallel", "must be between 1 and 64");
  }
  o.tensor_parallel = m.tensor_parallel() == 0 ? 1 : m.tensor_parallel();
  if (m.attention().empty() || m.attention() == "flash") {
    o.attention = AttentionImpl::kFlash;
  } else if (m.attention() == "eager") {
    o.attention = AttentionImpl::kEager;
  } else {
    return Invalid(field + ".attention", "expected flash or eager");
  }
  o.chunked_prefill_tokens = m.has_chunked_prefill_tokens()
                                 ? m.chunked_prefill_tokens()
                                 : kVllmMaxNumBatchedTokens;
  o.share_prompt_prefix = m.share_prompt_prefix();
  o.max_model_len = m.max_model_len();
  absl::StatusOr<ServingModel> model =
      ServingModel::Create(*std::move(spec), o);
  if (!model.ok()) return Invalid(field, model.status().message());
  return model;
}

// The token of a token_file, without surrounding whitespace (a file written
// by `echo` ends in a newline that is not part of the token).
absl::StatusOr<std::string> ReadTokenFile(const std::string& field,
                                          const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Invalid(field, absl::StrCat("cannot read '", path, "'"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(text.str()));
  if (token.empty()) {
    return Invalid(field, absl::StrCat("'", path, "' is empty"));
  }
  return token;
}

absl::Status ResolveAuth(const kvgate::v1::AuthConfig& auth,
                         const TlsSettings& tls, Authenticator::Options* out) {
  for (int i = 0; i < auth.tokens_size(); ++i) {
    const kvgate::v1::TokenIdentity& t = auth.tokens(i);
    const std::string field = absl::StrCat("auth.tokens[", i, "]");
    Authenticator::TokenIdentity identity;
    if (t.token_sha256().empty() == t.token_file().empty()) {
      return Invalid(field, "set token_sha256 or token_file (exactly one)");
    }
    if (!t.token_sha256().empty()) {
      absl::StatusOr<Sha256Digest> digest = ParseSha256Hex(t.token_sha256());
      if (!digest.ok()) {
        return Invalid(field + ".token_sha256", digest.status().message());
      }
      identity.token_sha256 = *digest;
    } else {
      absl::StatusOr<std::string> token =
          ReadTokenFile(field + ".token_file", t.token_file());
      if (!token.ok()) return token.status();
      identity.token_sha256 = Sha256(*token);
    }
    if (t.tenant().empty()) return Invalid(field + ".tenant", "is required");
    identity.tenant = t.tenant();
    identity.allow_critical = t.allow_critical();
    out->tokens.push_back(std::move(identity));
  }
  if (auth.certificates_size() > 0 && tls.client_ca_file.empty()) {
    return Invalid("auth.certificates",
                   "need tls.client_ca_file (client certificates are only "
                   "verified under mutual TLS)");
  }
  for (const kvgate::v1::CertificateIdentity& c : auth.certificates()) {
    out->certificates.push_back({c.name(), c.tenant(), c.allow_critical()});
  }
  if (out->tokens.empty() && out->certificates.empty()) return absl::OkStatus();
  // Create checks the rest (tenants, names, duplicates).
  absl::StatusOr<std::unique_ptr<Authenticator>> check =
      Authenticator::Create(*out);
  return check.status();
}

// socket_mode, tls, auth and limits.
absl::Status ResolveSecurity(const kvgate::v1::ServerConfig& config,
                             ServerSettings* s) {
  if (!config.socket_mode().empty()) {
    absl::StatusOr<uint32_t> mode = ParseSocketMode(config.socket_mode());
    if (!mode.ok()) return Invalid("socket_mode", mode.status().message());
    s->socket_mode = *mode;
  }
  const kvgate::v1::TlsConfig& t = config.tls();
  if (!t.cert_file().empty() || !t.key_file().empty() ||
      !t.client_ca_file().empty() || t.require_client_cert()) {
    if (t.cert_file().empty() || t.key_file().empty()) {
      return Invalid("tls", "cert_file and key_file are both required");
    }
    if (t.require_client_cert() && t.client_ca_file().empty()) {
      return Invalid("tls.require_client_cert", "needs tls.client_ca_file");
    }
    if (absl::StartsWith(s->grpc_address, "unix:")) {
      return Invalid(
          "tls", absl::StrCat("not used on a unix socket (grpc_address ",
                              s->grpc_address,
                              "): its file permissions (socket_mode) guard "
                              "it; use bearer tokens to tell callers apart"));
    }
    s->tls = {t.cert_file(), t.key_file(), t.client_ca_file(),
              t.require_client_cert()};
  }
  if (absl::Status a = ResolveAuth(config.auth(), s->tls, &s->auth); !a.ok()) {
    return a;
  }
  const kvgate::v1::LimitsConfig& l = config.limits();
  if (l.max_message_bytes() != 0) {
    if (l.max_message_bytes() < 4096 || l.max_message_bytes() > (64u << 20)) {
      return Invalid("limits.max_message_bytes",
                     "must be between 4096 and 67108864 (64 MiB)");
    }
    s->max_message_bytes = l.max_message_bytes();
  }
  if (l.max_sequences() != 0) {
    if (l.max_sequences() > 1000000) {
      return Invalid("limits.max_sequences", "must be at most 1000000");
    }
    s->max_sequences = l.max_sequences();
  }
  return absl::OkStatus();
}

// Resolves a model's engine block (absent: a dynamic engine).
absl::StatusOr<EngineSettings> ResolveEngine(const kvgate::v1::EngineConfig& e,
                                             const std::string& field) {
  // The kinds by name: a table, so that a new engine is one row.
  static constexpr struct {
    const char* name;
    EngineSettings::Kind kind;
  } kKinds[] = {{"dynamic", EngineSettings::Kind::kDynamic},
                {"vllm", EngineSettings::Kind::kVllm},
                {"sglang", EngineSettings::Kind::kSglang}};
  EngineSettings out;
  bool known = e.kind().empty();
  for (const auto& k : kKinds) {
    if (e.kind() == k.name) {
      out.kind = k.kind;
      known = true;
    }
  }
  if (!known) {
    return Invalid(field + ".kind",
                   absl::StrCat("unknown engine '", e.kind(),
                                "'; expected dynamic, vllm or sglang"));
  }
  if (!out.preallocates()) {
    if (!e.metrics_url().empty()) {
      return Invalid(field + ".metrics_url",
                     "is only read for a vllm or sglang engine; a dynamic "
                     "engine's budget comes from memory_source");
    }
    return out;
  }
  if (!absl::StartsWith(e.metrics_url(), "http://") ||
      e.metrics_url().size() <= 7) {
    return Invalid(field + ".metrics_url",
                   absl::StrCat("a ", e.kind(),
                                " engine needs its Prometheus endpoint as "
                                "http://host:port/metrics, got \"",
                                e.metrics_url(), "\""));
  }
  out.metrics_url = e.metrics_url();
  if (e.has_poll_interval()) {
    out.poll_interval = FromProto(e.poll_interval());
    if (out.poll_interval < absl::Milliseconds(10) ||
        out.poll_interval > absl::Minutes(1)) {
      return Invalid(field + ".poll_interval",
                     "must be between 10ms and 1 minute");
    }
  }
  if (e.has_preemption_cooldown()) {
    out.preemption_cooldown = FromProto(e.preemption_cooldown());
    if (out.preemption_cooldown <= absl::ZeroDuration() ||
        out.preemption_cooldown > absl::Hours(1)) {
      return Invalid(field + ".preemption_cooldown",
                     "must be more than 0 and at most 1 hour");
    }
  }
  return out;
}

// Resolves the models list (the default preset when none is given) into
// s->models.
absl::Status ResolveModels(const kvgate::v1::ServerConfig& config,
                           ServerSettings* s) {
  kvgate::v1::ServerConfig with_default = config;
  if (with_default.models().empty()) {
    kvgate::v1::ModelConfig* m = with_default.add_models();
    m->set_name(kDefaultPreset);
    m->set_preset(kDefaultPreset);
  }
  absl::flat_hash_set<std::string> names;
  for (int i = 0; i < with_default.models_size(); ++i) {
    const kvgate::v1::ModelConfig& m = with_default.models(i);
    const std::string field = absl::StrCat("models[", i, "]");
    std::string name = m.name();
    if (name.empty()) name = !m.preset().empty() ? m.preset() : "";
    if (name.empty()) return Invalid(field + ".name", "is required");
    if (!names.insert(name).second) {
      return Invalid(field + ".name",
                     absl::StrCat("duplicate model '", name, "'"));
    }
    absl::StatusOr<ServingModel> model = ResolveModel(m, field);
    if (!model.ok()) return model.status();
    const double util =
        m.gpu_memory_utilization() == 0 ? 0.9 : m.gpu_memory_utilization();
    if (!(util > 0 && util <= 1)) {
      return Invalid(field + ".gpu_memory_utilization", "must be in (0, 1]");
    }
    ModelPoolSettings pool{name, *std::move(model), {}, util, 0, false, {}};
    pool.runtime_overhead_bytes =
        m.has_runtime_overhead_bytes() ? m.runtime_overhead_bytes() : 0;
    pool.activation_sum = m.activation_sum();
    absl::StatusOr<EngineSettings> engine =
        ResolveEngine(m.engine(), field + ".engine");
    if (!engine.ok()) return engine.status();
    pool.engine = *std::move(engine);
    pool.gpus.assign(m.gpus().begin(), m.gpus().end());
    if (pool.gpus.empty()) {
      for (uint32_t g = 0; g < pool.model.options().tensor_parallel; ++g) {
        pool.gpus.push_back(absl::StrCat(g));
      }
    }
    s->models.push_back(std::move(pool));
  }
  return absl::OkStatus();
}

// Resolves memory_source.nvml into *out.
absl::Status ResolveNvmlSource(const kvgate::v1::NvmlSourceConfig& n,
                               MemorySourceSettings* out) {
  out->kind = MemorySourceSettings::Kind::kNvml;
  if (!n.library_path().empty()) out->nvml_library = n.library_path();
  if (n.has_poll_interval()) {
    out->poll_interval = FromProto(n.poll_interval());
    if (out->poll_interval < absl::Milliseconds(10) ||
        out->poll_interval > absl::Minutes(1)) {
      return Invalid("memory_source.nvml.poll_interval",
                     "must be between 10ms and 1m");
    }
  }
  if (n.free_margin_bytes() > 0) {
    out->guard.free_margin_bytes = n.free_margin_bytes();
  }
  out->guard.fail_open = n.fail_open();
  return absl::OkStatus();
}

// Resolves memory_source.static_source (a catalog GPU or a byte count) into
// *out.
absl::Status ResolveStaticSource(const kvgate::v1::StaticSourceConfig& st,
                                 MemorySourceSettings* out) {
  if (!st.gpu().empty() && st.memory_bytes() > 0) {
    return Invalid("memory_source.static_source",
                   "set gpu or memory_bytes, not both");
  }
  if (st.memory_bytes() > 0) {
    out->static_device_bytes = st.memory_bytes();
    out->static_device_name = "custom";
    return absl::OkStatus();
  }
  const std::string gpu = st.gpu().empty() ? kDefaultStaticGpu : st.gpu();
  absl::StatusOr<const GpuSpec*> spec = FindGpu(gpu);
  if (!spec.ok()) {
    return Invalid("memory_source.static_source.gpu", spec.status().message());
  }
  out->static_device_bytes = (*spec)->allocatable_bytes;
  out->static_device_name = std::string((*spec)->name);
  return absl::OkStatus();
}

// Resolves the queue limits, lease_ttl and tenant_weights into *c.
absl::Status ResolveQueueAndLeases(const kvgate::v1::ServerConfig& config,
                                   Controller::Options* c) {
  const kvgate::v1::QueueConfig& q = config.queue();
  if (q.max_requests() > 1000000) {
    return Invalid("queue.max_requests", "must be at most 1000000");
  }
  c->max_queue_requests = q.max_requests() == 0 ? 1024 : q.max_requests();
  c->max_queue_bytes = q.max_bytes();
  if (q.has_max_queue_wait()) {
    c->max_queue_wait = FromProto(q.max_queue_wait());
    if (c->max_queue_wait <= absl::ZeroDuration() ||
        c->max_queue_wait > absl::Hours(1)) {
      return Invalid("queue.max_queue_wait", "must be in (0, 1h]");
    }
  }
  if (q.backfill_limit() > 0) c->backfill_limit = q.backfill_limit();
  if (config.has_lease_ttl()) {
    c->lease_ttl = FromProto(config.lease_ttl());
    if (c->lease_ttl < absl::Seconds(1) || c->lease_ttl > absl::Hours(24)) {
      return Invalid("lease_ttl", "must be between 1s and 24h");
    }
  }
  for (const auto& [tenant, weight] : config.tenant_weights()) {
    if (!(weight > 0) || !std::isfinite(weight)) {
      return Invalid(absl::StrCat("tenant_weights[\"", tenant, "\"]"),
                     "must be a positive number");
    }
    c->tenant_weights[tenant] = weight;
  }
  return absl::OkStatus();
}

// Resolves lease_journal (state_dir, fsync policy and interval) into *out.
absl::Status ResolveLeaseJournal(const kvgate::v1::LeaseJournalConfig& journal,
                                 LeaseJournal::Options* out) {
  out->state_dir = journal.state_dir();
  if (!journal.fsync().empty()) {
    absl::StatusOr<LeaseJournal::FsyncPolicy> policy =
        LeaseJournal::ParseFsyncPolicy(journal.fsync());
    if (!policy.ok()) {
      return Invalid("lease_journal.fsync", policy.status().message());
    }
    out->fsync = *policy;
  }
  if (journal.has_fsync_interval()) {
    out->fsync_interval = FromProto(journal.fsync_interval());
    if (out->fsync_interval < absl::Milliseconds(1) ||
        out->fsync_interval > absl::Minutes(1)) {
      return Invalid("lease_journal.fsync_interval",
                     "must be between 1ms and 1m");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<uint32_t> ParseSocketMode(absl::string_view text) {
  uint32_t mode = 0;
  if (text.empty() || text.size() > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected an octal mode such as 0660, got '", text, "'"));
  }
  for (char c : text) {
    if (c < '0' || c > '7') {
      return absl::InvalidArgumentError(absl::StrCat(
          "expected an octal mode such as 0660, got '", text, "'"));
    }
    mode = mode * 8 + static_cast<uint32_t>(c - '0');
  }
  if (mode > 0777) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "': only permission bits (at most 0777) may be set"));
  }
  return mode;
}

absl::StatusOr<kvgate::v1::ServerConfig> ReadServerConfig(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot read config file '", path, "'"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  kvgate::v1::ServerConfig config;
  if (absl::EndsWith(path, ".json")) {
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = false;
    const auto status = google::protobuf::util::JsonStringToMessage(
        text.str(), &config, options);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", status.message().as_string()));
    }
    return config;
  }
  google::protobuf::TextFormat::Parser parser;
  ErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text.str(), &config)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", errors.first()));
  }
  return config;
}

absl::StatusOr<ServerSettings> ResolveServerConfig(
    const kvgate::v1::ServerConfig& config) {
  ServerSettings s;
  if (!config.grpc_address().empty()) s.grpc_address = config.grpc_address();
  s.metrics_address = config.metrics_address();
  // The sections are checked in this order, so the first error reported for
  // a config with several is stable.
  if (absl::Status st = ResolveModels(config, &s); !st.ok()) return st;
  const kvgate::v1::MemorySourceConfig& src = config.memory_source();
  if (absl::Status st =
          src.has_nvml()
              ? ResolveNvmlSource(src.nvml(), &s.memory_source)
              : ResolveStaticSource(src.static_source(), &s.memory_source);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = ResolveQueueAndLeases(config, &s.controller);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = ResolveSecurity(config, &s); !st.ok()) return st;
  if (absl::Status st =
          ResolveLeaseJournal(config.lease_journal(), &s.lease_journal);
      !st.ok()) {
    return st;
  }
  return s;
}

}  // namespace kvgate
