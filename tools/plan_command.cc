// kvgate plan: the KV cache and concurrency a model gets on a GPU, sized the
// way vLLM sizes it at start-up (see estimator/plan.h).
#include <cstdio>
#include <iostream>
#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "estimator/gpu_catalog.h"
#include "estimator/plan.h"
#include "tools/cli_flags.h"
#include "tools/cli_output.h"
#include "tools/commands.h"
#include "tools/model_flags.h"

namespace kvgate {
namespace {

constexpr char kSummary[] =
    "KV cache, tokens and concurrency of a model on one GPU, sized as vLLM "
    "does: requested = memory x utilization; KV = requested - weights - "
    "activation peak of a max-num-batched-tokens forward - non-torch "
    "memory.\n"
    "Exit status: 0 planned; 2 bad input (unknown GPU, utilization outside "
    "(0, 1], zero sizes, unreadable config), one line on stderr; 1 the model "
    "does not fit (one line on stderr naming what it needs, what the GPU "
    "has, and the smallest tensor-parallel degree that fits; with --json the "
    "JSON object is printed too, with \"fits\": false).";

struct GpuChoice {
  std::string name = "custom";
  uint64_t total_bytes = 0;
  uint64_t memory_bytes = 0;
};

absl::StatusOr<GpuChoice> ChooseGpu(const FlagSet& flags,
                                    const std::string& gpu,
                                    uint64_t memory_bytes) {
  const bool by_name = flags.WasSet("gpu");
  const bool by_bytes = flags.WasSet("gpu-memory-bytes");
  if (by_name == by_bytes) {
    return absl::InvalidArgumentError(
        "give exactly one of --gpu=NAME or --gpu-memory-bytes=N");
  }
  GpuChoice choice;
  if (by_bytes) {
    if (memory_bytes == 0) {
      return absl::InvalidArgumentError(
          "--gpu-memory-bytes must be at least 1");
    }
    choice.total_bytes = memory_bytes;
    choice.memory_bytes = memory_bytes;
    return choice;
  }
  absl::StatusOr<const GpuSpec*> spec = FindGpu(gpu);
  if (!spec.ok()) return spec.status();
  choice.name = std::string((*spec)->name);
  choice.total_bytes = (*spec)->total_bytes;
  choice.memory_bytes = (*spec)->allocatable_bytes;
  return choice;
}

nlohmann::ordered_json PlanJson(const GpuChoice& gpu, const Plan& p,
                                uint64_t max_num_seqs) {
  nlohmann::ordered_json j;
  j["fits"] = true;
  j["gpu"] = gpu.name;
  j["gpu_total_bytes"] = gpu.total_bytes;
  j["gpu_memory_bytes"] = p.gpu_memory_bytes;
  j["gpu_memory_utilization"] = p.gpu_memory_utilization;
  j["tensor_parallel"] = p.tensor_parallel;
  j["max_model_len"] = p.max_model_len;
  j["max_num_batched_tokens"] = p.max_num_batched_tokens;
  j["max_num_seqs"] = max_num_seqs;
  j["requested_bytes"] = p.requested_bytes;
  j["weights_bytes"] = p.weights_bytes;
  j["activation_bytes"] = p.activation_bytes;
  j["non_torch_bytes"] = p.non_torch_bytes;
  j["kv_cache_bytes"] = p.kv_cache_bytes;
  j["kv_cache_bytes_per_token"] = p.kv_cache_bytes_per_token;
  j["kv_cache_blocks"] = p.kv_cache_blocks;
  j["kv_cache_tokens"] = p.kv_cache_tokens;
  j["max_concurrency"] = p.max_concurrency;
  j["max_concurrent_sequences"] = p.max_concurrent_sequences;
  return j;
}

void PrintPlanTable(const GpuChoice& gpu, const Plan& p) {
  TableRows rows = {
      {"GPU", absl::StrCat(gpu.name, ", ", FormatBytes(p.gpu_memory_bytes),
                           " allocatable")},
      {"requested",
       absl::StrFormat("%s (%g x memory)", FormatBytes(p.requested_bytes),
                       p.gpu_memory_utilization)},
      {"weights / GPU", FormatBytes(p.weights_bytes)},
      {"activation peak",
       absl::StrCat(FormatBytes(p.activation_bytes), " (forward of ",
                    p.max_num_batched_tokens, " tokens)")},
      {"non-torch", FormatBytes(p.non_torch_bytes)},
      {"KV cache", FormatBytes(p.kv_cache_bytes)},
      {"KV cache / token", FormatBytes(p.kv_cache_bytes_per_token)},
      {"KV cache tokens",
       absl::StrCat(p.kv_cache_tokens, " (", p.kv_cache_blocks, " blocks)")},
      {"max concurrency",
       absl::StrFormat("%.2fx for %d tokens per request (%d sequences)",
                       p.max_concurrency, p.max_model_len,
                       p.max_concurrent_sequences)},
  };
  PrintTable(absl::StrCat("kvgate plan: TP ", p.tensor_parallel), rows);
}

// kvgate plan's flags (the model's in ModelFlags).
struct PlanFlags {
  ModelFlags model;
  std::string gpu;
  uint64_t gpu_memory_bytes = 0;
  double utilization = 0.9;
  uint64_t max_model_len = 0;
  uint64_t max_num_batched_tokens = PlanOptions().max_num_batched_tokens;
  uint64_t max_num_seqs = PlanOptions().max_num_seqs;
  uint64_t non_torch_bytes = PlanOptions().non_torch_bytes;

