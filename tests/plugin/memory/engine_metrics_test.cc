#include "plugin/memory/engine_metrics.h"

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;
using ::testing::Optional;

// A vLLM (v1) page with two data-parallel engines, shaped like the output of
// vLLM's PrometheusStatLogger: model_name and engine labels, the deprecated
// usage gauge next to the new one, a counter's _created sibling, a
// histogram, and cache_config_info with CacheConfig's labels. Engine 0 has
// 28000 blocks of 16 tokens (448000), engine 1 12000 (192000).
constexpr char kVllmPage[] =
    R"(# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED: Use vllm:kv_cache_usage_perc instead.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.9
vllm:gpu_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.9
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.5
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
vllm:num_preemptions_total{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
# HELP vllm:num_preemptions_created Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_created gauge
vllm:num_preemptions_created{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.7294e+09
vllm:num_preemptions_created{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.7294e+09
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 31.5
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",cpu_offload_gb="0",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",is_attention_free="False",num_cpu_blocks="None",num_gpu_blocks="28000",num_gpu_blocks_override="None",prefix_caching_hash_algo="builtin",sliding_window="None",swap_space="4",swap_space_bytes="4294967296"} 1.0
vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",cpu_offload_gb="0",enable_prefix_caching="True",engine="1",gpu_memory_utilization="0.9",is_attention_free="False",num_cpu_blocks="None",num_gpu_blocks="12000",num_gpu_blocks_override="None",prefix_caching_hash_algo="builtin",sliding_window="None",swap_space="4",swap_space_bytes="4294967296"} 1.0
)";

// An SGLang page with two tensor-parallel ranks repeating the same figures,
// shaped like the output of SGLang's SchedulerMetricsCollector.
constexpr char kSglangPage[] =
    R"(# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{engine_type="unified",model_name="Qwen/Qwen3-8B",moe_ep_rank="0",pp_rank="0",priority="",tp_rank="0"} 7.0
sglang:num_running_reqs{engine_type="unified",model_name="Qwen/Qwen3-8B",moe_ep_rank="0",pp_rank="0",priority="",tp_rank="1"} 7.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{engine_type="unified",model_name="Qwen/Qwen3-8B",moe_ep_rank="0",pp_rank="0",priority="",tp_rank="0"} 0.42
sglang:token_usage{engine_type="unified",model_name="Qwen/Qwen3-8B",moe_ep_rank="0",pp_rank="0",priority="",tp_rank="1"} 0.42
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{engine_type="unified",model_name="Qwen/Qwen3-8B",moe_ep_rank="0",pp_rank="0",priority="",tp_rank="0"} 2.0
sglang:num_queue_reqs{engine_type="unified",model_name="Qwen/Qwen3-8B",moe_ep_rank="0",pp_rank="0",priority="",tp_rank="1"} 2.0
# HELP sglang:max_total_num_tokens Maximum total number of tokens in the KV cache pool.
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{engine_type="unified",model_name="Qwen/Qwen3-8B",moe_ep_rank="0",pp_rank="0",priority="",tp_rank="0"} 412640.0
sglang:max_total_num_tokens{engine_type="unified",model_name="Qwen/Qwen3-8B",moe_ep_rank="0",pp_rank="0",priority="",tp_rank="1"} 412640.0
# HELP sglang:num_retracted_reqs The number of retracted requests.
# TYPE sglang:num_retracted_reqs gauge
sglang:num_retracted_reqs{engine_type="unified",model_name="Qwen/Qwen3-8B",moe_ep_rank="0",pp_rank="0",priority="",tp_rank="0"} 1.0
# HELP sglang:num_retracted_requests_total Total number of retracted requests.
# TYPE sglang:num_retracted_requests_total counter
sglang:num_retracted_requests_total{engine_type="unified",model_name="Qwen/Qwen3-8B",moe_ep_rank="0",pp_rank="0",priority="",tp_rank="0"} 3.0
sglang:num_retracted_requests_total{engine_type="unified",model_name="Qwen/Qwen3-8B",moe_ep_rank="0",pp_rank="0",priority="",tp_rank="1"} 3.0
# HELP sglang:num_retracted_requests_created Total number of retracted requests.
# TYPE sglang:num_retracted_requests_created gauge
sglang:num_retracted_requests_created{engine_type="unified",model_name="Qwen/Qwen3-8B",moe_ep_rank="0",pp_rank="0",priority="",tp_rank="0"} 1.7294e+09
)";

EngineMetricsOptions Vllm(std::string model = "") {
  EngineMetricsOptions options;
  options.kind = EngineKind::kVllm;
  options.model_name = std::move(model);
  return options;
}

EngineMetricsOptions Sglang(std::string model = "") {
  EngineMetricsOptions options;
  options.kind = EngineKind::kSglang;
  options.model_name = std::move(model);
  return options;
}

