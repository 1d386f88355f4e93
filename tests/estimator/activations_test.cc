// ActivationModel: the mixture-of-experts layer's transient per token.
#include "estimator/activations.h"

#include <cstdint>
#include <string>

#include "estimator/model_spec.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace {

ModelSpec LoadSpec(const std::string& model) {
  absl::StatusOr<ModelSpec> spec = LoadModelConfig(
      std::string(KVGATE_TEST_DATA_DIR) + "/models/" + model + ".json");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

ActivationOptions Bf16(uint32_t tensor_parallel) {
  ActivationOptions options;
  options.dtype = DType::kBFloat16;
  options.logits_bytes = 2;
  options.tensor_parallel = tensor_parallel;
  return options;
}

// DeepSeek-V2-Lite: hidden 2048, 6 of 64 experts of width 1408, rotary 64.
// Per token: 4 hidden copies + rotary cos/sin (2 x 64) + 6 x (4 x 2048 +
// 3 x 1408) routed-slot elements, all bf16, plus routing: fp32 logits
// (64 x 4), top-k ids and weights (6 x 12) and four int64 index vectors of
// the slots (4 x 6 x 8).
TEST(ActivationModelTest, RoutedExpertsHoldGatheredInputsAndIntermediates) {
  const ActivationModel model(LoadSpec("DeepSeek-V2-Lite"), Bf16(1));
  const uint64_t elements = 4 * 2048 + 2 * 64 + 6 * (4 * 2048 + 3 * 1408);
  const uint64_t routing = 64 * 4 + 6 * 12 + 4 * 6 * 8;
  EXPECT_EQ(model.StepPeakBytes(1000, 1, 0), 1000 * (2 * elements + routing));
}

// The routed moment is above the dense first layer's gated MLP (3 x 10944)
// and above the shared experts (hidden + 3 x 2816) that run after it.
TEST(ActivationModelTest, MoeMomentIsTheRoutedExpertsNotTheDenseLayer) {
  ModelSpec spec = LoadSpec("DeepSeek-V2-Lite");
  const uint64_t with_routed =
      ActivationModel(spec, Bf16(1)).StepPeakBytes(1000, 1, 0);
  spec.experts_per_token = 1;
  const uint64_t one_expert =
      ActivationModel(spec, Bf16(1)).StepPeakBytes(1000, 1, 0);
  // With one expert per token the dense layer 0 is the widest MLP.
  EXPECT_EQ(one_expert, 1000 * 2 * (4 * 2048 + 2 * 64 + 3 * 10944));
  EXPECT_GT(with_routed, one_expert);
}

// Under tensor parallelism the gathered hidden-wide tensors are whole on
// every GPU; only the expert intermediates are divided (no logits here:
// the vocabulary is divided too).
TEST(ActivationModelTest, TensorParallelDividesOnlyExpertWidths) {
  const ModelSpec spec = LoadSpec("DeepSeek-V2-Lite");
  const uint64_t tp1 = ActivationModel(spec, Bf16(1)).StepPeakBytes(1, 0, 0);
  const uint64_t tp2 = ActivationModel(spec, Bf16(2)).StepPeakBytes(1, 0, 0);
  EXPECT_EQ(tp1 - tp2, 2u * 6 * 3 * (1408 - 1408 / 2));
}

}  // namespace
}  // namespace kvgate
