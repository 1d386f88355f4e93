// kvgate estimate: memory to serve one request batch of a model.
#include <iostream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "estimator/planning/rules_of_thumb.h"
#include "estimator/serving.h"
#include "tools/cli_flags.h"
#include "tools/cli_output.h"
#include "tools/commands.h"
#include "tools/model_flags.h"

namespace kvgate {
namespace {

// The seeds' inference rules (estimator/rules_of_thumb.h) beside the exact
// total: P x 4 bytes, and M = P x 4B / (32 / Q) x 1.2 at the weights' bits.
nlohmann::ordered_json QuickRules(uint64_t parameters, uint32_t bits,
                                  uint64_t exact_total) {
  nlohmann::ordered_json q;
  q["inference_fp32_bytes"] = rules_of_thumb::InferenceBytesFp32(parameters);
  q["weight_bits"] = bits;
  const uint64_t serving =
      rules_of_thumb::ServingBytesWithOverhead(parameters, bits);
  q["serving_with_overhead_bytes"] = serving;
  q["exact_total_bytes"] = exact_total;
  q["difference_percent"] = exact_total == 0
                                ? 0.0
                                : 100.0 *
                                      (static_cast<double>(serving) -
                                       static_cast<double>(exact_total)) /
                                      static_cast<double>(exact_total);
  q["source"] =
      "rules of thumb: P x 4 B to hold fp32 weights; P x 4 B / (32 / Q) x "
      "1.2 to serve at Q-bit weights with 20% overhead";
  return q;
}

}  // namespace

namespace {

constexpr uint64_t kMaxBatch = 1 << 20;

// kvgate estimate's flags (the model's in ModelFlags).
struct EstimateFlags {
  ModelFlags model;
  uint64_t batch = 1;
  uint64_t prompt_tokens = 1024;
  uint64_t max_new_tokens = 1024;
  bool share_prefix = false;
  bool quick = false;

  void Register(FlagSet& flags) {
    model.Register(flags);
    flags.AddUint64("batch", &batch, "sequences in the batch");
    flags.AddUint64("prompt-tokens", &prompt_tokens,
                    "prompt tokens per sequence");
    flags.AddUint64("max-new-tokens", &max_new_tokens,
                    "tokens generated per sequence at most");
    flags.AddBool("share-prompt-prefix", &share_prefix,
                  "the sequences are samples of one prompt and share its KV");
    flags.AddBool("quick", &quick,
                  "also print common rules of thumb (P x bytes, x1.2 "
                  "overhead) and how far they are from the exact estimate");
  }

