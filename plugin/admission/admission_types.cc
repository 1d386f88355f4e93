#include "plugin/admission/admission_types.h"

#include <array>

namespace kvgate {
namespace {

constexpr std::array<absl::string_view, kNumPriorities> kPriorityNames = {
    "CRITICAL", "STANDARD", "SHEDDABLE"};

struct ReasonRow {
  RejectReason reason;
  absl::string_view name;
};
constexpr ReasonRow kReasonNames[] = {
    {RejectReason::kNone, ""},
    {RejectReason::kQueueTimeout, "QUEUE_TIMEOUT"},
    {RejectReason::kQueueFull, "QUEUE_FULL"},
    {RejectReason::kNeverFits, "NEVER_FITS"},
    {RejectReason::kMemoryPressure, "MEMORY_PRESSURE"},
    {RejectReason::kShed, "SHED"},
    {RejectReason::kDraining, "DRAINING"},
    {RejectReason::kCancelled, "CANCELLED"},
};

}  // namespace

absl::string_view PriorityName(Priority priority) {
  const int index = static_cast<int>(priority);
  if (index < 0 || index >= kNumPriorities) return "";
  return kPriorityNames[index];
}

absl::string_view RejectReasonName(RejectReason reason) {
  for (const ReasonRow& row : kReasonNames) {
    if (row.reason == reason) return row.name;
  }
  return "";
}

}  // namespace kvgate
