// Tests of kvgated's configuration: reading text-format and JSON files,
// defaults, validation messages that name the field, and pool capacity.
#include "plugin/server/config.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "estimator/gpu_catalog.h"
#include "estimator/model_spec.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;

// A file named `name` in the test's temporary directory holding `text`,
// removed when this goes out of scope.
class TempFile {
 public:
  TempFile(const std::string& name, const std::string& text)
      : path_(::testing::TempDir() + "config_test_" + name) {
    std::ofstream out(path_, std::ios::trunc);
    out << text;
    EXPECT_TRUE(out.good()) << "cannot write " << path_;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

kvgate::v1::ServerConfig ParseText(const std::string& text) {
  kvgate::v1::ServerConfig config;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &config))
      << text;
  return config;
}

absl::StatusOr<ServerSettings> ResolveText(const std::string& text) {
  return ResolveServerConfig(ParseText(text));
}

uint64_t H100Allocatable() {
  absl::StatusOr<const GpuSpec*> gpu = FindGpu("H100-80GB");
  EXPECT_TRUE(gpu.ok());
  return gpu.ok() ? (*gpu)->allocatable_bytes : 0;
}

TEST(ResolveServerConfigTest, EmptyConfigServesLlama3On80GBH100OverUnixSocket) {
  absl::StatusOr<ServerSettings> s = ResolveServerConfig({});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->grpc_address, "unix:/tmp/kvgate.sock");
  EXPECT_EQ(s->metrics_address, "");
  ASSERT_EQ(s->models.size(), 1u);
  const ModelPoolSettings& m = s->models[0];
  EXPECT_EQ(m.name, "llama-3-8b");
  absl::StatusOr<ModelSpec> llama = LoadPreset("llama-3-8b");
  ASSERT_TRUE(llama.ok());
  EXPECT_EQ(m.model.spec().num_layers, llama->num_layers);
  EXPECT_EQ(m.model.options().block_size, 16u);
  EXPECT_EQ(m.model.options().tensor_parallel, 1u);
  EXPECT_THAT(m.gpus, ::testing::ElementsAre("0"));
  EXPECT_DOUBLE_EQ(m.gpu_memory_utilization, 0.9);
  EXPECT_EQ(m.runtime_overhead_bytes, 0u);
  EXPECT_FALSE(m.activation_sum);

  EXPECT_EQ(s->memory_source.kind, MemorySourceSettings::Kind::kStatic);
  EXPECT_EQ(s->memory_source.static_device_name, "H100-80GB");
  // What CUDA can allocate on an H100 80GB HBM3 (docs/design.md, "Memory
  // model").
  EXPECT_EQ(s->memory_source.static_device_bytes, 85017493504u);
  EXPECT_EQ(s->memory_source.static_device_bytes, H100Allocatable());

  EXPECT_EQ(s->controller.max_queue_requests, 1024u);
  EXPECT_EQ(s->controller.max_queue_bytes, 0u);
  EXPECT_EQ(s->controller.max_queue_wait, absl::Seconds(30));
  EXPECT_EQ(s->controller.lease_ttl, absl::Minutes(10));
  EXPECT_EQ(s->controller.backfill_limit, 8u);
  EXPECT_TRUE(s->controller.tenant_weights.empty());
}

constexpr char kSmallTextConfig[] = R"pb(
  # A small pool for tests.
  grpc_address: "127.0.0.1:5555"
  metrics_address: "127.0.0.1:9090"
  models {
    name: "small"
    preset: "gpt2"
    block_size: 32
    gpu_memory_utilization: 0.5
    runtime_overhead_bytes: 1000
    activation_sum: true
  }
  memory_source { static_source { memory_bytes: 2000000000 } }
  queue {
    max_requests: 7
    max_bytes: 12345
    max_queue_wait { seconds: 2 }
    backfill_limit: 3
  }
  tenant_weights { key: "gold" value: 2.5 }
  lease_ttl { seconds: 90 }
)pb";

// A model's prefill is chunked at vLLM's --max-num-batched-tokens default
// (8192) unless the config says otherwise; an explicit 0 turns it off.
TEST(ResolveServerConfigTest, ChunkedPrefillDefaultsToVllmsBatchedTokens) {
  absl::StatusOr<ServerSettings> by_default = ResolveServerConfig({});
  ASSERT_TRUE(by_default.ok()) << by_default.status();
  EXPECT_EQ(by_default->models[0].model.options().chunked_prefill_tokens,
            8192u);
  absl::StatusOr<ServerSettings> off =
      ResolveText(R"pb(models {
                         name: "m"
                         preset: "llama-3-8b"
                         chunked_prefill_tokens: 0
                       })pb");
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(off->models[0].model.options().chunked_prefill_tokens, 0u);
  absl::StatusOr<ServerSettings> set =
      ResolveText(R"pb(models {
                         name: "m"
                         preset: "llama-3-8b"
                         chunked_prefill_tokens: 2048
                       })pb");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->models[0].model.options().chunked_prefill_tokens, 2048u);
}

