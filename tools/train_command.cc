// kvgate train: the peak memory per GPU of a training or fine-tuning step,
// the GPUs a setup needs, pretraining compute, and (--quick) the seeds'
// rules of thumb beside the exact model.
#include <cmath>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "estimator/gpu_catalog.h"
#include "estimator/parameters.h"
#include "estimator/planning/rules_of_thumb.h"
#include "estimator/planning/training.h"
#include "tools/cli_flags.h"
#include "tools/cli_output.h"
#include "tools/commands.h"

namespace kvgate {
namespace {

constexpr char kCommand[] = "train";

struct TrainFlags {
  std::string config;
  std::string precision = "amp-bf16";
  std::string optimizer = "adamw";
  uint64_t micro_batch_size = 1;
  uint64_t sequence_length = 2048;
  bool gradient_checkpointing = false;
  std::string recompute = "none";
  std::string attention = "flash";
  uint64_t lora_rank = 0;
  std::string lora_targets = "q_proj,v_proj";
  bool qlora = false;
  uint64_t zero_stage = 0;
  uint64_t data_parallel = 1;
  uint64_t tensor_parallel = 1;
  uint64_t pipeline_parallel = 1;
  std::string gpu;
  uint64_t tokens = 0;
  double mfu = 0.4;
  bool quick = false;
  bool json = false;

  void Register(FlagSet& f) {
    f.AddString("config", &config,
                "Hugging Face config.json path, or a preset name");
    f.AddString("precision", &precision,
                "fp32, bf16, fp16 (weights, gradients, state all 16-bit), "
                "amp-bf16, amp-fp16 (fp32 master weights, autocast compute)");
    f.AddString("optimizer", &optimizer,
                "adamw, adamw-8bit, sgd-momentum, adafactor");
    f.AddUint64("micro-batch-size", &micro_batch_size,
                "sequences per micro-batch per GPU");
    f.AddUint64("sequence-length", &sequence_length, "tokens per sequence");
    f.AddBool("gradient-checkpointing", &gradient_checkpointing,
              "keep only each layer's input (same as --recompute=full)");
    f.AddString("recompute", &recompute,
                "activation recomputation: none, selective, full");
    f.AddString("attention", &attention, "flash (SDPA) or eager");
    f.AddUint64("lora-rank", &lora_rank, "LoRA rank (0: full fine-tuning)");
    f.AddString("lora-targets", &lora_targets,
                "comma-separated module names the adapters attach to");
    f.AddBool("qlora", &qlora, "base weights in 4-bit NF4 (needs --lora-rank)");
    f.AddUint64("zero-stage", &zero_stage,
                "ZeRO: 1 shards optimizer state, 2 +gradients, 3 +weights");
    f.AddUint64("data-parallel", &data_parallel, "data-parallel GPUs");
    f.AddUint64("tensor-parallel", &tensor_parallel, "tensor-parallel GPUs");
    f.AddUint64("pipeline-parallel", &pipeline_parallel,
                "pipeline stages (1F1B)");
    f.AddString(
        "gpu", &gpu,
        absl::StrCat("GPU type for fit, GPU count and GPU-days: ", GpuNames()));
    f.AddUint64("tokens", &tokens,
                "pretraining tokens: report 6ND compute (0: off)");
    f.AddDouble("mfu", &mfu, "model FLOPs utilisation for GPU-days, in (0, 1]");
    f.AddBool("quick", &quick,
              "also print the seeds' rules of thumb and how far they are "
              "from the exact model");
    f.AddBool("json", &json, "print one JSON object");
  }

  absl::StatusOr<TrainingOptions> ToOptions() const {
    TrainingOptions o;
    absl::StatusOr<Precision> p = ParsePrecision(precision);
    if (!p.ok()) return p.status();
    absl::StatusOr<Optimizer> opt = ParseOptimizer(optimizer);
    if (!opt.ok()) return opt.status();
    absl::StatusOr<Recompute> r = ParseRecompute(recompute);
    if (!r.ok()) return r.status();
    if (attention != "flash" && attention != "eager") {
      return absl::InvalidArgumentError(
          absl::StrCat("--attention=", attention, ": expected flash or eager"));
    }
    struct Range {
      const char* name;
      uint64_t value, min, max;
    };
    for (const Range& x :
         {Range{"micro-batch-size", micro_batch_size, 1, 1u << 20},
          Range{"sequence-length", sequence_length, 1, 1ull << 24},
          Range{"lora-rank", lora_rank, 0, 1u << 16},
          Range{"zero-stage", zero_stage, 0, 3},
          Range{"data-parallel", data_parallel, 1, 1u << 20},
          Range{"tensor-parallel", tensor_parallel, 1, 4096},
          Range{"pipeline-parallel", pipeline_parallel, 1, 4096}}) {
      if (x.value < x.min || x.value > x.max) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", x.name, "=", x.value, " is out of range [",
                         x.min, ", ", x.max, "]"));
      }
    }
    if (!(mfu > 0 && mfu <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--mfu=", mfu, " is outside (0, 1]"));
    }
    o.precision = *p;
    o.optimizer = *opt;
    o.recompute = *r;
    o.flash_attention = attention == "flash";
    o.micro_batch_size = micro_batch_size;
    o.sequence_length = sequence_length;
    o.gradient_checkpointing = gradient_checkpointing;
    o.lora_rank = lora_rank;
    o.lora_targets = absl::StrSplit(lora_targets, ',', absl::SkipWhitespace());
    o.qlora = qlora;
    o.zero_stage = static_cast<uint32_t>(zero_stage);
    o.data_parallel = data_parallel;
    o.tensor_parallel = tensor_parallel;
    o.pipeline_parallel = pipeline_parallel;
    return o;
  }
};

double PercentOff(uint64_t rule, uint64_t exact) {
  if (exact == 0) return 0;
  return 100.0 * (static_cast<double>(rule) - static_cast<double>(exact)) /
         static_cast<double>(exact);
}

}  // namespace

