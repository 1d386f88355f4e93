// Exact parameter counts of a ModelSpec, module by module.
//
// The count is built from the list of weight tensors a family instantiates
// (Hugging Face transformers' modules), so it equals
// sum(p.numel() for p in model.parameters()) for the families in
// model_spec.h. Active parameters per token count the routed experts a token
// visits (experts_per_token of num_experts) instead of all of them.
#ifndef KVGATE_ESTIMATOR_PARAMETERS_H_
#define KVGATE_ESTIMATOR_PARAMETERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "estimator/model_spec.h"

namespace kvgate {

// One linear projection inside the decoder layers.
struct LinearModule {
  std::string name;  // Hugging Face module name, e.g. "q_proj"
  uint64_t in_features = 0;
  uint64_t out_features = 0;
  bool bias = false;
  // Instances in the whole model: layers x experts where it repeats.
  uint64_t count = 0;
  // Instances a token passes through (routed experts: experts_per_token).
  uint64_t active_count = 0;
  bool routed_expert = false;
};

// Linear projections of all decoder layers (not embeddings or lm_head).
std::vector<LinearModule> LinearModules(const ModelSpec& spec);

struct ParameterCounts {
  uint64_t total = 0;
  uint64_t active = 0;     // per token; equals total for dense models
  uint64_t embedding = 0;  // token and learned position embeddings
  uint64_t lm_head = 0;    // 0 when tied to the embedding
  uint64_t linear = 0;     // decoder linear weights (what GPTQ/AWQ quantize)
  uint64_t linear_active = 0;
  uint64_t other = 0;  // norms, biases, routers, gates
};

ParameterCounts CountParameters(const ModelSpec& spec);

}  // namespace kvgate

#endif  // KVGATE_ESTIMATOR_PARAMETERS_H_