TEST(ReadServerConfigTest, ReadsTextFormat) {
  const TempFile file("small.textproto", kSmallTextConfig);
  const std::string& path = file.path();
  absl::StatusOr<kvgate::v1::ServerConfig> config = ReadServerConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ServerSettings> s = ResolveServerConfig(*config);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->grpc_address, "127.0.0.1:5555");
  EXPECT_EQ(s->metrics_address, "127.0.0.1:9090");
  ASSERT_EQ(s->models.size(), 1u);
  const ModelPoolSettings& m = s->models[0];
  EXPECT_EQ(m.name, "small");
  EXPECT_EQ(m.model.spec().model_type, "gpt2");
  EXPECT_EQ(m.model.options().block_size, 32u);
  EXPECT_DOUBLE_EQ(m.gpu_memory_utilization, 0.5);
  EXPECT_EQ(m.runtime_overhead_bytes, 1000u);
  EXPECT_TRUE(m.activation_sum);
  EXPECT_EQ(s->memory_source.kind, MemorySourceSettings::Kind::kStatic);
  EXPECT_EQ(s->memory_source.static_device_bytes, 2000000000u);
  EXPECT_EQ(s->controller.max_queue_requests, 7u);
  EXPECT_EQ(s->controller.max_queue_bytes, 12345u);
  EXPECT_EQ(s->controller.max_queue_wait, absl::Seconds(2));
  EXPECT_EQ(s->controller.backfill_limit, 3u);
  EXPECT_EQ(s->controller.lease_ttl, absl::Seconds(90));
  ASSERT_EQ(s->controller.tenant_weights.count("gold"), 1u);
  EXPECT_DOUBLE_EQ(s->controller.tenant_weights.at("gold"), 2.5);
}

TEST(ReadServerConfigTest, ReadsJsonByExtension) {
  const TempFile file("small.json", R"json({
    "grpcAddress": "unix:/tmp/kvgate-json.sock",
    "models": [{"name": "qwen", "preset": "qwen2.5-0.5b", "blockSize": 8,
                "gpus": ["GPU-abc"]}],
    "memorySource": {"nvml": {"libraryPath": "/opt/libnvml.so",
                              "pollInterval": "0.050s",
                              "freeMarginBytes": "1048576",
                              "failOpen": true}},
    "queue": {"maxQueueWait": "1.500s"},
    "tenantWeights": {"a": 1, "b": 3},
    "leaseTtl": "60s"
  })json");
  const std::string& path = file.path();
  absl::StatusOr<kvgate::v1::ServerConfig> config = ReadServerConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ServerSettings> s = ResolveServerConfig(*config);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->grpc_address, "unix:/tmp/kvgate-json.sock");
  ASSERT_EQ(s->models.size(), 1u);
  EXPECT_EQ(s->models[0].name, "qwen");
  EXPECT_EQ(s->models[0].model.spec().model_type, "qwen2");
  EXPECT_EQ(s->models[0].model.options().block_size, 8u);
  EXPECT_THAT(s->models[0].gpus, ::testing::ElementsAre("GPU-abc"));
  EXPECT_EQ(s->memory_source.kind, MemorySourceSettings::Kind::kNvml);
  EXPECT_EQ(s->memory_source.nvml_library, "/opt/libnvml.so");
  EXPECT_EQ(s->memory_source.poll_interval, absl::Milliseconds(50));
  EXPECT_EQ(s->memory_source.guard.free_margin_bytes, 1048576u);
  EXPECT_TRUE(s->memory_source.guard.fail_open);
  EXPECT_EQ(s->controller.max_queue_wait, absl::Milliseconds(1500));
  EXPECT_EQ(s->controller.lease_ttl, absl::Seconds(60));
  EXPECT_DOUBLE_EQ(s->controller.tenant_weights.at("b"), 3.0);
}

TEST(ReadServerConfigTest, TextFormatErrorGivesLineAndColumn) {
  const TempFile file("bad.textproto",
                      "grpc_address: \"unix:/tmp/x\"\n"
                      "models { nmae: \"x\" }\n");
  const std::string& path = file.path();
  absl::StatusOr<kvgate::v1::ServerConfig> config = ReadServerConfig(path);
  ASSERT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr(path));
  EXPECT_THAT(config.status().message(), HasSubstr("line 2, column"));
  EXPECT_THAT(config.status().message(), HasSubstr("nmae"));
}

