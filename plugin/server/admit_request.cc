#include "plugin/server/admit_request.h"

#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvgate {
namespace {

absl::StatusOr<Priority> ToPriority(int value) {
  switch (value) {
    case kvgate::v1::PRIORITY_UNSPECIFIED:
    case kvgate::v1::STANDARD:
      return Priority::kStandard;
    case kvgate::v1::CRITICAL:
      return Priority::kCritical;
    case kvgate::v1::SHEDDABLE:
      return Priority::kSheddable;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("priority: unknown value ", value));
  }
}

}  // namespace

absl::StatusOr<AdmitTicket> TicketFromRequest(
    const kvgate::v1::AdmitRequest& request, const ServingModel& model,
    const AdmitRequestLimits& limits, absl::Time now) {
  if (request.request_id().empty()) {
    return absl::InvalidArgumentError("request_id: is required");
  }
  if (request.request_id().size() > limits.max_id_bytes ||
      request.tenant().size() > limits.max_id_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request_id and tenant: at most ", limits.max_id_bytes, " bytes"));
  }
  absl::StatusOr<Priority> priority = ToPriority(request.priority());
  if (!priority.ok()) return priority.status();
  if (request.has_max_queue_wait() && (request.max_queue_wait().seconds() < 0 ||
                                       request.max_queue_wait().nanos() < 0)) {
    return absl::InvalidArgumentError("max_queue_wait: must not be negative");
  }
  const auto& sequences = request.sequences();
  if (sequences.empty()) {
    return absl::InvalidArgumentError(
        "sequences: at least one sequence is required");
  }
  if (sequences.size() > limits.max_sequences) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequences: ", sequences.size(), " sequences exceed the limit of ",
        limits.max_sequences, " per request"));
  }
  // No heap allocation for batches of up to 16 sequences.
  absl::InlinedVector<SequenceShape, 16> shapes;
  shapes.reserve(sequences.size());
  for (const auto& s : sequences) {
    shapes.push_back({s.prompt_tokens(), s.max_new_tokens()});
  }
  BatchEstimate estimate;
  absl::Status estimated = model.EstimateBatch(shapes, &estimate);
  if (!estimated.ok()) return estimated;

  AdmitTicket ticket;
  ticket.request_id = request.request_id();
  ticket.tenant = request.tenant();
  ticket.priority = *priority;
  ticket.cost.kv_bytes = estimate.kv_cache_bytes;
  ticket.cost.activation_bytes = estimate.activation_bytes;
  if (request.has_max_queue_wait()) {
    const absl::Duration wait =
        absl::Seconds(request.max_queue_wait().seconds()) +
        absl::Nanoseconds(request.max_queue_wait().nanos());
    if (wait > absl::ZeroDuration()) ticket.deadline = now + wait;
  }
  return ticket;
}

}  // namespace kvgate