EngineReading ReadOk(const std::string& page,
                     const EngineMetricsOptions& options) {
  absl::StatusOr<EngineReading> reading = ReadEnginePage(page, options);
  EXPECT_TRUE(reading.ok()) << reading.status();
  return reading.ok() ? *reading : EngineReading();
}

absl::Status ReadError(const std::string& page,
                       const EngineMetricsOptions& options) {
  absl::StatusOr<EngineReading> reading = ReadEnginePage(page, options);
  EXPECT_FALSE(reading.ok());
  return reading.status();
}

TEST(EngineMetricsTest, VllmTwoEnginesAreSummedAndUsageIsPoolWeighted) {
  const EngineReading reading = ReadOk(kVllmPage, Vllm());
  EXPECT_EQ(reading.pool_tokens, 640000u);  // 28000*16 + 12000*16
  EXPECT_EQ(reading.engines, 2);
  // (0.25 * 448000 + 0.5 * 192000) / 640000; the deprecated gauge (0.9) is
  // not read while the new one is there.
  ASSERT_TRUE(reading.usage.has_value());
  EXPECT_DOUBLE_EQ(*reading.usage, 0.325);
  EXPECT_THAT(reading.preemptions, Optional(12u));  // not the _created 1.7e9
  EXPECT_THAT(reading.running_requests, Optional(5u));
  EXPECT_THAT(reading.waiting_requests, Optional(4u));
}

TEST(EngineMetricsTest, VllmPrefersKvCacheSizeTokens) {
  std::string page = absl::StrReplaceAll(
      kVllmPage, {{"num_gpu_blocks=\"28000\"",
                   "kv_cache_size_tokens=\"450000\",num_gpu_blocks=\"28000\""},
                  {"num_gpu_blocks=\"12000\"",
                   "kv_cache_size_tokens=\"None\",num_gpu_blocks=\"12000\""}});
  // Engine 0 from kv_cache_size_tokens, engine 1 ("None") from its blocks.
  EXPECT_EQ(ReadOk(page, Vllm()).pool_tokens, 450000u + 192000u);
}

TEST(EngineMetricsTest, VllmFallsBackToTheDeprecatedUsageGauge) {
  const std::string page = absl::StrReplaceAll(
      kVllmPage, {{"vllm:kv_cache_usage_perc", "vllm:other_usage"}});
  EXPECT_THAT(ReadOk(page, Vllm()).usage, Optional(0.9));
}

TEST(EngineMetricsTest, VllmOneEngineWithoutOptionalMetrics) {
  const EngineReading reading = ReadOk(
      "vllm:cache_config_info{block_size=\"16\",engine=\"0\","
      "num_gpu_blocks=\"100\"} 1.0\n",
      Vllm());
  EXPECT_EQ(reading.pool_tokens, 1600u);
  EXPECT_EQ(reading.engines, 1);
  EXPECT_EQ(reading.usage, std::nullopt);
  EXPECT_EQ(reading.preemptions, std::nullopt);
  EXPECT_EQ(reading.running_requests, std::nullopt);
  EXPECT_EQ(reading.waiting_requests, std::nullopt);
}

TEST(EngineMetricsTest, VllmUnprofiledOrMissingPoolIsFailedPrecondition) {
  absl::Status status = ReadError(
      "vllm:cache_config_info{block_size=\"16\",engine=\"0\","
      "num_gpu_blocks=\"None\"} 1.0\n",
      Vllm());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("vllm:cache_config_info"));
  status = ReadError("vllm:kv_cache_usage_perc{engine=\"0\"} 0.5\n", Vllm());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(),
              HasSubstr("the page has no vllm:cache_config_info series"));
  // An SGLang page read as vLLM has no vLLM pool, and the other way round.
  status = ReadError(kSglangPage, Vllm());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  status = ReadError(kVllmPage, Sglang());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("sglang:max_total_num_tokens"));
  status = ReadError(
      "vllm:cache_config_info{block_size=\"0\",num_gpu_blocks=\"5\"} 1\n",
      Vllm());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("a pool of 0 tokens"));
}

TEST(EngineMetricsTest, VllmOverflowingPoolIsInvalidArgument) {
  const absl::Status status = ReadError(
      "vllm:cache_config_info{block_size=\"4294967296\","
      "num_gpu_blocks=\"4294967296\"} 1\n",
      Vllm());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("over 2^53"));
}

TEST(EngineMetricsTest, ModelFilterKeepsTheServedModelAndUnlabelledSeries) {
  const std::string page =
      absl::StrCat(kVllmPage,
                   "vllm:num_requests_running{engine=\"0\",model_name="
                   "\"other\"} 100.0\n");
  const EngineReading reading =
      ReadOk(page, Vllm("meta-llama/Llama-3.1-8B-Instruct"));
  EXPECT_EQ(reading.pool_tokens, 640000u);  // cache_config_info is unlabelled
  EXPECT_THAT(reading.running_requests, Optional(5u));
  // Without the filter, engine 0's largest series (the other model's) wins.
  EXPECT_THAT(ReadOk(page, Vllm()).running_requests, Optional(102u));
  // A model the SGLang engine does not serve has no pool.
  const absl::Status status = ReadError(kSglangPage, Sglang("other"));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(),
              HasSubstr("sglang:max_total_num_tokens series for model_name "
                        "\"other\""));
}

