// EstimateTraining against training-step peaks measured on an H100
// (tests/data/calibration/train-peaks.json: torch 2.11, transformers 5.17,
// peft 0.21; see its "_how" and docs/calibration/training.md).
//
// Tolerance: every row's peak within 5 % of the measurement. Parameter
// counts, and trainable counts for LoRA rows, must match exactly.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "absl/strings/str_split.h"
#include "estimator/model_spec.h"
#include "estimator/planning/training.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvgate {
namespace {

constexpr double kTolerance = 0.05;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ModelSpec LoadCalibrationModel(const std::string& name) {
  const std::string dir = KVGATE_TEST_DATA_DIR;
  const std::string path = name == "gpt2"
                               ? dir + "/models/gpt2.json"
                               : dir + "/calibration/" + name + ".json";
  absl::StatusOr<ModelSpec> spec = LoadModelConfig(path);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

// The measured setups, as training options. "_qv" LoRA targets the query and
// value projections: q_proj,v_proj, or GPT-2's fused c_attn.
TrainingOptions OptionsFor(const std::string& setup, const ModelSpec& spec,
                           uint64_t batch, uint64_t seq) {
  TrainingOptions o;
  o.micro_batch_size = batch;
  o.sequence_length = seq;
  if (setup == "fp32_adamw") {
    o.precision = Precision::kFp32;
  } else if (setup == "amp_bf16_adamw") {
    o.precision = Precision::kAmpBf16;
  } else if (setup == "amp_bf16_adamw_ckpt") {
    o.precision = Precision::kAmpBf16;
    o.gradient_checkpointing = true;
  } else if (setup == "bf16_adamw") {
    o.precision = Precision::kBf16;
  } else if (setup == "fp32_sgd_momentum") {
    o.precision = Precision::kFp32;
    o.optimizer = Optimizer::kSgdMomentum;
  } else if (setup == "bf16_lora_r16_qv") {
    o.precision = Precision::kBf16;
    o.lora_rank = 16;
    o.lora_targets = spec.naming == ProjectionNaming::kGpt2
                         ? std::vector<std::string>{"c_attn"}
                         : std::vector<std::string>{"q_proj", "v_proj"};
  } else {
    ADD_FAILURE() << "unknown setup " << setup;
  }
  return o;
}

TEST(TrainingCalibrationTest, EveryMeasuredPeakWithinTolerance) {
  const nlohmann::json rows = nlohmann::json::parse(ReadFile(
      std::string(KVGATE_TEST_DATA_DIR) + "/calibration/train-peaks.json"));
  std::map<std::string, ModelSpec> specs;
  int checked = 0;
  double worst = 0;
  for (const auto& [key, row] : rows.items()) {
    if (key[0] == '_') continue;
    const std::string model = row.at("model");
    if (specs.count(model) == 0) specs[model] = LoadCalibrationModel(model);
    const ModelSpec& spec = specs[model];
    const TrainingOptions options =
        OptionsFor(row.at("setup"), spec, row.at("batch"), row.at("seq"));
    absl::StatusOr<TrainingEstimate> e = EstimateTraining(spec, options);
    ASSERT_TRUE(e.ok()) << key << ": " << e.status();
    EXPECT_EQ(e->parameters, row.at("params").get<uint64_t>()) << key;
    EXPECT_EQ(e->trainable_parameters, row.at("trainable").get<uint64_t>())
        << key;
    const double measured = row.at("peak_bytes").get<double>();
    const double error =
        (static_cast<double>(e->total_bytes) - measured) / measured;
    worst = std::max(worst, std::fabs(error));
    std::printf("%-42s measured %6.3f GB  ours %6.3f GB  %+6.1f%%  (%s)\n",
                key.c_str(), measured / 1e9, e->total_bytes / 1e9, 100 * error,
                e->peak.c_str());
    EXPECT_LE(std::fabs(error), kTolerance)
        << key << ": measured " << measured << ", estimated " << e->total_bytes;
    ++checked;
  }
  std::printf("worst row: %.1f%%\n", 100 * worst);
  EXPECT_EQ(checked, 24);
}

}  // namespace
}  // namespace kvgate
