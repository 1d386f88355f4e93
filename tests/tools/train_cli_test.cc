// `kvgate train` (and `kvgate estimate --quick`) through the built binary:
// the JSON contract of docs/design.md and README.md, --quick, --gpu, --tokens,
// and exit code 2 with one stderr line for bad input.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/tools/cli_runner.h"

namespace kvgate {
namespace {

using ::testing::HasSubstr;

const std::string kQwen = std::string("--config=") + KVGATE_TEST_DATA_DIR +
                          "/calibration/Qwen2.5-0.5B.json";

nlohmann::json RunJson(std::vector<std::string> args) {
  args.insert(args.begin(), "train");
  args.push_back("--json");
  const CliResult r = RunCli(args);
  EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
  return nlohmann::json::parse(r.stdout_text);
}

TEST(TrainCliTest, JsonHasThePeakAndItsParts) {
  const nlohmann::json j =
      RunJson({kQwen, "--precision=bf16", "--micro-batch-size=4",
               "--sequence-length=512"});
  for (const char* key :
       {"total_bytes", "weights_bytes", "gradients_bytes", "optimizer_bytes",
        "activation_bytes", "trainable_parameters", "peak"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["trainable_parameters"], 494032768u);
  EXPECT_EQ(j["weights_bytes"], 2u * 494032768);
  // Measured 9,642,656,256 bytes on an H100 (train-peaks.json).
  EXPECT_NEAR(j["total_bytes"].get<double>(), 9642656256.0, 0.05 * 9.64e9);
  EXPECT_EQ(j["peak"], "forward-backward");
}

TEST(TrainCliTest, LoraTargetsCountAdapters) {
  const nlohmann::json j = RunJson({kQwen, "--precision=bf16", "--lora-rank=16",
                                    "--lora-targets=q_proj,v_proj"});
  EXPECT_EQ(j["trainable_parameters"], 1081344u);
  EXPECT_EQ(j["parameters"], 495114112u);
}

TEST(TrainCliTest, QuickShowsTheSeedRuleAndItsDistance) {
  const nlohmann::json j = RunJson({kQwen, "--precision=fp32", "--quick"});
  const nlohmann::json& q = j["rules_of_thumb"];
  EXPECT_EQ(q["training_bytes"], uint64_t{24} * 494032768);
  EXPECT_EQ(q["inference_fp32_bytes"], uint64_t{4} * 494032768);
  EXPECT_EQ(q["exact_total_bytes"], j["total_bytes"]);
  const double exact = j["total_bytes"].get<double>();
  EXPECT_NEAR(q["difference_percent"].get<double>(),
              100.0 * (24.0 * 494032768 - exact) / exact, 1e-6);
}

TEST(TrainCliTest, GpuAndTokensReportFitAndCompute) {
  const nlohmann::json j =
      RunJson({"--config=llama-3-8b", "--gpu=H100", "--gradient-checkpointing",
               "--tokens=1000000000000"});
  EXPECT_EQ(j["gpu"]["fits"], false);
  EXPECT_GT(j["gpu"]["gpus_to_fit"].get<uint64_t>(), 1u);
  EXPECT_GT(j["compute"]["gpu_days"].get<double>(), 0.0);
  EXPECT_NEAR(j["compute"]["flops"].get<double>(),
              6.0 * j["parameters"].get<double>() * 1e12, 1e20);
}

TEST(TrainCliTest, ZeroStageShardsOptimizerState) {
  const nlohmann::json one = RunJson({kQwen});
  const nlohmann::json sharded =
      RunJson({kQwen, "--zero-stage=1", "--data-parallel=8"});
  EXPECT_EQ(sharded["optimizer_bytes"].get<uint64_t>(),
            (one["optimizer_bytes"].get<uint64_t>() + 7) / 8);
}

TEST(TrainCliTest, TableOutputWithQuick) {
  const CliResult r = RunCli({"train", kQwen, "--quick"});
  EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_THAT(r.stdout_text, HasSubstr("peak / GPU"));
  EXPECT_THAT(r.stdout_text, HasSubstr("rule of thumb: training (24 B/param)"));
}

TEST(TrainCliTest, BadInputExitsTwoWithOneLine) {
  const std::vector<std::vector<std::string>> cases = {
      {"train", kQwen, "--optimizer=lion"},
      {"train", kQwen, "--precision=fp64"},
      {"train", kQwen, "--micro-batch-size=0"},
      {"train", kQwen, "--sequence-length=0"},
      {"train", kQwen, "--zero-stage=4"},
      {"train", kQwen, "--lora-rank=8", "--lora-targets=c_attn"},
      {"train", kQwen, "--qlora"},
      {"train", kQwen, "--gpu=Z9000"},
      {"train", kQwen, "--mfu=2"},
      {"train"},
      {"train", "--config=/nonexistent/config.json"},
      {"train", kQwen, "--no-such-flag"},
  };
  for (const auto& args : cases) {
    const CliResult r = RunCli(args);
    EXPECT_EQ(r.exit_code, 2) << args.back();
    EXPECT_EQ(Lines(r.stderr_text).size(), 1u)
        << args.back() << ": " << r.stderr_text;
    EXPECT_TRUE(r.stdout_text.empty()) << args.back();
  }
  const CliResult lora =
      RunCli({"train", kQwen, "--lora-rank=8", "--lora-targets=c_attn"});
  EXPECT_THAT(lora.stderr_text, HasSubstr("c_attn"));
}

TEST(EstimateCliTest, QuickShowsTheSeedServingRule) {
  const CliResult r = RunCli({"estimate", kQwen, "--quick", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  const nlohmann::json j = nlohmann::json::parse(r.stdout_text);
  const nlohmann::json& q = j["rules_of_thumb"];
  const uint64_t p = j["parameters"];
  EXPECT_EQ(q["inference_fp32_bytes"], 4 * p);
  EXPECT_EQ(q["serving_with_overhead_bytes"], p * 16 / 8 * 12 / 10);
  EXPECT_EQ(q["exact_total_bytes"], j["total_bytes"]);
}

}  // namespace
}  // namespace kvgate