  void Register(FlagSet& flags) {
    model.Register(flags);
    flags.AddString("gpu", &gpu,
                    absl::StrCat("GPU from the catalog (its CUDA-allocatable "
                                 "memory is used): ",
                                 GpuNames()));
    flags.AddUint64("gpu-memory-bytes", &gpu_memory_bytes,
                    "memory of one GPU as CUDA reports its total, instead of "
                    "--gpu");
    flags.AddDouble("gpu-memory-utilization", &utilization,
                    "share of the GPU memory the engine may use, in (0, 1]");
    flags.AddUint64("max-model-len", &max_model_len,
                    "context length per request (0: the config's "
                    "max_position_embeddings)");
    flags.AddUint64("max-num-batched-tokens", &max_num_batched_tokens,
                    "tokens of the profiling forward pass whose activation "
                    "peak is reserved");
    flags.AddUint64(
        "max-num-seqs", &max_num_seqs,
        "sequences per step (rows of logits in the profiling pass)");
    flags.AddUint64("non-torch-bytes", &non_torch_bytes,
                    "memory outside PyTorch's allocator charged per GPU "
                    "(cuBLAS, NCCL, kernel modules)");
  }
};

// The GPU the flags name, once the utilization and the sizes are checked.
absl::StatusOr<GpuChoice> CheckFlags(const FlagSet& flags,
                                     const PlanFlags& pf) {
  absl::StatusOr<GpuChoice> choice =
      ChooseGpu(flags, pf.gpu, pf.gpu_memory_bytes);
  if (!choice.ok()) return choice.status();
  if (!(pf.utilization > 0 && pf.utilization <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--gpu-memory-utilization=", pf.utilization, " must be in (0, 1]"));
  }
  for (auto [name, value] :
       {std::tuple<const char*, uint64_t>{"max-num-batched-tokens",
                                          pf.max_num_batched_tokens},
        {"max-num-seqs", pf.max_num_seqs}}) {
    if (absl::Status s = CheckRange(name, value, 1, uint64_t{1} << 40);
        !s.ok()) {
      return s;
    }
  }
  if (flags.WasSet("max-model-len")) {
    if (absl::Status s =
            CheckRange("max-model-len", pf.max_model_len, 1, uint64_t{1} << 40);
        !s.ok()) {
      return s;
    }
  }
  return choice;
}

// The model does not fit the GPU (`error`): with --json, the JSON object
// with "fits": false and the smallest tensor-parallel degree that fits;
// then the error line. Returns the exit code.
int FailDoesNotFit(const PlanFlags& pf, const GpuChoice& choice,
                   const ModelSpec& spec, const PlanOptions& options,
                   const absl::Status& error) {
  if (pf.model.json) {
    nlohmann::ordered_json j;
    j["fits"] = false;
    j["gpu"] = choice.name;
    j["gpu_memory_bytes"] = choice.memory_bytes;
    j["gpu_memory_utilization"] = pf.utilization;
    j["tensor_parallel"] = options.serving.tensor_parallel;
    absl::StatusOr<uint32_t> tp = SmallestFittingTensorParallel(spec, options);
    j["min_tensor_parallel"] =
        tp.ok() ? nlohmann::ordered_json(*tp) : nlohmann::ordered_json(nullptr);
    j["error"] = std::string(error.message());
    PrintJson(j);
  }
  FailUsage("plan", error);
  return kExitFailure;
}

}  // namespace

int RunPlanCommand(const CommandArgs& args) {
  PlanFlags pf;
  FlagSet flags("plan", kSummary);
  pf.Register(flags);
  if (absl::Status s = flags.Parse(args); !s.ok()) return FailUsage("plan", s);
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return kExitOk;
  }
  absl::StatusOr<GpuChoice> choice = CheckFlags(flags, pf);
  if (!choice.ok()) return FailUsage("plan", choice.status());
  absl::StatusOr<ModelSpec> spec = pf.model.LoadSpec();
  if (!spec.ok()) return FailUsage("plan", spec.status());
  absl::StatusOr<ServingOptions> serving = pf.model.ToServingOptions();
  if (!serving.ok()) return FailUsage("plan", serving.status());

  PlanOptions options;
  options.gpu_memory_bytes = choice->memory_bytes;
  options.gpu_memory_utilization = pf.utilization;
  options.serving = *serving;
  options.max_num_batched_tokens = pf.max_num_batched_tokens;
  options.max_num_seqs = pf.max_num_seqs;
  options.max_model_len = pf.max_model_len;
  options.non_torch_bytes = pf.non_torch_bytes;
  absl::StatusOr<Plan> plan = PlanServing(*spec, options);
  if (!plan.ok()) {
    if (!absl::IsResourceExhausted(plan.status())) {
      return FailUsage("plan", plan.status());
    }
    return FailDoesNotFit(pf, *choice, *spec, options, plan.status());
  }
  if (pf.model.json) {
    PrintJson(PlanJson(*choice, *plan, pf.max_num_seqs));
  } else {
    PrintPlanTable(*choice, *plan);
  }
  return kExitOk;
}

}  // namespace kvgate
