// Training memory: the peak bytes one GPU holds during a training step, what
// they are made of, how many GPUs a setup needs, and pretraining compute.
//
// What each precision stores, per parameter (P: parameters, T: trainable):
//
//   precision   weights  gradients  AdamW state   autocast copies
//   fp32        4 P      4 T        8 T (fp32)    -
//   bf16, fp16  2 P      2 T        4 T (16-bit)  -
//   amp-bf16,   4 P      4 T        8 T (fp32)    2 B per matmul weight,
//   amp-fp16    (the fp32 weights are the master   held from forward to
//               copy; compute runs under autocast) backward
//
// Optimizer state per trainable parameter, in the state dtype s (4 bytes for
// fp32 and amp-*, 2 for bf16/fp16): AdamW 2 s (exp_avg, exp_avg_sq);
// adamw-8bit 2 bytes (bitsandbytes' two 8-bit states; block scales are
// negligible); sgd-momentum s (one momentum buffer); adafactor: factored
// second moments, s x (rows + cols) per matrix and s per vector entry.
// LoRA: the base is frozen in the precision's weight dtype (NF4 with QLoRA);
// adapters are fp32 (peft upcasts them) with fp32 gradients and state.
//
// The peak is the larger of two moments (docs/design.md, "Memory model",
// Peaks):
//  - forward/backward: weights + optimizer state (kept from the previous
//    step) + every activation saved for backward + the loss's fp32 logits,
//    at the start of the backward pass;
//  - optimizer step: weights + gradients + optimizer state + the step's
//    temporaries (PyTorch's default foreach AdamW allocates one more copy of
//    the trainable parameters in the state dtype, for sqrt(exp_avg_sq)).
// Both include a small constant for the runtime's own workspaces.
//
// Activations are counted tensor by tensor as PyTorch autograd saves them for
// a Hugging Face decoder layer (norm inputs and outputs, linear inputs, the
// rotary q/k and v kept by attention, the MLP's intermediates), which is the
// method of Korthikanti et al. 2022 ("Reducing Activation Recomputation in
// Large Transformer Models", arXiv:2205.05198) applied to those layers. The
// paper's own per-layer figure for a Megatron GPT layer, sbh(34 + 5as/h), is
// reported next to it (KorthikantiLayerBytes). Calibrated against peaks
// measured on an H100 (tests/data/calibration/train-peaks.json; see
// docs/calibration/training.md).
#ifndef KVGATE_ESTIMATOR_PLANNING_TRAINING_H_
#define KVGATE_ESTIMATOR_PLANNING_TRAINING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "estimator/model_spec.h"

