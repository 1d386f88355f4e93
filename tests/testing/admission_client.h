// A client of kvgate.v1.Admission for the tests: the unary calls with a
// per-call deadline and an optional bearer token, and PendingAdmit, an Admit
// in flight on the callback API. Shared by the in-process suite
// (tests/plugin/server/admission_service_test.cc) and the suites against a
// real kvgated (tests/integration/kvgated_process.h). Every wait is bounded.
#ifndef KVGATE_TESTS_TESTING_ADMISSION_CLIENT_H_
#define KVGATE_TESTS_TESTING_ADMISSION_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "google/protobuf/duration.pb.h"
#include "grpcpp/grpcpp.h"
#include "kvgate/v1/admission.grpc.pb.h"

namespace kvgate {

// Longest real-time wait for an answer that is expected, unless a test says
// otherwise.
inline constexpr absl::Duration kAdmissionWait = absl::Seconds(5);

// Sets `context`'s deadline to `timeout` from now.
void SetDeadline(grpc::ClientContext& context, absl::Duration timeout);
// Adds "authorization: Bearer `token`" to `context`; nothing when `token` is
// empty.
void AddBearerToken(grpc::ClientContext& context, const std::string& token);
absl::Duration FromProto(const google::protobuf::Duration& d);
// `request` with its max_queue_wait set to `wait`.
kvgate::v1::AdmitRequest WithQueueWait(kvgate::v1::AdmitRequest request,
                                       absl::Duration wait);

// An Admit for `model` and `tenant` of `sequences` sequences of
// `prompt_tokens` + `max_new_tokens` each.
kvgate::v1::AdmitRequest AdmitRequestOf(const std::string& request_id,
                                        const std::string& model,
                                        const std::string& tenant,
                                        kvgate::v1::Priority priority,
                                        int sequences, uint32_t prompt_tokens,
                                        uint32_t max_new_tokens);

// The unary Admission calls on a stub it does not own, each with a deadline
// of `timeout` from the call and, where `token` is set, a bearer token. The
// ...OrFail calls add a test failure unless the call succeeds.
class AdmissionClient {
 public:
  AdmissionClient(kvgate::v1::Admission::Stub* stub, absl::Duration timeout)
      : stub_(stub), timeout_(timeout) {}

  grpc::Status Admit(const kvgate::v1::AdmitRequest& request,
                     kvgate::v1::AdmitResponse* response,
                     const std::string& token = "") const;
  // Admits `request` and expects ADMITTED; returns the lease.
  std::string AdmitOrFail(const kvgate::v1::AdmitRequest& request,
                          const std::string& token = "") const;
  // `released_bytes` gets the answer's released_bytes.
  grpc::Status Release(const std::string& lease_id, uint64_t* released_bytes,
                       const std::string& token = "") const;
  // `ttl`, unless null, gets the answer's ttl.
  grpc::Status Renew(const std::string& lease_id,
                     absl::Duration* ttl = nullptr) const;
  grpc::Status GetBudget(const std::string& model,
                         kvgate::v1::Budget* budget) const;
  kvgate::v1::Budget GetBudgetOrFail(const std::string& model) const;
  grpc::Status Estimate(const kvgate::v1::EstimateRequest& request,
                        kvgate::v1::EstimateResponse* response) const;

 private:
  // A context with the deadline and, when `token` is set, the bearer token.
  std::unique_ptr<grpc::ClientContext> NewContext(
      const std::string& token = "") const;

  kvgate::v1::Admission::Stub* const stub_;
  const absl::Duration timeout_;
};

// An Admit in flight on the callback API. The destructor cancels the call
// and waits, bounded, for its completion; a call that never completes (a
// failure it reports) is leaked rather than freed under gRPC.
class PendingAdmit {
 public:
  // `timeout`: the call's gRPC deadline; none when infinite (the default),
  // so that only the server decides when a queued call ends.
  PendingAdmit(kvgate::v1::Admission::Stub* stub,
               kvgate::v1::AdmitRequest request, const std::string& token = "",
               absl::Duration timeout = absl::InfiniteDuration());
  ~PendingAdmit();
  PendingAdmit(const PendingAdmit&) = delete;
  PendingAdmit& operator=(const PendingAdmit&) = delete;

  // True when the call has been answered within `wait` (by default, does
  // not wait).
  bool Answered(absl::Duration wait = absl::ZeroDuration()) const;
  // The call's status; DEADLINE_EXCEEDED "(test) ..." when not answered
  // within `wait`.
  grpc::Status Wait(absl::Duration wait = kAdmissionWait) const;
  void Cancel();
  // Only once answered.
  const kvgate::v1::AdmitResponse& response() const;

 private:
  struct Call;
  struct Completion;
  std::unique_ptr<Call> call_;
  std::shared_ptr<Completion> completion_;
};

}  // namespace kvgate

#endif  // KVGATE_TESTS_TESTING_ADMISSION_CLIENT_H_
