#include "estimator/planning/rules_of_thumb.h"

namespace kvgate {
namespace rules_of_thumb {

uint64_t InferenceBytesFp32(uint64_t parameters) { return parameters * 4; }

uint64_t WeightBytes(uint64_t parameters, uint32_t bits) {
  return parameters * bits / 8;
}

uint64_t ServingBytesWithOverhead(uint64_t parameters, uint32_t bits) {
  // P * 4 / (32 / Q) * 1.2 = P * Q / 8 * 12 / 10, in integers.
  return parameters * bits / 8 * 12 / 10;
}

uint64_t TrainingBytesFp32(uint64_t parameters) {
  return parameters * kTrainingBytesPerParameter;
}

uint64_t GpusToHold(uint64_t bytes, uint64_t gpu_bytes) {
  if (gpu_bytes == 0) return 0;
  return bytes / gpu_bytes + (bytes % gpu_bytes != 0);
}

MixedPrecisionTraining MixedPrecisionTrainingBytes(uint64_t parameters) {
  return MixedPrecisionTrainingBytesPerGpu(parameters, 1);
}

MixedPrecisionTraining MixedPrecisionTrainingBytesPerGpu(uint64_t parameters,
                                                         uint64_t gpus) {
  if (gpus == 0) gpus = 1;
  MixedPrecisionTraining m;
  m.weights_bytes = parameters * 2 / gpus;
  m.gradients_bytes = parameters * 2 / gpus;
  m.optimizer_bytes = parameters * 4 * 2 / gpus;  // two fp32 Adam states
  m.activation_low_bytes = parameters * 2;        // 1x the parameters' memory
  m.activation_high_bytes = parameters * 4;       // 2x
  const uint64_t states =
      m.weights_bytes + m.gradients_bytes + m.optimizer_bytes;
  m.total_low_bytes = states + m.activation_low_bytes;
  m.total_high_bytes = states + m.activation_high_bytes;
  return m;
}

uint64_t LoraTrainableParameters(uint64_t parameters) {
  return parameters / kLoraReductionGpt3;
}

uint64_t LoraExtraTrainingBytes(uint64_t parameters) {
  return LoraTrainableParameters(parameters) * kTrainingExtraBytesPerParameter;
}

double V100GpuDays(double petaflop_s_days) {
  return petaflop_s_days * kV100sPerPetaflopS;
}

}  // namespace rules_of_thumb
}  // namespace kvgate
