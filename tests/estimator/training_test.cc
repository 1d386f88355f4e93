// EstimateTraining's accounting rules, one behaviour per test.
#include "estimator/planning/training.h"

#include "estimator/model_spec.h"
#include "estimator/parameters.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

ModelSpec Qwen() {
  absl::StatusOr<ModelSpec> s = LoadModelConfig(
      std::string(KVGATE_TEST_DATA_DIR) + "/calibration/Qwen2.5-0.5B.json");
  EXPECT_TRUE(s.ok()) << s.status();
  return *s;
}

TrainingEstimate Estimate(const ModelSpec& spec, const TrainingOptions& o) {
  absl::StatusOr<TrainingEstimate> e = EstimateTraining(spec, o);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? *e : TrainingEstimate{};
}

TEST(TrainingTest, PrecisionDecidesBytesPerParameter) {
  const ModelSpec spec = Qwen();
  const uint64_t p = CountParameters(spec).total;
  TrainingOptions o;
  o.precision = Precision::kFp32;
  TrainingEstimate e = Estimate(spec, o);
  EXPECT_EQ(e.weights_bytes, 4 * p);
  EXPECT_EQ(e.gradients_bytes, 4 * p);
  EXPECT_EQ(e.optimizer_bytes, 8 * p);
  EXPECT_EQ(e.optimizer_step_temp_bytes, 4 * p);
  o.precision = Precision::kBf16;
  e = Estimate(spec, o);
  EXPECT_EQ(e.weights_bytes, 2 * p);
  EXPECT_EQ(e.gradients_bytes, 2 * p);
  EXPECT_EQ(e.optimizer_bytes, 4 * p);
  o.precision = Precision::kAmpBf16;  // fp32 master weights, autocast copies
  e = Estimate(spec, o);
  EXPECT_EQ(e.weights_bytes, 4 * p);
  EXPECT_EQ(e.optimizer_bytes, 8 * p);
  EXPECT_GT(e.autocast_weight_copy_bytes, 0u);
}

TEST(TrainingTest, OptimizerStateSizes) {
  const ModelSpec spec = Qwen();
  const uint64_t p = CountParameters(spec).total;
  TrainingOptions o;
  o.precision = Precision::kFp32;
  o.optimizer = Optimizer::kAdamW8bit;
  EXPECT_EQ(Estimate(spec, o).optimizer_bytes, 2 * p);
  o.optimizer = Optimizer::kSgdMomentum;
  EXPECT_EQ(Estimate(spec, o).optimizer_bytes, 4 * p);
  EXPECT_EQ(Estimate(spec, o).optimizer_step_temp_bytes, 0u);
  o.optimizer = Optimizer::kAdafactor;
  EXPECT_LT(Estimate(spec, o).optimizer_bytes, p / 50);  // factored
}

TEST(TrainingTest, PeakIsTheLargerMomentNotTheSum) {
  TrainingOptions o;
  o.micro_batch_size = 1;
  o.sequence_length = 16;  // tiny activations: the optimizer step wins
  const TrainingEstimate e = Estimate(Qwen(), o);
  EXPECT_EQ(e.peak, "optimizer-step");
  EXPECT_EQ(e.total_bytes, e.optimizer_step_peak_bytes);
  EXPECT_LT(e.total_bytes, e.weights_bytes + e.gradients_bytes +
                               e.optimizer_bytes + e.activation_bytes +
                               e.optimizer_step_temp_bytes);
  o.sequence_length = 4096;
  EXPECT_EQ(Estimate(Qwen(), o).peak, "forward-backward");
}

TEST(TrainingTest, LoraCountsRankTimesInPlusOutPerTarget) {
  const ModelSpec spec = Qwen();
  TrainingOptions o;
  o.lora_rank = 8;
  o.lora_targets = {"q_proj"};
  // 24 layers x 8 x (896 + 896).
  EXPECT_EQ(Estimate(spec, o).trainable_parameters, 24u * 8 * (896 + 896));
  o.lora_targets = {"nope_proj"};
  absl::StatusOr<TrainingEstimate> e = EstimateTraining(spec, o);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(e.status().message()),
              testing::HasSubstr("nope_proj"));
}