int RunTrainCommand(const CommandArgs& args) {
  TrainFlags tf;
  FlagSet flags(kCommand,
                "Peak memory per GPU of one training step (weights, "
                "gradients, optimizer state, activations), GPUs to fit it, "
                "and pretraining compute.");
  tf.Register(flags);
  if (absl::Status s = flags.Parse(args); !s.ok())
    return FailUsage(kCommand, s);
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return kExitOk;
  }
  if (tf.config.empty()) {
    return FailUsage(kCommand, absl::InvalidArgumentError(
                                   "--config is required (a config.json path "
                                   "or a preset name)"));
  }
  absl::StatusOr<TrainingOptions> options = tf.ToOptions();
  if (!options.ok()) return FailUsage(kCommand, options.status());
  absl::StatusOr<ModelSpec> spec = LoadModel(tf.config);
  if (!spec.ok()) return FailUsage(kCommand, spec.status());
  const GpuSpec* gpu = nullptr;
  if (!tf.gpu.empty()) {
    absl::StatusOr<const GpuSpec*> g = FindGpu(tf.gpu);
    if (!g.ok()) return FailUsage(kCommand, g.status());
    gpu = *g;
  }
  absl::StatusOr<TrainingEstimate> est = EstimateTraining(*spec, *options);
  if (!est.ok()) return FailUsage(kCommand, est.status());

  std::optional<GpuPlan> plan;
  std::string plan_error;
  if (gpu != nullptr) {
    absl::StatusOr<GpuPlan> p =
        GpusToFit(*spec, *options, gpu->allocatable_bytes);
    if (p.ok()) {
      plan = *std::move(p);
    } else {
      plan_error = std::string(p.status().message());
    }
  }
  std::optional<ComputeEstimate> compute;
  const ParameterCounts counts = CountParameters(*spec);
  if (tf.tokens > 0) {
    absl::StatusOr<ComputeEstimate> c = EstimatePretrainingCompute(
        counts.active, tf.tokens, gpu ? gpu->bf16_dense_tflops : 1.0, tf.mfu);
    if (!c.ok()) return FailUsage(kCommand, c.status());
    compute = *c;
  }
  // The seeds' figures: 4 B/param to store (fp32), 24 B/param to train.
  const uint64_t rule_inference =
      rules_of_thumb::InferenceBytesFp32(counts.total);
  const uint64_t rule_training =
      rules_of_thumb::TrainingBytesFp32(counts.total);
  const uint64_t v100_train =
      rules_of_thumb::GpusToHold(rule_training, rules_of_thumb::kV100Bytes);

  const TrainingEstimate& e = *est;
  if (tf.json) {
    nlohmann::ordered_json j;
    j["model_type"] = spec->model_type;
    j["parameters"] = e.parameters;
    j["trainable_parameters"] = e.trainable_parameters;
    j["precision"] = std::string(PrecisionName(options->precision));
    j["optimizer"] = std::string(OptimizerName(options->optimizer));
    j["micro_batch_size"] = options->micro_batch_size;
    j["sequence_length"] = options->sequence_length;
    j["recompute"] = std::string(RecomputeName(options->gradient_checkpointing
                                                   ? Recompute::kFull
                                                   : options->recompute));
    j["attention"] = tf.attention;
    j["lora_rank"] = options->lora_rank;
    j["qlora"] = options->qlora;
    j["zero_stage"] = options->zero_stage;
    j["data_parallel"] = options->data_parallel;
    j["tensor_parallel"] = options->tensor_parallel;
    j["pipeline_parallel"] = options->pipeline_parallel;
    j["weights_bytes"] = e.weights_bytes;
    j["gradients_bytes"] = e.gradients_bytes;
    j["optimizer_bytes"] = e.optimizer_bytes;
    j["activation_bytes"] = e.activation_bytes;
    j["logits_bytes"] = e.logits_bytes;
    j["autocast_weight_copy_bytes"] = e.autocast_weight_copy_bytes;
    j["optimizer_step_temp_bytes"] = e.optimizer_step_temp_bytes;
    j["runtime_workspace_bytes"] = e.runtime_workspace_bytes;
    j["forward_backward_peak_bytes"] = e.forward_backward_peak_bytes;
    j["optimizer_step_peak_bytes"] = e.optimizer_step_peak_bytes;
    j["total_bytes"] = e.total_bytes;
    j["peak"] = e.peak;
    j["paper_activation_bytes"] = e.paper_activation_bytes;
    if (gpu != nullptr) {
      nlohmann::ordered_json g;
      g["name"] = std::string(gpu->name);
      g["allocatable_bytes"] = gpu->allocatable_bytes;
      g["fits"] = e.total_bytes <= gpu->allocatable_bytes;
      if (plan.has_value()) {
        g["gpus_to_fit"] = plan->gpus;
        g["tensor_parallel"] = plan->tensor_parallel;
        g["data_parallel"] = plan->data_parallel;
        g["zero_stage"] = plan->zero_stage;
        g["total_bytes"] = plan->estimate.total_bytes;
      } else {
        g["gpus_to_fit"] = nullptr;
        g["error"] = plan_error;
      }
      j["gpu"] = g;
    }
    if (compute.has_value()) {
      nlohmann::ordered_json c;
      c["tokens"] = tf.tokens;
      c["active_parameters"] = counts.active;
      c["flops"] = compute->flops;
      c["petaflop_s_days"] = compute->petaflop_s_days;
      if (gpu != nullptr) {
        c["gpu_days"] = compute->gpu_days;
        c["mfu"] = compute->mfu;
      }
      j["compute"] = c;
    }
    if (tf.quick) {
      nlohmann::ordered_json q;
      q["inference_fp32_bytes"] = rule_inference;
      q["training_bytes"] = rule_training;
      q["training_bytes_per_parameter"] =
          rules_of_thumb::kTrainingBytesPerParameter;
      q["v100_32gb_training_gpus"] = v100_train;
      q["exact_total_bytes"] = e.total_bytes;
      q["difference_percent"] = PercentOff(rule_training, e.total_bytes);
      q["source"] =
          "seeds 002, 004: 1B parameters = 4 GB stored, 24 GB trained";
      j["rules_of_thumb"] = q;
    }
    j["notes"] = e.notes;
    PrintJson(j);
    return kExitOk;
  }

  TableRows rows = {
      {"model_type", spec->model_type},
      {"parameters",
       absl::StrCat(FormatCount(e.parameters), " (", e.parameters, ")")},
      {"trainable", absl::StrCat(FormatCount(e.trainable_parameters), " (",
                                 e.trainable_parameters, ")")},
      {"weights", FormatBytes(e.weights_bytes)},
      {"gradients", FormatBytes(e.gradients_bytes)},
      {"optimizer state", FormatBytes(e.optimizer_bytes)},
      {"activations", FormatBytes(e.activation_bytes)},
      {"  of which logits", FormatBytes(e.logits_bytes)},
      {"  of which autocast copies", FormatBytes(e.autocast_weight_copy_bytes)},
      {"  (paper sbh(34+5as/h))", FormatBytes(e.paper_activation_bytes)},
      {"optimizer-step temps", FormatBytes(e.optimizer_step_temp_bytes)},
      {"forward/backward peak", FormatBytes(e.forward_backward_peak_bytes)},
      {"optimizer-step peak", FormatBytes(e.optimizer_step_peak_bytes)},
      {"peak / GPU",
       absl::StrCat(FormatBytes(e.total_bytes), " (", e.peak, ")")},
  };
  if (gpu != nullptr) {
    rows.push_back({absl::StrCat("fits one ", gpu->name),
                    e.total_bytes <= gpu->allocatable_bytes ? "yes" : "no"});
    rows.push_back(
        {"GPUs to fit",
         plan.has_value()
             ? absl::StrCat(plan->gpus, " (TP ", plan->tensor_parallel,
                            " x DP ", plan->data_parallel,
                            plan->data_parallel > 1 ? ", ZeRO-3)" : ")")
             : plan_error});
  }
  if (compute.has_value()) {
    rows.push_back({"compute (6ND)",
                    absl::StrFormat("%.3g FLOPs = %.4g petaflop/s-days",
                                    compute->flops, compute->petaflop_s_days)});
    if (gpu != nullptr) {
      rows.push_back(
          {"GPU-days", absl::StrFormat("%.4g at %.0f%% MFU", compute->gpu_days,
                                       100 * compute->mfu)});
    }
  }
  if (tf.quick) {
    rows.push_back(
        {"rule: inference (4 B/param)", FormatBytes(rule_inference)});
    rows.push_back({"rule: training (24 B/param)", FormatBytes(rule_training)});
    rows.push_back({"rule: V100-32GB to train", absl::StrCat(v100_train)});
    rows.push_back(
        {"rule vs exact peak",
         absl::StrFormat("%+.1f%%", PercentOff(rule_training, e.total_bytes))});
  }
  PrintTable(absl::StrCat("kvgate train: ", PrecisionName(options->precision),
                          " ", OptimizerName(options->optimizer),
                          ", micro-batch ", options->micro_batch_size, " x ",
                          options->sequence_length, " tokens"),
             rows);
  for (const std::string& note : e.notes)
    std::cout << "  note: " << note << "\n";
  return kExitOk;
}

}  // namespace kvgate