TEST(ReadServerConfigTest, MalformedJsonIsInvalidArgumentNamingTheFile) {
  const TempFile file("bad.json", "{\"models\": [{\"name\": \"x\",}]");
  const std::string& path = file.path();
  absl::StatusOr<kvgate::v1::ServerConfig> config = ReadServerConfig(path);
  ASSERT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr(path));
}

TEST(ReadServerConfigTest, UnknownJsonFieldIsRejected) {
  const TempFile file("unknown.json", "{\"grpcAdress\": \"unix:/tmp/x\"}");
  const std::string& path = file.path();
  absl::StatusOr<kvgate::v1::ServerConfig> config = ReadServerConfig(path);
  ASSERT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr("grpcAdress"));
}

TEST(ReadServerConfigTest, MissingFileIsNotFound) {
  const std::string path = ::testing::TempDir() + "config_test_no_such.txtpb";
  std::remove(path.c_str());
  absl::StatusOr<kvgate::v1::ServerConfig> config = ReadServerConfig(path);
  ASSERT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr(path));
}

TEST(ResolveServerConfigTest, ReadsModelFromConfigJsonPath) {
  absl::StatusOr<ServerSettings> s =
      ResolveText(std::string("models { name: \"g\" config_path: \"") +
                  KVGATE_TEST_DATA_DIR + "/models/gpt2.json\" }");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->models[0].model.spec().model_type, "gpt2");
}

TEST(ResolveServerConfigTest, ModelNameDefaultsToPreset) {
  absl::StatusOr<ServerSettings> s = ResolveText("models { preset: \"gpt2\" }");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->models[0].name, "gpt2");
}

TEST(ResolveServerConfigTest, TensorParallelDefaultsGpusToFirstIndices) {
  absl::StatusOr<ServerSettings> s =
      ResolveText("models { preset: \"llama-3-8b\" tensor_parallel: 2 }");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(s->models[0].gpus, ::testing::ElementsAre("0", "1"));
}

// Each invalid configuration and the field its error must name.
struct InvalidCase {
  const char* name;
  const char* text;
  const char* field;
};

class InvalidConfigTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(InvalidConfigTest, ErrorNamesTheField) {
  absl::StatusOr<ServerSettings> s = ResolveText(GetParam().text);
  ASSERT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument)
      << s.status();
  EXPECT_THAT(s.status().message(), HasSubstr(GetParam().field));
}