TEST(EngineMetricsTest, SglangTensorParallelRanksAreNotSummed) {
  const EngineReading reading = ReadOk(kSglangPage, Sglang("Qwen/Qwen3-8B"));
  EXPECT_EQ(reading.pool_tokens, 412640u);
  EXPECT_EQ(reading.engines, 1);
  EXPECT_THAT(reading.usage, Optional(0.42));
  EXPECT_THAT(reading.preemptions, Optional(3u));
  EXPECT_THAT(reading.running_requests, Optional(7u));
  EXPECT_THAT(reading.waiting_requests, Optional(2u));
}

TEST(EngineMetricsTest, SglangDataParallelRanksAreSummed) {
  const std::string page = R"(
sglang:max_total_num_tokens{dp_rank="0",model_name="qwen",tp_rank="0"} 60000
sglang:max_total_num_tokens{dp_rank="1",model_name="qwen",tp_rank="0"} 20000
sglang:token_usage{dp_rank="0",model_name="qwen",tp_rank="0"} 0.2
sglang:token_usage{dp_rank="1",model_name="qwen",tp_rank="0"} 0.8
sglang:num_running_reqs{dp_rank="0",model_name="qwen",tp_rank="0"} 3
sglang:num_running_reqs{dp_rank="1",model_name="qwen",tp_rank="0"} 4
sglang:num_retracted_requests_total{dp_rank="0",model_name="qwen",tp_rank="0"} 1
sglang:num_retracted_requests_total{dp_rank="1",model_name="qwen",tp_rank="0"} 2
)";
  const EngineReading reading = ReadOk(page, Sglang());
  EXPECT_EQ(reading.pool_tokens, 80000u);
  EXPECT_EQ(reading.engines, 2);
  ASSERT_TRUE(reading.usage.has_value());
  EXPECT_DOUBLE_EQ(*reading.usage, (0.2 * 60000 + 0.8 * 20000) / 80000);
  EXPECT_THAT(reading.preemptions, Optional(3u));
  EXPECT_THAT(reading.running_requests, Optional(7u));
  EXPECT_EQ(reading.waiting_requests, std::nullopt);
}

TEST(EngineMetricsTest, UsageWithoutMatchingPoolsIsThePlainMean) {
  const std::string page = R"(
vllm:cache_config_info{block_size="16",num_gpu_blocks="1000"} 1
vllm:kv_cache_usage_perc{engine="0"} 0.2
vllm:kv_cache_usage_perc{engine="1"} 0.6
)";
  const EngineReading reading = ReadOk(page, Vllm());
  ASSERT_TRUE(reading.usage.has_value());
  EXPECT_DOUBLE_EQ(*reading.usage, 0.4);
}

TEST(EngineMetricsTest, UsageOutsideTheUnitIntervalIsClamped) {
  const std::string pool = "sglang:max_total_num_tokens 1000\n";
  EXPECT_THAT(ReadOk(pool + "sglang:token_usage 1.25\n", Sglang()).usage,
              Optional(1.0));
  EXPECT_THAT(ReadOk(pool + "sglang:token_usage -0.5\n", Sglang()).usage,
              Optional(0.0));
}

TEST(EngineMetricsTest, NonFiniteOrNegativeValuesAreInvalidArgument) {
  const std::string pool = "sglang:max_total_num_tokens 1000\n";
  for (const std::string& line :
       {std::string("sglang:token_usage NaN\n"),
        std::string("sglang:token_usage +Inf\n"),
        std::string("sglang:num_queue_reqs -1\n"),
        std::string("sglang:num_retracted_requests_total NaN\n"),
        std::string("sglang:num_running_reqs 1e300\n")}) {
    const absl::Status status = ReadError(pool + line, Sglang());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << line;
    EXPECT_THAT(status.message(), HasSubstr(line.substr(0, line.find(' '))));
  }
  for (const char* value : {"NaN", "-Inf", "-1"}) {
    const absl::Status status = ReadError(
        absl::StrCat("sglang:max_total_num_tokens ", value, "\n"), Sglang());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << value;
    EXPECT_THAT(status.message(), HasSubstr("sglang:max_total_num_tokens"));
  }
}

TEST(EngineMetricsTest, MalformedPageIsInvalidArgument) {
  const std::string page =
      absl::StrCat(kSglangPage, "sglang:token_usage{tp_rank=\"0\" 0.5\n");
  const absl::Status status = ReadError(page, Sglang());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("line 27:"));
}

TEST(EngineMetricsTest, KindNames) {
  EXPECT_EQ(EngineKindName(EngineKind::kVllm), "vllm");
  EXPECT_EQ(EngineKindName(EngineKind::kSglang), "sglang");
}

}  // namespace
}  // namespace kvgate
