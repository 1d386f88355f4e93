// TicketFromRequest: an Admit request, checked and sized, as the ticket the
// controller takes. The pure half of AdmissionService::Admit (no gRPC call
// state), so that it can be unit-tested and fuzzed (tests/fuzz/fuzz_admit.cc)
// on exactly the path the service runs.
#ifndef KVGATE_PLUGIN_SERVER_ADMIT_REQUEST_H_
#define KVGATE_PLUGIN_SERVER_ADMIT_REQUEST_H_

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "estimator/serving.h"
#include "kvgate/v1/admission.pb.h"
#include "plugin/admission/controller.h"

namespace kvgate {

struct AdmitRequestLimits {
  // Most sequences in one request.
  int max_sequences = 4096;
  // Longest request_id and tenant accepted.
  size_t max_id_bytes = 128;
};

// Checks `request` (all but its model name, which chose `model`), estimates
// its batch on `model` and returns the ticket: id, tenant, priority, the KV
// and activation bytes, and a deadline of `now + max_queue_wait` when that is
// set and positive (InfiniteFuture otherwise; the caller may shorten it).
// InvalidArgument, with a message naming the field, for a missing
// request_id, an id or tenant over the limit, an unknown priority, a
// negative max_queue_wait, no sequences or too many; the estimator's error
// for a batch it cannot size (e.g. longer than the model's context).
absl::StatusOr<AdmitTicket> TicketFromRequest(
    const kvgate::v1::AdmitRequest& request, const ServingModel& model,
    const AdmitRequestLimits& limits, absl::Time now);

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_SERVER_ADMIT_REQUEST_H_