INSTANTIATE_TEST_SUITE_P(
    Fields, InvalidConfigTest,
    ::testing::Values(
        InvalidCase{"DuplicateModel",
                    "models { name: \"a\" preset: \"gpt2\" } "
                    "models { name: \"a\" preset: \"gpt2\" }",
                    "models[1].name: duplicate model 'a'"},
        InvalidCase{"ModelWithoutName",
                    "models { config_path: \"/nowhere/config.json\" }",
                    "models[0].name"},
        InvalidCase{"PresetAndConfigPath",
                    "models { name: \"a\" preset: \"gpt2\" "
                    "config_path: \"/x.json\" }",
                    "models[0]: set config_path or preset, not both"},
        InvalidCase{"NeitherPresetNorConfigPath", "models { name: \"a\" }",
                    "models[0]: set config_path or preset"},
        InvalidCase{"UnknownPreset", "models { name: \"a\" preset: \"gpt-9\" }",
                    "models[0]"},
        InvalidCase{"MissingConfigPath",
                    "models { name: \"a\" config_path: \"/nowhere/c.json\" }",
                    "models[0]"},
        InvalidCase{"BadDtype",
                    "models { name: \"a\" preset: \"gpt2\" dtype: \"fp7\" }",
                    "models[0].dtype"},
        InvalidCase{"BadKvCacheDtype",
                    "models { name: \"a\" preset: \"gpt2\" "
                    "kv_cache_dtype: \"int3\" }",
                    "models[0].kv_cache_dtype"},
        InvalidCase{"BlockSizeTooBig",
                    "models { name: \"a\" preset: \"gpt2\" block_size: 1025 }",
                    "models[0].block_size"},
        InvalidCase{"TensorParallelTooBig",
                    "models { name: \"a\" preset: \"gpt2\" "
                    "tensor_parallel: 65 }",
                    "models[0].tensor_parallel"},
        InvalidCase{
            "BadAttention",
            "models { name: \"a\" preset: \"gpt2\" attention: \"sdpa\" }",
            "models[0].attention"},
        InvalidCase{"UtilizationAboveOne",
                    "models { name: \"a\" preset: \"gpt2\" "
                    "gpu_memory_utilization: 1.5 }",
                    "models[0].gpu_memory_utilization"},
        InvalidCase{"UtilizationNegative",
                    "models { name: \"a\" preset: \"gpt2\" "
                    "gpu_memory_utilization: -0.1 }",
                    "models[0].gpu_memory_utilization"},
        InvalidCase{"SecondModelUtilization",
                    "models { name: \"a\" preset: \"gpt2\" } "
                    "models { name: \"b\" preset: \"gpt2\" "
                    "gpu_memory_utilization: 2 }",
                    "models[1].gpu_memory_utilization"},
        InvalidCase{"UnknownStaticGpu",
                    "memory_source { static_source { gpu: \"Z9000\" } }",
                    "memory_source.static_source.gpu"},
        InvalidCase{"StaticGpuAndMemoryBytes",
                    "memory_source { static_source { gpu: \"H100-80GB\" "
                    "memory_bytes: 1000 } }",
                    "memory_source.static_source: set gpu or memory_bytes"},
        InvalidCase{"NvmlPollTooShort",
                    "memory_source { nvml { poll_interval { nanos: 1000 } } }",
                    "memory_source.nvml.poll_interval"},
        InvalidCase{"LeaseTtlTooShort", "lease_ttl { nanos: 500000000 }",
                    "lease_ttl"},
        InvalidCase{"LeaseTtlTooLong", "lease_ttl { seconds: 90000 }",
                    "lease_ttl"},
        InvalidCase{"NegativeTenantWeight",
                    "tenant_weights { key: \"t\" value: -1 }",
                    "tenant_weights[\"t\"]"},
        InvalidCase{"ZeroTenantWeight",
                    "tenant_weights { key: \"z\" value: 0 }",
                    "tenant_weights[\"z\"]"},
        InvalidCase{"InfiniteTenantWeight",
                    "tenant_weights { key: \"i\" value: inf }",
                    "tenant_weights[\"i\"]"},
        InvalidCase{"MaxQueueWaitZero", "queue { max_queue_wait { } }",
                    "queue.max_queue_wait"},
        InvalidCase{"MaxQueueWaitTooLong",
                    "queue { max_queue_wait { seconds: 7200 } }",
                    "queue.max_queue_wait"},
        InvalidCase{"MaxQueueWaitNegative",
                    "queue { max_queue_wait { seconds: -1 } }",
                    "queue.max_queue_wait"},
        InvalidCase{"MaxRequestsTooMany", "queue { max_requests: 2000000 }",
                    "queue.max_requests"},
        InvalidCase{"UnknownEngineKind",
                    "models { name: \"a\" preset: \"gpt2\" "
                    "engine { kind: \"tgi\" } }",
                    "models[0].engine.kind: unknown engine 'tgi'; expected "
                    "dynamic, vllm or sglang"},
        InvalidCase{"EngineMetricsUrlNotHttp",
                    "models { name: \"a\" preset: \"gpt2\" engine { kind: "
                    "\"vllm\" metrics_url: \"https://h:8000/metrics\" } }",
                    "models[0].engine.metrics_url"},
        InvalidCase{"EngineWithoutMetricsUrl",
                    "models { name: \"a\" preset: \"gpt2\" "
                    "engine { kind: \"sglang\" } }",
                    "models[0].engine.metrics_url: a sglang engine needs"},
        InvalidCase{"DynamicEngineWithMetricsUrl",
                    "models { name: \"a\" preset: \"gpt2\" engine { kind: "
                    "\"dynamic\" metrics_url: \"http://h:8000/metrics\" } }",
                    "models[0].engine.metrics_url: is only read for a vllm or "
                    "sglang engine"},
        InvalidCase{"ZeroPreemptionCooldown",
                    "models { name: \"a\" preset: \"gpt2\" engine { kind: "
                    "\"vllm\" metrics_url: \"http://h:8000/metrics\" "
                    "preemption_cooldown { } } }",
                    "models[0].engine.preemption_cooldown"},
        InvalidCase{"EnginePollTooShort",
                    "models { name: \"a\" preset: \"gpt2\" engine { kind: "
                    "\"vllm\" metrics_url: \"http://h:8000/metrics\" "
                    "poll_interval { nanos: 1000 } } }",
                    "models[0].engine.poll_interval"}),
    [](const ::testing::TestParamInfo<InvalidCase>& info) {
      return std::string(info.param.name);
    });

