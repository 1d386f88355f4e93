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
              "also print common rules of thumb and how far they are "
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

// Everything `kvgate train` prints.
struct TrainReport {
  ModelSpec spec;
  TrainingOptions options;
  TrainingEstimate estimate;
  const GpuSpec* gpu = nullptr;  // with --gpu
  std::optional<GpuPlan> plan;   // with --gpu, when some layout fits
  std::string plan_error;        // with --gpu, when none does
  ParameterCounts counts;
  std::optional<ComputeEstimate> compute;  // with --tokens
  // The seeds' figures: 4 B/param to store (fp32), 24 B/param to train.
  uint64_t rule_inference = 0;
  uint64_t rule_training = 0;
  uint64_t v100_train = 0;
};

// Parses the flags' values, loads the model and runs the estimates; an
// error (a usage error) for bad input.
absl::StatusOr<TrainReport> BuildReport(const TrainFlags& tf) {
  if (tf.config.empty()) {
    return absl::InvalidArgumentError(
        "--config is required (a config.json path or a preset name)");
  }
  TrainReport r;
  absl::StatusOr<TrainingOptions> options = tf.ToOptions();
  if (!options.ok()) return options.status();
  r.options = *std::move(options);
  absl::StatusOr<ModelSpec> spec = LoadModel(tf.config);
  if (!spec.ok()) return spec.status();
  r.spec = *std::move(spec);
  if (!tf.gpu.empty()) {
    absl::StatusOr<const GpuSpec*> g = FindGpu(tf.gpu);
    if (!g.ok()) return g.status();
    r.gpu = *g;
  }
  absl::StatusOr<TrainingEstimate> est = EstimateTraining(r.spec, r.options);
  if (!est.ok()) return est.status();
  r.estimate = *std::move(est);

  if (r.gpu != nullptr) {
    absl::StatusOr<GpuPlan> p =
        GpusToFit(r.spec, r.options, r.gpu->allocatable_bytes);
    if (p.ok()) {
      r.plan = *std::move(p);
    } else {
      r.plan_error = std::string(p.status().message());
    }
  }
  r.counts = CountParameters(r.spec);
  if (tf.tokens > 0) {
    absl::StatusOr<ComputeEstimate> c = EstimatePretrainingCompute(
        r.counts.active, tf.tokens, r.gpu ? r.gpu->bf16_dense_tflops : 1.0,
        tf.mfu);
    if (!c.ok()) return c.status();
    r.compute = *c;
  }
  r.rule_inference = rules_of_thumb::InferenceBytesFp32(r.counts.total);
  r.rule_training = rules_of_thumb::TrainingBytesFp32(r.counts.total);
  r.v100_train =
      rules_of_thumb::GpusToHold(r.rule_training, rules_of_thumb::kV100Bytes);
  return r;
}

// --json: the setup, then the estimate's figures.
nlohmann::ordered_json EstimateJson(const TrainFlags& tf,
                                    const TrainReport& r) {
  const TrainingOptions& o = r.options;
  const TrainingEstimate& e = r.estimate;
  nlohmann::ordered_json j;
  j["model_type"] = r.spec.model_type;
  j["parameters"] = e.parameters;
  j["trainable_parameters"] = e.trainable_parameters;
  j["precision"] = std::string(PrecisionName(o.precision));
  j["optimizer"] = std::string(OptimizerName(o.optimizer));
  j["micro_batch_size"] = o.micro_batch_size;
  j["sequence_length"] = o.sequence_length;
  j["recompute"] = std::string(
      RecomputeName(o.gradient_checkpointing ? Recompute::kFull : o.recompute));
  j["attention"] = tf.attention;
  j["lora_rank"] = o.lora_rank;
  j["qlora"] = o.qlora;
  j["zero_stage"] = o.zero_stage;
  j["data_parallel"] = o.data_parallel;
  j["tensor_parallel"] = o.tensor_parallel;
  j["pipeline_parallel"] = o.pipeline_parallel;
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
  return j;
}

// --json "gpu": whether one fits and the smallest layout that does.
nlohmann::ordered_json GpuJson(const TrainReport& r) {
  nlohmann::ordered_json g;
  g["name"] = std::string(r.gpu->name);
  g["allocatable_bytes"] = r.gpu->allocatable_bytes;
  g["fits"] = r.estimate.total_bytes <= r.gpu->allocatable_bytes;
  if (r.plan.has_value()) {
    g["gpus_to_fit"] = r.plan->gpus;
    g["tensor_parallel"] = r.plan->tensor_parallel;
    g["data_parallel"] = r.plan->data_parallel;
    g["zero_stage"] = r.plan->zero_stage;
    g["total_bytes"] = r.plan->estimate.total_bytes;
  } else {
    g["gpus_to_fit"] = nullptr;
    g["error"] = r.plan_error;
  }
  return g;
}

