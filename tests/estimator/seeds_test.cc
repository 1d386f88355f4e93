// The seed articles' worked examples (docs/seeds.md), each test
// naming the seed it reproduces. GB here is decimal, as the seeds use it.
#include <cstdint>

#include "estimator/planning/rules_of_thumb.h"
#include "gtest/gtest.h"

namespace kvgate {
namespace rules_of_thumb {
namespace {

constexpr uint64_t kGB = 1'000'000'000;
constexpr uint64_t kBillion = 1'000'000'000;

// seed 002 and seed 004:
// "1B parameters = 4GB memory (to store the model weights for inference)",
// "1B parameters = 24GB memory (to train the model)".
TEST(SeedsTest, OneBillionParametersIs4GbInferenceAnd24GbTraining) {
  EXPECT_EQ(InferenceBytesFp32(kBillion), 4 * kGB);
  EXPECT_EQ(TrainingBytesFp32(kBillion), 24 * kGB);
  // "20 extra bytes per parameter", "x6 times the memory ... weights alone".
  EXPECT_EQ(TrainingBytesFp32(kBillion) - InferenceBytesFp32(kBillion),
            kTrainingExtraBytesPerParameter * kBillion);
  EXPECT_EQ(TrainingBytesFp32(kBillion) / InferenceBytesFp32(kBillion), 6u);
}

// seed 001: M = P * 4B / (32 / Q) * 1.2; LLaMA 70B in
// 16 bits needs ~168 GB, so one A100 80GB is not enough ("at least two").
// Note: 2 x 80 GB = 160 GB < 168 GB, so rounding up gives three; the seed's
// "at least two" is a lower bound, which three satisfies.
TEST(SeedsTest, Llama70bAt16BitsWithOverheadIs168Gb) {
  const uint64_t m = ServingBytesWithOverhead(70 * kBillion, 16);
  EXPECT_EQ(m, 168 * kGB);
  EXPECT_GT(m, 80 * kGB);  // a single A100-80GB is not sufficient
  EXPECT_GE(GpusToHold(m, 80 * kGB), 2u);
  EXPECT_EQ(GpusToHold(m, 80 * kGB), 3u);
  // The same formula in 32 bits is the bare fp32 rule plus 20 %.
  EXPECT_EQ(ServingBytesWithOverhead(kBillion, 32), 4 * kGB * 12 / 10);
}

// seed 000: a 10B model in mixed precision on one GPU:
// parameters 20 GB + activations 20-40 GB + gradients 20 GB + Adam 80 GB =
// 140 to 160 GB.
TEST(SeedsTest, TenBillionMixedPrecisionIs140To160Gb) {
  const MixedPrecisionTraining m = MixedPrecisionTrainingBytes(10 * kBillion);
  EXPECT_EQ(m.weights_bytes, 20 * kGB);
  EXPECT_EQ(m.gradients_bytes, 20 * kGB);
  EXPECT_EQ(m.optimizer_bytes, 80 * kGB);
  EXPECT_EQ(m.activation_low_bytes, 20 * kGB);
  EXPECT_EQ(m.activation_high_bytes, 40 * kGB);
  EXPECT_EQ(m.total_low_bytes, 140 * kGB);
  EXPECT_EQ(m.total_high_bytes, 160 * kGB);
}

// seed 000: "If we want to train the LLM using 2 GPUs
// we want approximately 80 to 100 GB of memory" (model states split,
// activations not).
TEST(SeedsTest, TenBillionOnTwoGpusIs80To100GbEach) {
  const MixedPrecisionTraining m =
      MixedPrecisionTrainingBytesPerGpu(10 * kBillion, 2);
  EXPECT_EQ(m.total_low_bytes, 80 * kGB);
  EXPECT_EQ(m.total_high_bytes, 100 * kGB);
}

// seed 002: GPUs needed on NVIDIA V100 32 GB with
// 1B = 4 GB (inference) and 1B = 24 GB (training).
TEST(SeedsTest, V100GpuCountTable) {
  struct Row {
    const char* model;
    uint64_t parameters;
    uint64_t inference_gpus;
    uint64_t training_gpus;
  };
  const Row rows[] = {
      {"GPT-2", 1'500'000'000, 1, 2},
      {"GPT-3", 175 * kBillion, 22, 132},
      {"PaLM", 540 * kBillion, 68, 405},
      {"LLaMa", 65 * kBillion, 9, 49},
      {"BloombergGPT", 50 * kBillion, 7, 38},
  };
  for (const Row& row : rows) {
    EXPECT_EQ(GpusToHold(InferenceBytesFp32(row.parameters), kV100Bytes),
              row.inference_gpus)
        << row.model;
    EXPECT_EQ(GpusToHold(TrainingBytesFp32(row.parameters), kV100Bytes),
              row.training_gpus)
        << row.model;
  }
}

// seed 002: LoRA reduces GPT-3's trainable parameters
// ~10,000 times: 175,000,000,000 / 10,000 = 17,500,000, x 20 bytes = 350 MB,
// so one more V100 instead of 110.
TEST(SeedsTest, Gpt3LoraTrainableParametersAndExtraMemory) {
  EXPECT_EQ(LoraTrainableParameters(175 * kBillion), 17'500'000u);
  EXPECT_EQ(LoraExtraTrainingBytes(175 * kBillion), 350'000'000u);
  EXPECT_EQ(GpusToHold(LoraExtraTrainingBytes(175 * kBillion), kV100Bytes), 1u);
  EXPECT_EQ(GpusToHold(TrainingBytesFp32(175 * kBillion), kV100Bytes) -
                GpusToHold(InferenceBytesFp32(175 * kBillion), kV100Bytes),
            110u);
}

// seed 002: 1 petaflop/s-day = 8 V100s for a day;
// GPT-3 3,700 petaflop/s-days = 29,600 GPU-days = ~987 GPUs for 30 days;
// T5 100 petaflop/s-days = 800 GPU-days.
TEST(SeedsTest, PetaflopSDaysInV100GpuDays) {
  EXPECT_DOUBLE_EQ(V100GpuDays(3700), 29600);
  EXPECT_EQ(static_cast<uint64_t>(V100GpuDays(3700) / 30 + 0.999), 987u);
  EXPECT_DOUBLE_EQ(V100GpuDays(100), 800);
}

// seed 003: "Inference: Number of parameters *
// Precision (usually 2 or 4 Bytes)"; 0.5 bytes at 4 bits.
TEST(SeedsTest, WeightsAreParametersTimesPrecision) {
  EXPECT_EQ(WeightBytes(7 * kBillion, 16), 14 * kGB);
  EXPECT_EQ(WeightBytes(7 * kBillion, 32), 28 * kGB);
  EXPECT_EQ(WeightBytes(7 * kBillion, 4), 3'500'000'000u);
}

}  // namespace
}  // namespace rules_of_thumb
}  // namespace kvgate