TEST(ResolveServerConfigTest, EngineKindsAndTheirDefaults) {
  absl::StatusOr<ServerSettings> s = ResolveText(
      "models { name: \"d\" preset: \"gpt2\" }\n"
      "models { name: \"v\" preset: \"gpt2\" max_model_len: 512 engine { "
      "kind: \"vllm\" metrics_url: \"http://127.0.0.1:8000/metrics\" } }\n"
      "models { name: \"s\" preset: \"gpt2\" engine { kind: \"sglang\" "
      "metrics_url: \"http://127.0.0.1:30000/metrics\" "
      "poll_interval { seconds: 1 } preemption_cooldown { seconds: 30 } } }");
  ASSERT_TRUE(s.ok()) << s.status();
  const EngineSettings& dynamic = s->models[0].engine;
  EXPECT_EQ(dynamic.kind, EngineSettings::Kind::kDynamic);
  EXPECT_FALSE(dynamic.preallocates());
  EXPECT_EQ(s->models[0].model.options().block_size, 16u);
  const EngineSettings& vllm = s->models[1].engine;
  EXPECT_EQ(vllm.kind, EngineSettings::Kind::kVllm);
  EXPECT_EQ(vllm.metrics_url, "http://127.0.0.1:8000/metrics");
  EXPECT_EQ(vllm.poll_interval, absl::Milliseconds(200));
  EXPECT_EQ(vllm.preemption_cooldown, absl::Seconds(5));
  EXPECT_EQ(s->models[1].model.max_model_len(), 512u);
  EXPECT_EQ(s->models[1].model.options().block_size, 16u);
  const EngineSettings& sglang = s->models[2].engine;
  EXPECT_EQ(sglang.kind, EngineSettings::Kind::kSglang);
  EXPECT_EQ(sglang.poll_interval, absl::Seconds(1));
  EXPECT_EQ(sglang.preemption_cooldown, absl::Seconds(30));
  EXPECT_EQ(s->models[2].model.options().block_size, 1u);  // SGLang pages
}

ModelPoolSettings Gpt2Pool(double utilization, uint64_t overhead) {
  absl::StatusOr<ServerSettings> s = ResolveText("models { preset: \"gpt2\" }");
  EXPECT_TRUE(s.ok()) << s.status();
  ModelPoolSettings pool = s->models[0];
  pool.gpu_memory_utilization = utilization;
  pool.runtime_overhead_bytes = overhead;
  return pool;
}

TEST(PoolCapacityTest, IsDeviceTimesUtilizationMinusWeightsAndOverhead) {
  const ModelPoolSettings pool = Gpt2Pool(0.5, 1000);
  const uint64_t weights = pool.model.weights_bytes();
  ASSERT_GT(weights, 0u);
  const uint64_t device = 4 * weights;
  absl::StatusOr<uint64_t> capacity = PoolCapacity(pool, device);
  ASSERT_TRUE(capacity.ok()) << capacity.status();
  EXPECT_EQ(*capacity, device / 2 - weights - 1000);
}

TEST(PoolCapacityTest, RoundsUsableBytesDown) {
  const ModelPoolSettings pool = Gpt2Pool(0.9, 0);
  const uint64_t device = pool.model.weights_bytes() * 2 + 7;
  absl::StatusOr<uint64_t> capacity = PoolCapacity(pool, device);
  ASSERT_TRUE(capacity.ok()) << capacity.status();
  const uint64_t usable =
      static_cast<uint64_t>(std::floor(static_cast<double>(device) * 0.9));
  EXPECT_EQ(*capacity, usable - pool.model.weights_bytes());
}

TEST(PoolCapacityTest, WeightsThatFillTheDeviceDoNotFit) {
  const ModelPoolSettings pool = Gpt2Pool(1.0, 0);
  const uint64_t weights = pool.model.weights_bytes();
  // Exactly the weights leaves nothing for KV: does not fit.
  absl::StatusOr<uint64_t> capacity = PoolCapacity(pool, weights);
  ASSERT_EQ(capacity.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(capacity.status().message(), HasSubstr("'gpt2' does not fit"));
  ASSERT_TRUE(PoolCapacity(pool, weights + 1).ok());
  EXPECT_EQ(*PoolCapacity(pool, weights + 1), 1u);
}

TEST(PoolCapacityTest, OverheadCanMakeAModelNotFit) {
  const ModelPoolSettings pool = Gpt2Pool(1.0, 10);
  const uint64_t weights = pool.model.weights_bytes();
  EXPECT_EQ(PoolCapacity(pool, weights + 10).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*PoolCapacity(pool, weights + 11), 1u);
}

}  // namespace
}  // namespace kvgate