TEST(TrainingTest, QloraStoresTheBaseInFourBits) {
  const ModelSpec spec = Qwen();
  TrainingOptions o;
  o.precision = Precision::kBf16;
  o.lora_rank = 16;
  const uint64_t bf16 = Estimate(spec, o).weights_bytes;
  o.qlora = true;
  EXPECT_LT(Estimate(spec, o).weights_bytes, bf16);
}

TEST(TrainingTest, QloraUnderAmpKeepsOnlyTheLmHeadCast) {
  // The 4-bit base is dequantized per op and not saved for backward; only
  // the (16-bit) lm_head's autocast copy stays alive.
  const ModelSpec spec = Qwen();
  TrainingOptions o;
  o.precision = Precision::kAmpBf16;
  o.lora_rank = 16;
  const uint64_t lora = Estimate(spec, o).autocast_weight_copy_bytes;
  o.qlora = true;
  EXPECT_EQ(Estimate(spec, o).autocast_weight_copy_bytes,
            spec.vocab_size * spec.hidden_size * 2);
  EXPECT_LT(spec.vocab_size * spec.hidden_size * 2, lora);
}

TEST(TrainingTest, ZeroStagesShardStatesAcrossDataParallel) {
  const ModelSpec spec = Qwen();
  TrainingOptions o;
  const TrainingEstimate base = Estimate(spec, o);
  o.data_parallel = 4;
  o.zero_stage = 1;
  TrainingEstimate e = Estimate(spec, o);
  EXPECT_EQ(e.optimizer_bytes, (base.optimizer_bytes + 3) / 4);
  EXPECT_EQ(e.gradients_bytes, base.gradients_bytes);
  o.zero_stage = 2;
  e = Estimate(spec, o);
  EXPECT_EQ(e.gradients_bytes, (base.gradients_bytes + 3) / 4);
  EXPECT_EQ(e.weights_bytes, base.weights_bytes);
  o.zero_stage = 3;
  e = Estimate(spec, o);
  EXPECT_EQ(e.weights_bytes, (base.weights_bytes + 3) / 4);
  EXPECT_EQ(e.activation_bytes, base.activation_bytes);
}

TEST(TrainingTest, TensorParallelSplitsStatesAndActivations) {
  const ModelSpec spec = Qwen();
  TrainingOptions o;
  const TrainingEstimate base = Estimate(spec, o);
  o.tensor_parallel = 2;
  const TrainingEstimate e = Estimate(spec, o);
  EXPECT_EQ(e.weights_bytes, (base.weights_bytes + 1) / 2);
  EXPECT_LT(e.activation_bytes, base.activation_bytes);
  EXPECT_GT(e.activation_bytes, base.activation_bytes / 2);  // norms replicate
}

TEST(TrainingTest, CheckpointingKeepsOnlyLayerInputs) {
  const ModelSpec spec = Qwen();
  TrainingOptions o;
  const TrainingEstimate none = Estimate(spec, o);
  o.gradient_checkpointing = true;
  const TrainingEstimate full = Estimate(spec, o);
  // The loss's logits stay; what the layers keep shrinks several times.
  EXPECT_EQ(full.logits_bytes, none.logits_bytes);
  EXPECT_LT(full.activation_bytes - full.logits_bytes,
            (none.activation_bytes - none.logits_bytes) / 4);
}

TEST(TrainingTest, EagerAttentionGrowsWithTheSquareOfTheSequence) {
  const ModelSpec spec = Qwen();
  TrainingOptions o;
  o.flash_attention = false;
  o.sequence_length = 1024;
  const uint64_t short_seq = Estimate(spec, o).activation_bytes;
  o.sequence_length = 4096;
  const uint64_t long_seq = Estimate(spec, o).activation_bytes;
  o.flash_attention = true;
  EXPECT_GT(long_seq, Estimate(spec, o).activation_bytes);
  EXPECT_GT(long_seq, 4 * short_seq);
}