  // A batch is materialised sequence by sequence, so it is bounded well
  // below what would exhaust memory; token counts match the wire API's
  // uint32 fields.
  absl::Status CheckSizes() const {
    for (auto [name, value, min, max] :
         {std::tuple<const char*, uint64_t, uint64_t, uint64_t>{"batch", batch,
                                                                1, kMaxBatch},
          {"prompt-tokens", prompt_tokens, 1, UINT32_MAX},
          {"max-new-tokens", max_new_tokens, 0, UINT32_MAX}}) {
      if (absl::Status s = CheckRange(name, value, min, max); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }
};

// --json: the model, the batch and its memory.
nlohmann::ordered_json EstimateJson(const EstimateFlags& ef,
                                    const ServingModel& serving,
                                    const BatchEstimate& e, uint64_t total) {
  const ParameterCounts& p = serving.parameters();
  nlohmann::ordered_json j;
  j["model_type"] = serving.spec().model_type;
  j["parameters"] = p.total;
  j["active_parameters"] = p.active;
  j["dtype"] = std::string(DTypeName(serving.quantization().dtype));
  j["quantization"] = serving.quantization().method;
  j["kv_cache_dtype"] = std::string(DTypeName(serving.kv_cache().dtype()));
  j["tensor_parallel"] = serving.options().tensor_parallel;
  j["batch"] = ef.batch;
  j["prompt_tokens"] = ef.prompt_tokens;
  j["max_new_tokens"] = ef.max_new_tokens;
  j["weights_bytes"] = serving.weights_bytes();
  j["kv_cache_bytes_per_token"] = serving.kv_cache_bytes_per_token();
  j["kv_cache_tokens"] = e.kv_cache_tokens;
  j["kv_cache_bytes"] = e.kv_cache_bytes;
  j["activation_bytes"] = e.activation_bytes;
  j["total_bytes"] = total;
  if (ef.quick) {
    j["rules_of_thumb"] =
        QuickRules(p.total, DTypeBits(serving.quantization().dtype), total);
  }
  j["notes"] = serving.spec().notes;
  return j;
}

// The table, then (--quick) the rules of thumb's, then the notes.
void PrintEstimateTables(const EstimateFlags& ef, const ServingModel& serving,
                         const BatchEstimate& e, uint64_t total) {
  const ParameterCounts& p = serving.parameters();
  const ModelSpec& m = serving.spec();
  const uint32_t bits = DTypeBits(serving.quantization().dtype);
  TableRows rows = {
      {"model_type", m.model_type},
      {"parameters", absl::StrCat(FormatCount(p.total), " (", p.total, ")")},
      {"active parameters",
       absl::StrCat(FormatCount(p.active), " (", p.active, ")")},
      {"weights dtype", std::string(DTypeName(serving.quantization().dtype))},
      {"KV cache dtype", std::string(DTypeName(serving.kv_cache().dtype()))},
      {"weights / GPU", FormatBytes(serving.weights_bytes())},
      {"KV cache / token", FormatBytes(serving.kv_cache_bytes_per_token())},
      {"KV cache", absl::StrCat(FormatBytes(e.kv_cache_bytes), " for ",
                                e.kv_cache_tokens, " tokens")},
      {"activations", FormatBytes(e.activation_bytes)},
      {"total / GPU", FormatBytes(total)},
  };
  PrintTable(
      absl::StrCat("kvgate estimate: batch ", ef.batch, " x (",
                   ef.prompt_tokens, " prompt + ", ef.max_new_tokens,
                   " new) tokens, TP ", serving.options().tensor_parallel),
      rows);
  if (ef.quick) {
    const nlohmann::ordered_json q = QuickRules(p.total, bits, total);
    PrintTable(
        "rules of thumb vs the exact estimate",
        {{"fp32 weights (4 B/param)",
          FormatBytes(q["inference_fp32_bytes"].get<uint64_t>())},
         {absl::StrCat(bits, "-bit weights x 1.2"),
          FormatBytes(q["serving_with_overhead_bytes"].get<uint64_t>())},
         {"exact total", FormatBytes(total)},
         {"rule vs exact",
          absl::StrFormat("%+.1f%%", q["difference_percent"].get<double>())}});
  }
  for (const std::string& note : m.notes)
    std::cout << "  note: " << note << "\n";
}

}  // namespace

int RunEstimateCommand(const CommandArgs& args) {
  EstimateFlags ef;
  FlagSet flags("estimate",
                "Memory to serve a batch of sequences of a model: weights, KV "
                "cache and the activation peak of its prefill, per GPU.");
  ef.Register(flags);
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    return FailUsage("estimate", s);
  }
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return kExitOk;
  }
  if (absl::Status s = ef.CheckSizes(); !s.ok()) {
    return FailUsage("estimate", s);
  }
  absl::StatusOr<ModelSpec> spec = ef.model.LoadSpec();
  if (!spec.ok()) return FailUsage("estimate", spec.status());
  absl::StatusOr<ServingOptions> options = ef.model.ToServingOptions();
  if (!options.ok()) return FailUsage("estimate", options.status());
  options->share_prompt_prefix = ef.share_prefix;
  // The CLI reports the memory of any length asked; the context limit is
  // enforced by the server.
  options->max_model_len = UINT64_MAX;
  absl::StatusOr<ServingModel> serving =
      ServingModel::Create(*std::move(spec), *options);
  if (!serving.ok()) return FailUsage("estimate", serving.status());

  const std::vector<SequenceShape> sequences(
      ef.batch, SequenceShape{ef.prompt_tokens, ef.max_new_tokens});
  BatchEstimate e;
  if (absl::Status s = serving->EstimateBatch(sequences, &e); !s.ok()) {
    return FailUsage("estimate", s);
  }
  uint64_t total = 0;
  if (__builtin_add_overflow(serving->weights_bytes(), e.total_bytes, &total)) {
    return FailUsage("estimate", absl::InvalidArgumentError(
                                     "the total overflows 64-bit arithmetic"));
  }
  if (ef.model.json) {
    PrintJson(EstimateJson(ef, *serving, e, total));
  } else {
    PrintEstimateTables(ef, *serving, e, total);
  }
  return kExitOk;
}

}  // namespace kvgate