// --json "compute": 6ND, and GPU-days with --gpu.
nlohmann::ordered_json ComputeJson(const TrainFlags& tf, const TrainReport& r) {
  nlohmann::ordered_json c;
  c["tokens"] = tf.tokens;
  c["active_parameters"] = r.counts.active;
  c["flops"] = r.compute->flops;
  c["petaflop_s_days"] = r.compute->petaflop_s_days;
  if (r.gpu != nullptr) {
    c["gpu_days"] = r.compute->gpu_days;
    c["mfu"] = r.compute->mfu;
  }
  return c;
}

// --json "rules_of_thumb" (--quick): the seeds' figures beside the exact one.
nlohmann::ordered_json RulesJson(const TrainReport& r) {
  nlohmann::ordered_json q;
  q["inference_fp32_bytes"] = r.rule_inference;
  q["training_bytes"] = r.rule_training;
  q["training_bytes_per_parameter"] =
      rules_of_thumb::kTrainingBytesPerParameter;
  q["v100_32gb_training_gpus"] = r.v100_train;
  q["exact_total_bytes"] = r.estimate.total_bytes;
  q["difference_percent"] = PercentOff(r.rule_training, r.estimate.total_bytes);
  q["source"] =
      "rules of thumb: 1B parameters take 4 GB to hold (fp32) and 24 GB to "
      "train";
  return q;
}

void PrintJsonReport(const TrainFlags& tf, const TrainReport& r) {
  nlohmann::ordered_json j = EstimateJson(tf, r);
  if (r.gpu != nullptr) j["gpu"] = GpuJson(r);
  if (r.compute.has_value()) j["compute"] = ComputeJson(tf, r);
  if (tf.quick) j["rules_of_thumb"] = RulesJson(r);
  j["notes"] = r.estimate.notes;
  PrintJson(j);
}

// The table's rows of the estimate itself.
TableRows EstimateRows(const TrainReport& r) {
  const TrainingEstimate& e = r.estimate;
  return {
      {"model_type", r.spec.model_type},
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
}

// The table's optional rows: the GPU's fit (--gpu), compute (--tokens) and
// the rules of thumb (--quick).
void AddOptionalRows(const TrainFlags& tf, const TrainReport& r,
                     TableRows& rows) {
  const TrainingEstimate& e = r.estimate;
  if (r.gpu != nullptr) {
    rows.push_back({absl::StrCat("fits one ", r.gpu->name),
                    e.total_bytes <= r.gpu->allocatable_bytes ? "yes" : "no"});
    rows.push_back(
        {"GPUs to fit",
         r.plan.has_value()
             ? absl::StrCat(r.plan->gpus, " (TP ", r.plan->tensor_parallel,
                            " x DP ", r.plan->data_parallel,
                            r.plan->data_parallel > 1 ? ", ZeRO-3)" : ")")
             : r.plan_error});
  }
  if (r.compute.has_value()) {
    rows.push_back(
        {"compute (6ND)",
         absl::StrFormat("%.3g FLOPs = %.4g petaflop/s-days", r.compute->flops,
                         r.compute->petaflop_s_days)});
    if (r.gpu != nullptr) {
      rows.push_back({"GPU-days",
                      absl::StrFormat("%.4g at %.0f%% MFU", r.compute->gpu_days,
                                      100 * r.compute->mfu)});
    }
  }
  if (tf.quick) {
    rows.push_back({"rule of thumb: inference (4 B/param)",
                    FormatBytes(r.rule_inference)});
    rows.push_back(
        {"rule of thumb: training (24 B/param)", FormatBytes(r.rule_training)});
    rows.push_back(
        {"rule of thumb: V100-32GB to train", absl::StrCat(r.v100_train)});
    rows.push_back({"rule vs exact peak",
                    absl::StrFormat("%+.1f%%", PercentOff(r.rule_training,
                                                          e.total_bytes))});
  }
}

void PrintTableReport(const TrainFlags& tf, const TrainReport& r) {
  TableRows rows = EstimateRows(r);
  AddOptionalRows(tf, r, rows);
  const TrainingOptions& o = r.options;
  PrintTable(
      absl::StrCat("kvgate train: ", PrecisionName(o.precision), " ",
                   OptimizerName(o.optimizer), ", micro-batch ",
                   o.micro_batch_size, " x ", o.sequence_length, " tokens"),
      rows);
  for (const std::string& note : r.estimate.notes)
    std::cout << "  note: " << note << "\n";
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
  absl::StatusOr<TrainReport> report = BuildReport(tf);
  if (!report.ok()) return FailUsage(kCommand, report.status());
  if (tf.json) {
    PrintJsonReport(tf, *report);
  } else {
    PrintTableReport(tf, *report);
  }
  return kExitOk;
}

}  // namespace kvgate
