// The seed articles' rules of thumb (docs/seeds.md), reproduced as a quick
// mode so that `kvgate estimate|train --quick` can show them next to the
// exact model and say how far apart they are. Gigabytes here are decimal
// (1 GB = 1e9 bytes), as the seeds compute them.
#ifndef KVGATE_ESTIMATOR_PLANNING_RULES_OF_THUMB_H_
#define KVGATE_ESTIMATOR_PLANNING_RULES_OF_THUMB_H_

#include <cstdint>

namespace kvgate {
namespace rules_of_thumb {

// 1 parameter = 4 bytes in fp32: 1B parameters = 4 GB to store the model for
// inference (seed 002, seed 004).
uint64_t InferenceBytesFp32(uint64_t parameters);

// Weights at `bits` per parameter: P * bits / 8
// (seed 003: "Number of parameters * Precision").
uint64_t WeightBytes(uint64_t parameters, uint32_t bits);

// Serving memory with 20 % overhead: M = P * 4B / (32 / Q) * 1.2, Q the bits
// the model is loaded in (seed 001, also
// seed 000). 70B at 16 bits: 168 GB.
uint64_t ServingBytesWithOverhead(uint64_t parameters, uint32_t bits);

// Training at 32-bit full precision: weights 4 + gradients 4 + Adam 8 +
// activations and temporaries ~8 = 24 bytes per parameter, "20 extra bytes
// per parameter", 6x the weights (seed 002 appendix,
// seed 004). 1B parameters: 24 GB.
inline constexpr uint64_t kTrainingBytesPerParameter = 24;
inline constexpr uint64_t kTrainingExtraBytesPerParameter = 20;
uint64_t TrainingBytesFp32(uint64_t parameters);

// GPUs of `gpu_bytes` each to hold `bytes`: ceil(bytes / gpu_bytes). The
// seed's table uses V100s of 32 GB (seed 002): GPT-3
// 175B needs 22 to serve and 132 to train.
inline constexpr uint64_t kV100Bytes = 32'000'000'000;
uint64_t GpusToHold(uint64_t bytes, uint64_t gpu_bytes);

// Mixed-precision training of seed 000: weights and
// gradients at 2 bytes, Adam's two fp32 states at 8 bytes, activations
// "roughly similar to or slightly larger than" the parameters' memory,
// taken as 1x to 2x the weights. 10B parameters: 140 to 160 GB.
struct MixedPrecisionTraining {
  uint64_t weights_bytes = 0;
  uint64_t gradients_bytes = 0;
  uint64_t optimizer_bytes = 0;
  uint64_t activation_low_bytes = 0;
  uint64_t activation_high_bytes = 0;
  uint64_t total_low_bytes = 0;
  uint64_t total_high_bytes = 0;
};
MixedPrecisionTraining MixedPrecisionTrainingBytes(uint64_t parameters);

// The same split across n GPUs by model parallelism: weights, gradients and
// optimizer state divided by n, activations not (seed 000: 10B on 2 GPUs,
// 80 to 100 GB each).
MixedPrecisionTraining MixedPrecisionTrainingBytesPerGpu(uint64_t parameters,
                                                         uint64_t gpus);

// LoRA cuts GPT-3's trainable parameters ~10,000 times; each trainable
// parameter then adds the 20 extra training bytes (seed 002: 175B / 10,000
// = 17.5M trainable, x 20 B = 350 MB).
inline constexpr uint64_t kLoraReductionGpt3 = 10'000;
uint64_t LoraTrainableParameters(uint64_t parameters);
uint64_t LoraExtraTrainingBytes(uint64_t parameters);

// Pretraining compute: 1 petaflop/s-day = 8 V100s at full efficiency for a
// day (seed 002: GPT-3's 3,700 petaflop/s-days = 29,600 V100 GPU-days).
inline constexpr uint64_t kV100sPerPetaflopS = 8;
double V100GpuDays(double petaflop_s_days);

}  // namespace rules_of_thumb
}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_PLANNING_RULES_OF_THUMB_H_
