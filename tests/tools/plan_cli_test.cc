// The `kvgate plan` command-line contract, run against the built binary.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/tools/cli_runner.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;
using ::testing::StartsWith;

const std::string kLlama3 =
    "--config=" KVGATE_TEST_DATA_DIR "/models/Meta-Llama-3-8B.json";

nlohmann::json ParseJson(const CliResult& r) {
  nlohmann::json j = nlohmann::json::parse(r.stdout_text, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << r.stdout_text;
  return j;
}

TEST(PlanCliTest, JsonHasTheContractFields) {
  CliResult r = RunCli({"plan", kLlama3, "--gpu=H100-80GB",
                        "--gpu-memory-utilization=0.9", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(r.stderr_text, "");
  nlohmann::json j = ParseJson(r);
  for (const char* key : {"weights_bytes", "activation_bytes", "kv_cache_bytes",
                          "kv_cache_tokens", "max_concurrent_sequences", "gpu",
                          "gpu_memory_bytes", "gpu_memory_utilization"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["gpu"], "H100-80GB");
  EXPECT_EQ(j["gpu_memory_bytes"].get<uint64_t>(), 85017493504ull);
  EXPECT_EQ(j["weights_bytes"].get<uint64_t>(), 8030261248ull * 2);
  EXPECT_DOUBLE_EQ(j["gpu_memory_utilization"].get<double>(), 0.9);
  const uint64_t kv = j["kv_cache_bytes"];
  const uint64_t tokens = j["kv_cache_tokens"];
  EXPECT_EQ(tokens % 16, 0u);
  EXPECT_LE(tokens * 131072, kv);
  EXPECT_GT((tokens + 16) * 131072, kv);
  // Llama-3-8B's 8192-token context: tokens / 8192 whole sequences.
  EXPECT_EQ(j["max_concurrent_sequences"].get<uint64_t>(), tokens / 8192);
}

// gemma-2-9b's config says torch_dtype float32; vLLM serves it in bf16
// (dtype=auto), so its 9.2B parameters take about 18.5 GB and it fits a
// 40 GB A100.
TEST(PlanCliTest, Fp32ConfigIsPlannedWith16BitWeights) {
  CliResult r =
      RunCli({"plan", "--config=gemma-2-9b", "--gpu=A100-40GB", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text << r.stdout_text;
  nlohmann::json j = ParseJson(r);
  EXPECT_EQ(j["fits"], true);
  EXPECT_LT(j["weights_bytes"].get<uint64_t>(), uint64_t{20} << 30);
}

TEST(PlanCliTest, GpuMemoryBytesAndTensorParallel) {
  CliResult r =
      RunCli({"plan", "--config=llama-3-8b", "--gpu-memory-bytes=42949672960",
              "--tensor-parallel=2", "--max-model-len=4096", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  nlohmann::json j = ParseJson(r);
  EXPECT_EQ(j["gpu_memory_bytes"].get<uint64_t>(), 42949672960ull);
  EXPECT_EQ(j["tensor_parallel"].get<int>(), 2);
  EXPECT_EQ(j["max_model_len"].get<int>(), 4096);
  EXPECT_EQ(j["kv_cache_bytes_per_token"].get<uint64_t>(), 65536u);
}

TEST(PlanCliTest, TableWithoutJson) {
  CliResult r = RunCli({"plan", kLlama3, "--gpu=a100-80gb"});
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_THAT(r.stdout_text, HasSubstr("KV cache tokens"));
  EXPECT_THAT(r.stdout_text, HasSubstr("max concurrency"));
}

// Bad input: exit 2, exactly one line on stderr naming the problem.
void ExpectUsageError(const std::vector<std::string>& args,
                      const std::string& mentions) {
  CliResult r = RunCli(args);
  EXPECT_EQ(r.exit_code, 2) << r.stdout_text << r.stderr_text;
  ASSERT_THAT(Lines(r.stderr_text), SizeIs(1)) << r.stderr_text;
  EXPECT_THAT(r.stderr_text, StartsWith("kvgate plan: error: "));
  EXPECT_THAT(r.stderr_text, HasSubstr(mentions));
}

TEST(PlanCliTest, BadInputExitsTwoWithOneLine) {
  ExpectUsageError({"plan", kLlama3, "--gpu=H900"}, "unknown GPU 'H900'");
  ExpectUsageError(
      {"plan", kLlama3, "--gpu=h100", "--gpu-memory-utilization=1.5"},
      "gpu-memory-utilization");
  ExpectUsageError(
      {"plan", kLlama3, "--gpu=h100", "--gpu-memory-utilization=0"},
      "gpu-memory-utilization");
  ExpectUsageError({"plan", kLlama3, "--gpu-memory-bytes=0"},
                   "gpu-memory-bytes");
  ExpectUsageError({"plan", kLlama3}, "exactly one of --gpu");
  ExpectUsageError({"plan", kLlama3, "--gpu=h100", "--gpu-memory-bytes=1"},
                   "exactly one of --gpu");
  ExpectUsageError({"plan", kLlama3, "--gpu=h100", "--max-num-seqs=0"},
                   "max-num-seqs");
  ExpectUsageError({"plan", kLlama3, "--gpu=h100", "--max-model-len=0"},
                   "max-model-len");
  ExpectUsageError({"plan", "--config=/nonexistent/config.json", "--gpu=h100"},
                   "config.json");
}

TEST(PlanCliTest, ModelThatDoesNotFitExitsOneAndSaysSo) {
  CliResult r = RunCli({"plan", "--config=mixtral-8x7b", "--gpu=A100-80GB"});
  EXPECT_EQ(r.exit_code, 1);
  ASSERT_THAT(Lines(r.stderr_text), SizeIs(1)) << r.stderr_text;
  EXPECT_THAT(r.stderr_text, HasSubstr("model does not fit"));
  EXPECT_THAT(r.stderr_text, HasSubstr("tensor parallel 2"));

  CliResult j =
      RunCli({"plan", "--config=mixtral-8x7b", "--gpu=A100-80GB", "--json"});
  EXPECT_EQ(j.exit_code, 1);
  nlohmann::json out = ParseJson(j);
  EXPECT_EQ(out["fits"], false);
  EXPECT_EQ(out["min_tensor_parallel"].get<int>(), 2);
}

TEST(PlanCliTest, HelpDocumentsExitCodes) {
  CliResult r = RunCli({"plan", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.stdout_text, HasSubstr("does not fit"));
  EXPECT_THAT(r.stdout_text, HasSubstr("--gpu-memory-bytes"));
}

}  // namespace
}  // namespace kvgate