TEST(TrainingTest, RejectsBadOptions) {
  const ModelSpec spec = Qwen();
  TrainingOptions o;
  o.micro_batch_size = 0;
  EXPECT_FALSE(EstimateTraining(spec, o).ok());
  o = {};
  o.zero_stage = 4;
  EXPECT_FALSE(EstimateTraining(spec, o).ok());
  o = {};
  o.qlora = true;  // no rank
  EXPECT_FALSE(EstimateTraining(spec, o).ok());
  EXPECT_FALSE(ParsePrecision("fp64").ok());
  EXPECT_FALSE(ParseOptimizer("lion").ok());
  EXPECT_EQ(*ParsePrecision("AMP-BF16"), Precision::kAmpBf16);
}

TEST(TrainingTest, KorthikantiFormula) {
  // sbh(34 + 5as/h) with s=2048, b=1, h=4096, a=32: 34 sbh + 5 a s^2 b.
  const uint64_t s = 2048, h = 4096, a = 32;
  EXPECT_EQ(KorthikantiLayerBytes(s, 1, h, a, 1, Recompute::kNone, false),
            34 * s * h + 5 * a * s * s);
  EXPECT_EQ(KorthikantiLayerBytes(s, 1, h, a, 1, Recompute::kNone, true),
            34 * s * h);
  EXPECT_EQ(KorthikantiLayerBytes(s, 1, h, a, 1, Recompute::kSelective, false),
            34 * s * h);
  EXPECT_EQ(KorthikantiLayerBytes(s, 1, h, a, 1, Recompute::kFull, false),
            2 * s * h);
  EXPECT_EQ(KorthikantiLayerBytes(s, 1, h, a, 8, Recompute::kSelective, false),
            10 * s * h + 3 * s * h);
}

TEST(TrainingTest, GpusToFitShardsUntilItFits) {
  absl::StatusOr<ModelSpec> spec = LoadPreset("llama-3-8b");
  ASSERT_TRUE(spec.ok());
  TrainingOptions o;
  o.sequence_length = 2048;
  o.gradient_checkpointing = true;
  absl::StatusOr<GpuPlan> plan = GpusToFit(*spec, o, 80'000'000'000);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_GT(plan->gpus, 1u);
  EXPECT_LE(plan->estimate.total_bytes, 80'000'000'000u);
  EXPECT_EQ(plan->gpus, plan->tensor_parallel * plan->data_parallel);
  // One fewer GPU in the same layout does not fit.
  if (plan->data_parallel > 1) {
    TrainingOptions fewer = o;
    fewer.tensor_parallel = plan->tensor_parallel;
    fewer.data_parallel = plan->data_parallel - 1;
    fewer.zero_stage = 3;
    EXPECT_GT(EstimateTraining(*spec, fewer)->total_bytes, 80'000'000'000u);
  }
}

TEST(TrainingTest, PretrainingComputeIsSixNd) {
  // GPT-3: 175B parameters x 300B tokens = 3.15e23 FLOPs = 3,646 PF-days.
  absl::StatusOr<ComputeEstimate> c =
      EstimatePretrainingCompute(175'000'000'000, 300'000'000'000, 989, 0.4);
  ASSERT_TRUE(c.ok());
  EXPECT_DOUBLE_EQ(c->flops, 3.15e23);
  EXPECT_NEAR(c->petaflop_s_days, 3645.8, 0.1);
  EXPECT_NEAR(c->gpu_days, 3.15e23 / (989e12 * 0.4 * 86400), 1e-6);
  EXPECT_FALSE(EstimatePretrainingCompute(1, 0, 989).ok());
  EXPECT_FALSE(EstimatePretrainingCompute(1, 1, 989, 1.5).ok());
}

}  // namespace
}  // namespace kvgate