namespace kvgate {

enum class Precision { kFp32, kBf16, kFp16, kAmpBf16, kAmpFp16 };
enum class Optimizer { kAdamW, kAdamW8bit, kSgdMomentum, kAdafactor };

// Activation recomputation (Korthikanti et al. 2022, section 4).
enum class Recompute {
  kNone,       // every activation is kept for backward
  kSelective,  // the attention core (scores, softmax, dropout) is recomputed
  kFull,       // only each layer's input is kept (gradient checkpointing)
};

// Names: "fp32", "bf16", "fp16", "amp-bf16", "amp-fp16"; "adamw",
// "adamw-8bit", "sgd-momentum", "adafactor"; "none", "selective", "full".
absl::StatusOr<Precision> ParsePrecision(absl::string_view name);
absl::StatusOr<Optimizer> ParseOptimizer(absl::string_view name);
absl::StatusOr<Recompute> ParseRecompute(absl::string_view name);
absl::string_view PrecisionName(Precision precision);
absl::string_view OptimizerName(Optimizer optimizer);
absl::string_view RecomputeName(Recompute recompute);

struct TrainingOptions {
  Precision precision = Precision::kAmpBf16;
  Optimizer optimizer = Optimizer::kAdamW;
  uint64_t micro_batch_size = 1;
  uint64_t sequence_length = 2048;
  // Same as recompute = kFull; either one turns it on.
  bool gradient_checkpointing = false;
  Recompute recompute = Recompute::kNone;
  // Fused attention (FlashAttention / PyTorch SDPA): no score matrix is kept.
  // false: eager attention keeps softmax(QK^T) per head.
  bool flash_attention = true;
  // LoRA rank; 0: full fine-tuning.
  uint64_t lora_rank = 0;
  // Module names matched against LinearModules() names (a name matches a
  // module whose name equals it or ends with "." + it).
  std::vector<std::string> lora_targets = {"q_proj", "v_proj"};
  // Base weights in 4-bit NF4 (bitsandbytes, blocks of 64, double quant).
  bool qlora = false;
  // ZeRO: 1 shards optimizer state, 2 also gradients, 3 also weights, across
  // data_parallel GPUs.
  uint32_t zero_stage = 0;
  uint64_t data_parallel = 1;
  uint64_t tensor_parallel = 1;
  uint64_t pipeline_parallel = 1;
};

// Bytes on one GPU. The parts below total_bytes are what exists at one of
// the two moments; total_bytes is the larger moment, not their sum.
struct TrainingEstimate {
  uint64_t parameters = 0;  // whole model, adapters included
  uint64_t trainable_parameters = 0;
  uint64_t weights_bytes = 0;
  uint64_t gradients_bytes = 0;
  uint64_t optimizer_bytes = 0;
  // Everything the forward/backward peak holds beyond weights and optimizer
  // state: saved activations, logits and autocast weight copies.
  uint64_t activation_bytes = 0;
  uint64_t logits_bytes = 0;                // part of activation_bytes
  uint64_t autocast_weight_copy_bytes = 0;  // part of activation_bytes
  // The optimizer step's temporaries.
  uint64_t optimizer_step_temp_bytes = 0;
  uint64_t runtime_workspace_bytes = 0;
  uint64_t forward_backward_peak_bytes = 0;
  uint64_t optimizer_step_peak_bytes = 0;
  uint64_t total_bytes = 0;  // the peak per GPU
  // "forward-backward" or "optimizer-step": which moment total_bytes is.
  std::string peak;
  // The paper's sbh(34 + 5as/h) activations of the same run on this GPU, for
  // comparison (Korthikanti paper form, 16-bit, with its recompute variant).
  uint64_t paper_activation_bytes = 0;
  std::vector<std::string> notes;
};

// Estimates one training step. InvalidArgument naming the option for zero
// sizes, zero_stage > 3, a LoRA target that matches no module, QLoRA without
// a LoRA rank, or sizes whose products overflow 64 bits.
absl::StatusOr<TrainingEstimate> EstimateTraining(
    const ModelSpec& spec, const TrainingOptions& options);

// Activation bytes of one transformer layer per Korthikanti et al. 2022,
// eq. (1)-(5), with s = sequence, b = micro-batch, h = hidden, a = heads,
// t = tensor-parallel degree (no sequence parallelism):
//   kNone:      sbh(10 + 24/t + 5as/(ht))   (t = 1: sbh(34 + 5as/h))
//   kSelective: sbh(10 + 24/t)              (the 5as/h term recomputed)
//   kFull:      2sbh                        (the layer's 16-bit input)
// `flash` drops the 5as/h term as fused attention keeps no scores.
// Saturates at UINT64_MAX.
uint64_t KorthikantiLayerBytes(uint64_t s, uint64_t b, uint64_t h, uint64_t a,
                               uint64_t t, Recompute recompute, bool flash);

// The smallest GPU count that holds the step, searching tensor-parallel
// degrees 1, 2, 4, 8 (those dividing the attention heads) times ZeRO-3 data
// parallelism (weights, gradients and optimizer sharded; FSDP / DeepSpeed
// stage 3), starting from `options` (its micro-batch, precision, ...).
struct GpuPlan {
  uint64_t gpus = 0;
  uint64_t tensor_parallel = 1;
  uint64_t data_parallel = 1;
  uint32_t zero_stage = 0;
  TrainingEstimate estimate;  // per GPU in that layout
};
// ResourceExhausted when even 65,536 GPUs do not fit (activations alone
// exceed the memory: lower the micro-batch or turn on checkpointing).
absl::StatusOr<GpuPlan> GpusToFit(const ModelSpec& spec,
                                  const TrainingOptions& options,
                                  uint64_t gpu_memory_bytes);

// Pretraining compute: 6 N D FLOPs (forward 2ND + backward 4ND; Kaplan et
// al. 2020, "Scaling Laws for Neural Language Models", section 2.1) for N
// parameters active per token and D tokens.
struct ComputeEstimate {
  double flops = 0;
  double petaflop_s_days = 0;  // flops / (1e15 * 86400)
  double gpu_days = 0;         // at `mfu` of the GPU's peak
  double mfu = 0;
};
// InvalidArgument for zero tokens, a non-positive peak or mfu outside (0, 1].
absl::StatusOr<ComputeEstimate> EstimatePretrainingCompute(
    uint64_t active_parameters, uint64_t tokens, double gpu_peak_tflops,
    double mfu = 0.4);

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_PLANNING_TRAINING_H_
